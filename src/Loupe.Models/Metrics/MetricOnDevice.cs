using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Metrics;

/// <summary>A metric that computes its value and gradient where the logits live (no host round-trip).</summary>
public interface IDeviceMetric : IMetric
{
    /// <summary>
    /// The metric's value and d metric / d logits (a tensor on <paramref name="backend"/>'s device), built from
    /// backend operations. <see cref="MetricOnDevice.Evaluate"/> calls it only off the CPU: there the host
    /// <see cref="IMetric.Value"/> and <see cref="IMetric.Gradient"/> are exact and copy nothing.
    /// </summary>
    (double Value, Tensor Gradient) Evaluate(Tensor logits, IComputeBackend backend);
}

/// <summary>Where a backward pass starts: the metric's value and gradient, on the logits' device.</summary>
public static class MetricOnDevice
{
    /// <summary>
    /// On a device, an <see cref="IDeviceMetric"/> stays there. Otherwise the metric reads the logits on the
    /// host and sends its gradient back: free on the CPU, two counted copies of the logits on a GPU.
    /// </summary>
    public static (double Value, Tensor Gradient) Evaluate(IMetric metric, Tensor logits, IComputeBackend backend)
    {
        if (metric is IDeviceMetric onDevice && !backend.Device.IsCpu) return onDevice.Evaluate(logits, backend);
        var host = logits.ToCpu();
        double value = metric.Value(host);
        if (!double.IsFinite(value)) return (value, logits);
        return (value, backend.ToDevice(metric.Gradient(host)));
    }
}

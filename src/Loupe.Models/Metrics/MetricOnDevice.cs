using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Metrics;

/// <summary>A metric that computes its value and gradient where the logits live (no host round-trip).</summary>
public interface IDeviceMetric : IMetric
{
    /// <summary>The metric's value and d metric / d logits (a tensor on <paramref name="backend"/>'s device).</summary>
    (double Value, Tensor Gradient) Evaluate(Tensor logits, IComputeBackend backend);
}

/// <summary>Where a backward pass starts: the metric's value and gradient, on the logits' device.</summary>
public static class MetricOnDevice
{
    /// <summary>
    /// A <see cref="IDeviceMetric"/> stays on the device. Any other metric reads the logits on the host
    /// and sends its gradient back: free on the CPU, two counted copies of the logits on a GPU.
    /// </summary>
    public static (double Value, Tensor Gradient) Evaluate(IMetric metric, Tensor logits, IComputeBackend backend)
    {
        if (metric is IDeviceMetric onDevice) return onDevice.Evaluate(logits, backend);
        var host = logits.ToCpu();
        double value = metric.Value(host);
        if (!double.IsFinite(value)) return (value, logits);
        return (value, backend.ToDevice(metric.Gradient(host)));
    }
}

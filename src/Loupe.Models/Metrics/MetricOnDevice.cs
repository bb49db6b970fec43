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

    /// <summary>
    /// The metric's value written into <paramref name="value"/> (one element on <paramref name="backend"/>'s device), with
    /// nothing read back and no gradient built, so that a sweep can gather many values and read them in one copy. The
    /// default evaluates (one scalar back) and sends the value in (one counted copy); the metrics here override it.
    /// </summary>
    /// <param name="logits">The logits <c>[batch, pos, d_vocab_out]</c>, on the backend's device.</param>
    /// <param name="backend">The backend that owns the logits.</param>
    /// <param name="value">A one-element tensor on the same device that receives the value.</param>
    void WriteValue(Tensor logits, IComputeBackend backend, Tensor value)
    {
        var (v, _) = Evaluate(logits, backend);
        backend.CopyRows(backend.ToDevice(Tensor.FromArray([(float)v], 1)), 0, 1, value, 0, 1, 1, 1);
    }
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

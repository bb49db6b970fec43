using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Causal.Metrics;

/// <summary>A metric's value where the logits live: sweeps need only the number, never the gradient.</summary>
static class MetricValue
{
    /// <summary>
    /// On the host, <see cref="IMetric.Value"/> (nothing is copied, no gradient is built). On a device, an
    /// <see cref="IDeviceMetric"/> is evaluated there and only its scalar comes back; any other metric
    /// reads the logits on the host (one counted copy).
    /// </summary>
    public static double Of(IMetric metric, Tensor logits, IComputeBackend backend)
    {
        if (logits.IsHost) return metric.Value(logits);
        if (metric is IDeviceMetric onDevice) return onDevice.Evaluate(logits, backend).Value;
        return metric.Value(logits.ToCpu());
    }
}

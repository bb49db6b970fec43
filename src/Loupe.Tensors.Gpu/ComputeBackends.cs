using System.Collections.Concurrent;
using Loupe.Tensors.Backends;

namespace Loupe.Tensors.Gpu;

/// <summary>Picks the backend for a device: the CPU backend, or a <see cref="GpuBackend"/>.</summary>
public static class ComputeBackends
{
    static readonly ConcurrentDictionary<(Device, ElementType), Lazy<IComputeBackend>> s_shared = new();

    /// <summary>
    /// A new GPU backend on <paramref name="device"/> (CUDA or emulated), owned by the caller.
    /// <paramref name="weightType"/>: how matrices loaded as fp32 are kept (see <see cref="GpuBackend.WeightElementType"/>).
    /// </summary>
    /// <exception cref="InputError">The device cannot be used here (no driver, no such GPU, no cuBLAS).</exception>
    /// <exception cref="ArgumentException">The device is the CPU: it has one shared backend, <see cref="CpuBackend.Instance"/>.</exception>
    public static GpuBackend Create(Device device, ElementType weightType = ElementType.F32) => GpuBackend.Create(device, weightType);

    /// <summary>
    /// The process-wide backend of <paramref name="device"/> keeping matrix weights as <paramref name="weightType"/>: created on
    /// first use and kept (a GPU context is costly), one per device and weight type.
    /// </summary>
    /// <exception cref="InputError">The device cannot be used here; asked again, it is tried again.</exception>
    /// <exception cref="ArgumentException">bf16/fp16 weights on the CPU: its backend computes with fp32 weights
    /// (<see cref="CpuBackend.WithRoundedWeights"/> models their rounding, for tests).</exception>
    public static IComputeBackend Shared(Device device, ElementType weightType = ElementType.F32)
    {
        if (device.IsCpu)
            return weightType == ElementType.F32 ? CpuBackend.Instance
                : throw new ArgumentException($"the CPU backend computes with fp32 weights; {weightType} weights are a GPU option", nameof(weightType));
        var key = (device, weightType);
        var lazy = s_shared.GetOrAdd(key, k => new Lazy<IComputeBackend>(() => GpuBackend.Create(k.Item1, k.Item2)));
        try { return lazy.Value; }
        catch
        {
            s_shared.TryRemove(new KeyValuePair<(Device, ElementType), Lazy<IComputeBackend>>(key, lazy));
            throw;
        }
    }

    /// <summary>The device a backend runs on: its name, memory and compute capability.</summary>
    public static DeviceInfo Describe(IComputeBackend backend)
    {
        if (backend is GpuBackend gpu) return gpu.Info;
        var memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        return new DeviceInfo(backend.Device.ToString(), $"{Environment.ProcessorCount} CPU cores", backend.Name, memory > 0 ? memory : null, null, null, null);
    }
}

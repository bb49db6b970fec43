using System.Collections.Concurrent;
using Loupe.Tensors.Backends;

namespace Loupe.Tensors.Gpu;

/// <summary>Picks the backend for a device: the CPU backend, or a <see cref="GpuBackend"/>.</summary>
public static class ComputeBackends
{
    static readonly ConcurrentDictionary<Device, Lazy<IComputeBackend>> s_shared = new();

    /// <summary>
    /// A new GPU backend on <paramref name="device"/> (CUDA or emulated), owned by the caller.
    /// <paramref name="weightType"/>: how matrices loaded as fp32 are kept (see <see cref="GpuBackend.WeightElementType"/>).
    /// </summary>
    /// <exception cref="InputError">The device cannot be used here (no driver, no such GPU, no cuBLAS).</exception>
    /// <exception cref="ArgumentException">The device is the CPU: it has one shared backend, <see cref="CpuBackend.Instance"/>.</exception>
    public static GpuBackend Create(Device device, ElementType weightType = ElementType.F32) => GpuBackend.Create(device, weightType);

    /// <summary>The process-wide backend of <paramref name="device"/>: created on first use and kept (a GPU context is costly).</summary>
    /// <exception cref="InputError">The device cannot be used here; asked again, it is tried again.</exception>
    public static IComputeBackend Shared(Device device)
    {
        if (device.IsCpu) return CpuBackend.Instance;
        var lazy = s_shared.GetOrAdd(device, d => new Lazy<IComputeBackend>(() => GpuBackend.Create(d)));
        try { return lazy.Value; }
        catch
        {
            s_shared.TryRemove(new KeyValuePair<Device, Lazy<IComputeBackend>>(device, lazy));
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

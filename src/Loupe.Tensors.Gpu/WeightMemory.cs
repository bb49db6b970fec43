using System.Globalization;
using Loupe.Tensors.Backends;

namespace Loupe.Tensors.Gpu;

/// <summary>
/// What a model's weights will take on a device, said before the first upload (weights are placed lazily, on first use,
/// so a model too large for the GPU would otherwise fail halfway through its first forward pass).
/// </summary>
public static class WeightMemory
{
    /// <summary>
    /// Bytes <paramref name="parameters"/> take kept as <paramref name="type"/>: matrices are kept in the backend's weight
    /// type and they are nearly all of a transformer's parameters (norm weights and biases, in fp32, are a fraction of a percent).
    /// </summary>
    public static long Bytes(long parameters, ElementType type) => parameters * (type == ElementType.F32 ? 4L : 2L);

    /// <summary>
    /// The one-line estimate for a model of <paramref name="parameters"/> on <paramref name="backend"/>, or null on the CPU
    /// (memory-mapped weights take no new memory there).
    /// </summary>
    /// <exception cref="InputError">The weights alone need more than the device has free.</exception>
    public static string? Plan(IComputeBackend backend, long parameters)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (backend is not GpuBackend gpu) return null;
        var info = gpu.Info;
        return Plan(gpu.Device, gpu.WeightElementType, parameters, info.FreeMemoryBytes, info.TotalMemoryBytes);
    }

    /// <summary><see cref="Plan(IComputeBackend, long)"/> from the numbers (free and total memory unknown on the emulated device).</summary>
    /// <exception cref="InputError">The weights alone need more than <paramref name="freeBytes"/>.</exception>
    public static string Plan(Device device, ElementType type, long parameters, long? freeBytes, long? totalBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(parameters);
        long bytes = Bytes(parameters, type);
        string name = type.Name();
        if (freeBytes is long free && bytes > free)
        {
            string total = totalBytes is long t ? $" of {GiB(t)}" : "";
            string remedy = type == ElementType.F32
                ? $"--dtype bf16 keeps them in {GiB(Bytes(parameters, ElementType.BF16))} (the CPU backend needs no device memory: --device cpu)"
                : "free memory on the GPU, use a larger one, or --device cpu";
            throw new InputError($"device {device}: the model's {parameters.ToString("N0", CultureInfo.InvariantCulture)} parameters need about " +
                                 $"{GiB(bytes)} as {name}, and {GiB(free)}{total} are free; {remedy}");
        }
        return $"weights on {device}: about {GiB(bytes)} as {name}" + (freeBytes is long f ? $" ({GiB(f)} free)" : "") + ", placed on first use";
    }

    static string GiB(long bytes) => bytes >= 1L << 30
        ? string.Create(CultureInfo.InvariantCulture, $"{bytes / (1024.0 * 1024 * 1024):F2} GiB")
        : string.Create(CultureInfo.InvariantCulture, $"{bytes / (1024.0 * 1024):F1} MiB");
}

namespace Loupe.Tensors;

/// <summary>What kind of processor a device is.</summary>
public enum DeviceKind
{
    /// <summary>Host memory and the CPU.</summary>
    Cpu,
    /// <summary>An NVIDIA GPU through CUDA.</summary>
    Cuda,
    /// <summary>
    /// The GPU backend's kernels run by ILGPU's CPU accelerator: device memory that the host may not
    /// read directly, so tests without a GPU exercise the GPU code path, copies and all.
    /// </summary>
    Emulated,
}

/// <summary>Where a tensor lives: <c>cpu</c>, <c>cuda:N</c> or <c>emulated</c>.</summary>
public readonly record struct Device(DeviceKind Kind, int Index = 0)
{
    public static Device Cpu => new(DeviceKind.Cpu);

    public bool IsCpu => Kind == DeviceKind.Cpu;

    public override string ToString() => Kind switch
    {
        DeviceKind.Cpu => "cpu",
        DeviceKind.Cuda => $"cuda:{Index}",
        _ => Index == 0 ? "emulated" : $"emulated:{Index}",
    };

    /// <summary>Parses <c>cpu</c>, <c>cuda</c>, <c>cuda:N</c>, <c>emulated</c> or <c>emulated:N</c> (case-insensitive).</summary>
    /// <exception cref="InputError">Anything else, with the accepted forms in the message.</exception>
    public static Device Parse(string text, string where = "--device")
    {
        var t = text.Trim().ToLowerInvariant();
        int colon = t.IndexOf(':');
        string kind = colon < 0 ? t : t[..colon];
        int index = 0;
        if (colon >= 0 && (!int.TryParse(t[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out index) || index > 1024))
            throw new InputError($"{where}: '{text}' has no valid device index after ':'; expected cpu, cuda, cuda:N or emulated");
        return kind switch
        {
            "cpu" when colon < 0 => Cpu,
            "cuda" or "gpu" => new Device(DeviceKind.Cuda, index),
            "emulated" => new Device(DeviceKind.Emulated, index),
            _ => throw new InputError($"{where}: unknown device '{text}'; expected cpu, cuda, cuda:N or emulated"),
        };
    }
}

/// <summary>How a tensor's elements are stored. Activations are always fp32; weights may stay in bf16/fp16 on a GPU.</summary>
public enum ElementType { F32, BF16, F16 }

/// <summary>Names of <see cref="ElementType"/> as users type them.</summary>
public static class ElementTypes
{
    /// <summary>fp32, bf16 or fp16: the <c>--dtype</c> spelling.</summary>
    public static string Name(this ElementType type) => type switch { ElementType.BF16 => "bf16", ElementType.F16 => "fp16", _ => "fp32" };
}

/// <summary>
/// The elements of a tensor on one device. Host storage wraps memory; device storage belongs to a
/// backend, which counts every copy between it and the host.
/// </summary>
public abstract class TensorStorage
{
    public abstract Device Device { get; }
    /// <summary>Elements (not bytes).</summary>
    public abstract long Length { get; }
    public virtual ElementType ElementType => ElementType.F32;
    /// <summary>A view of <paramref name="length"/> elements from <paramref name="offset"/> (no copy).</summary>
    public abstract TensorStorage Slice(long offset, long length);
    /// <summary>A deep copy on the same device.</summary>
    public abstract TensorStorage Clone();
    /// <summary>Copies all elements to host memory (a counted device→host copy for device storage).</summary>
    public abstract void CopyTo(Span<float> destination);
}

/// <summary>Elements in host memory (a managed array or memory-mapped file).</summary>
public sealed class HostStorage(Memory<float> data) : TensorStorage
{
    public Memory<float> Data { get; } = data;
    public override Device Device => Device.Cpu;
    public override long Length => Data.Length;
    public override TensorStorage Slice(long offset, long length) => new HostStorage(Data.Slice(checked((int)offset), checked((int)length)));
    public override TensorStorage Clone() => new HostStorage(Data.ToArray());
    public override void CopyTo(Span<float> destination) => Data.Span.CopyTo(destination);
}

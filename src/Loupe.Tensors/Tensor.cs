using System.Runtime.InteropServices;

namespace Loupe.Tensors;

/// <summary>
/// A dense, contiguous, row-major float32 tensor: a shape plus storage on a device. Host storage is
/// a <see cref="Memory{T}"/>, so a tensor can wrap a managed array or memory-mapped weights without
/// copying them. Device storage (GPU memory) is owned by a backend; its values are read on the host
/// only explicitly, with <see cref="ToCpu"/> or <see cref="CopyTo"/> — <see cref="Span"/> and
/// <see cref="Data"/> refuse, so a hidden host round-trip is an error, not a slowdown.
/// </summary>
public sealed class Tensor
{
    readonly int[] _shape;

    /// <summary>Wraps <paramref name="data"/> (not copied) with the given shape.</summary>
    /// <exception cref="ArgumentException">The element count of the shape differs from the data length.</exception>
    public Tensor(Memory<float> data, params int[] shape) : this(new HostStorage(data), shape) { }

    /// <summary>Wraps storage on any device (not copied) with the given shape.</summary>
    /// <exception cref="ArgumentException">The element count of the shape differs from the storage length.</exception>
    public Tensor(TensorStorage storage, params int[] shape)
    {
        long n = ShapeUtil.Product(shape);
        if (n != storage.Length)
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] holds {n} elements but the data has {storage.Length}", nameof(shape));
        Storage = storage;
        Length = checked((int)n);
        _shape = (int[])shape.Clone();
    }

    /// <summary>Where the elements live.</summary>
    public TensorStorage Storage { get; }

    /// <summary>The device the data lives on.</summary>
    public Device Device => Storage.Device;

    /// <summary>Whether the elements are in host memory (readable through <see cref="Span"/>).</summary>
    public bool IsHost => Storage is HostStorage;

    /// <summary>The tensor's elements in row-major order, for a tensor in host memory.</summary>
    /// <exception cref="InvalidOperationException">The tensor lives on a device; read it with <see cref="ToCpu"/> or <see cref="CopyTo"/>.</exception>
    public Memory<float> Data => Storage is HostStorage host ? host.Data
        : throw new InvalidOperationException($"this {ShapeString} tensor lives on {Device}; read it on the host with ToCpu() or CopyTo() (an explicit, counted copy)");

    public ReadOnlySpan<int> Shape => _shape;
    public int Rank => _shape.Length;
    public int Length { get; }

    /// <inheritdoc cref="Data"/>
    public Span<float> Span => Data.Span;

    /// <summary>The size of axis <paramref name="axis"/>; negative axes count from the end.</summary>
    public int Dim(int axis) => _shape[axis < 0 ? _shape.Length + axis : axis];

    /// <summary>A zero-filled tensor in host memory.</summary>
    public static Tensor Zeros(params int[] shape) => new(new float[ShapeUtil.Product(shape)], shape);

    /// <summary>A host tensor whose contents are not initialised (callers overwrite every element).</summary>
    public static Tensor Uninitialized(params int[] shape) =>
        new(GC.AllocateUninitializedArray<float>(checked((int)ShapeUtil.Product(shape))), shape);

    public static Tensor FromArray(float[] data, params int[] shape) => new(data, shape);

    /// <summary>A view with another shape over the same storage.</summary>
    public Tensor Reshape(params int[] shape)
    {
        int infer = Array.IndexOf(shape, -1);
        if (infer >= 0)
        {
            long known = 1;
            for (int i = 0; i < shape.Length; i++) if (i != infer) known *= shape[i];
            if (known == 0 || Length % known != 0)
                throw new ArgumentException($"cannot infer the -1 axis of shape {ShapeUtil.Format(shape)} for {Length} elements", nameof(shape));
            shape = (int[])shape.Clone();
            shape[infer] = (int)(Length / known);
        }
        return new Tensor(Storage, shape);
    }

    /// <summary>A deep copy on the same device.</summary>
    public Tensor Clone() => new(Storage.Clone(), _shape);

    /// <summary>
    /// This tensor in host memory: itself when it is already there, otherwise a copy (counted by the
    /// owning backend's <see cref="Backends.TransferCounter"/>).
    /// </summary>
    public Tensor ToCpu()
    {
        if (IsHost) return this;
        var host = GC.AllocateUninitializedArray<float>(Length);
        Storage.CopyTo(host);
        return new Tensor(host, _shape);
    }

    /// <summary>Copies every element into <paramref name="destination"/> (host memory), from any device.</summary>
    /// <exception cref="ArgumentException">The destination is shorter than the tensor.</exception>
    public void CopyTo(Span<float> destination)
    {
        if (destination.Length < Length) throw new ArgumentException($"destination holds {destination.Length} elements; the tensor has {Length}", nameof(destination));
        Storage.CopyTo(destination[..Length]);
    }

    /// <summary>The sub-tensor at index <paramref name="index"/> of axis 0 (a view).</summary>
    public Tensor this[int index]
    {
        get
        {
            if ((uint)index >= (uint)_shape[0])
                throw new ArgumentOutOfRangeException(nameof(index), $"index {index} is outside axis 0 of size {_shape[0]}");
            int inner = Length / _shape[0];
            return new Tensor(Storage.Slice((long)index * inner, inner), _shape[1..]);
        }
    }

    /// <summary>The element at a full multi-index (host tensors only).</summary>
    public float At(params int[] index) => Span[ShapeUtil.Offset(_shape, index)];

    public bool SameShape(Tensor other) => _shape.AsSpan().SequenceEqual(other._shape);

    public string ShapeString => ShapeUtil.Format(_shape);

    public override string ToString() => IsHost ? $"Tensor{ShapeString}" : $"Tensor{ShapeString} on {Device}";
}

/// <summary>Shape arithmetic shared by tensors, kernels and file formats.</summary>
public static class ShapeUtil
{
    public static long Product(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (var d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension {d} in shape {Format(shape)}");
            n = checked(n * d);
        }
        return n;
    }

    public static int Offset(ReadOnlySpan<int> shape, ReadOnlySpan<int> index)
    {
        if (index.Length != shape.Length)
            throw new ArgumentException($"index of rank {index.Length} for a tensor of shape {Format(shape)}");
        int off = 0;
        for (int i = 0; i < shape.Length; i++)
        {
            if ((uint)index[i] >= (uint)shape[i])
                throw new ArgumentOutOfRangeException(nameof(index), $"index {index[i]} out of range for axis {i} of shape {Format(shape)}");
            off = off * shape[i] + index[i];
        }
        return off;
    }

    public static string Format(ReadOnlySpan<int> shape) => "[" + string.Join(", ", shape.ToArray()) + "]";
}

static class ThrowHelper
{
    public static void SpanTooShort(string name, int needed, int actual) =>
        throw new ArgumentException($"{name} has {actual} elements; at least {needed} are needed", name);

    public static void CheckLength(ReadOnlySpan<float> span, int needed, string name)
    {
        if (span.Length < needed) SpanTooShort(name, needed, span.Length);
    }

    public static void CheckLength(Span<float> span, int needed, string name)
    {
        if (span.Length < needed) SpanTooShort(name, needed, span.Length);
    }
}

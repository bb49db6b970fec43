using System.Collections.Concurrent;
using ILGPU;
using ILGPU.Runtime;
using Loupe.Tensors.Backends;

namespace Loupe.Tensors.Gpu;

/// <summary>
/// Device memory in size classes, reused: allocating on CUDA is slow and synchronizes the device.
/// Every buffer stays referenced here for its whole life, so ILGPU never frees one from a finalizer;
/// a block whose last tensor is collected comes back through <see cref="DeviceBlock"/>'s finalizer.
/// All launches go to one stream, so a buffer handed out again is only touched after the work queued on it.
/// </summary>
sealed class BufferPool(Accelerator accelerator, long budgetBytes) : IDisposable
{
    readonly ConcurrentDictionary<long, ConcurrentBag<MemoryBuffer1D<byte, Stride1D.Dense>>> _free = new();
    readonly ConcurrentDictionary<MemoryBuffer1D<byte, Stride1D.Dense>, long> _all = new();
    long _allocated;
    volatile bool _disposed;

    public long AllocatedBytes => Interlocked.Read(ref _allocated);

    /// <summary>Sizes rounded up to 2^k·(1 + j/8): at most 12.5 % slack, and repeated shapes reuse buffers.</summary>
    static long SizeClass(long bytes)
    {
        bytes = Math.Max(bytes, 256);
        int shift = 63 - System.Numerics.BitOperations.LeadingZeroCount((ulong)bytes);
        long step = Math.Max(1L, (1L << shift) / 8);
        return (bytes + step - 1) / step * step;
    }

    public DeviceBlock Rent(long bytes, bool exact = false)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long size = exact ? Math.Max(bytes, 4) : SizeClass(bytes);
        if (TryTake(size) is { } reused) return new DeviceBlock(this, reused, size);
        if (AllocatedBytes + size > budgetBytes)
        {
            // Near the device's capacity: collect the tensors nobody holds, then free idle buffers of other sizes.
            Reclaim();
            if (TryTake(size) is { } reclaimed) return new DeviceBlock(this, reclaimed, size);
            if (AllocatedBytes + size > budgetBytes) Trim();
        }
        MemoryBuffer1D<byte, Stride1D.Dense> buffer;
        try
        {
            buffer = accelerator.Allocate1D<byte>(size);
        }
        catch (Exception) when (!_disposed)
        {
            // Out of device memory: collect the tensors nobody holds, free every idle buffer, try once more.
            Reclaim();
            if (TryTake(size) is { } late) return new DeviceBlock(this, late, size);
            Trim();
            try
            {
                buffer = accelerator.Allocate1D<byte>(size);
            }
            catch (Exception e) when (!_disposed)
            {
                // The run asks for more than the device holds: a refusal the user can act on, not a crash.
                throw new InputError($"device {accelerator.Name}: out of memory allocating {size / 1048576.0:F1} MiB with {AllocatedBytes / 1048576.0:F1} MiB " +
                    $"in use ({e.GetType().Name}); use a smaller batch or fewer cached hooks, bf16 weights, or --device cpu");
            }
        }
        _all[buffer] = size;
        Interlocked.Add(ref _allocated, size);
        return new DeviceBlock(this, buffer, size);
    }

    MemoryBuffer1D<byte, Stride1D.Dense>? TryTake(long size) =>
        _free.TryGetValue(size, out var bag) && bag.TryTake(out var buffer) ? buffer : null;

    static void Reclaim()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
    }

    /// <summary>Frees the idle buffers.</summary>
    public void Trim()
    {
        foreach (var bag in _free.Values)
            while (bag.TryTake(out var buffer))
            {
                if (_all.TryRemove(buffer, out long size)) Interlocked.Add(ref _allocated, -size);
                buffer.Dispose();
            }
    }

    /// <summary>A buffer back to the pool (from any thread, finalizers included).</summary>
    public void Return(MemoryBuffer1D<byte, Stride1D.Dense> buffer, long size)
    {
        if (_disposed) return;
        _free.GetOrAdd(size, _ => new()).Add(buffer);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var buffer in _all.Keys) buffer.Dispose();
        _all.Clear();
        _free.Clear();
    }
}

/// <summary>One device allocation from the pool; returned to it when disposed or collected.</summary>
sealed class DeviceBlock : IDisposable
{
    readonly BufferPool _pool;
    int _returned;

    internal DeviceBlock(BufferPool pool, MemoryBuffer1D<byte, Stride1D.Dense> buffer, long bytes)
    {
        _pool = pool;
        Buffer = buffer;
        Bytes = bytes;
    }

    public MemoryBuffer1D<byte, Stride1D.Dense> Buffer { get; }
    public long Bytes { get; }

    public ArrayView<T> View<T>(long offset, long length) where T : unmanaged =>
        ((ArrayView<byte>)Buffer.View).Cast<T>().SubView(offset, length);

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _returned, 1) == 0) _pool.Return(Buffer, Bytes);
        GC.SuppressFinalize(this);
    }

    ~DeviceBlock()
    {
        if (Interlocked.Exchange(ref _returned, 1) == 0) _pool.Return(Buffer, Bytes);
    }
}

/// <summary>
/// Elements in device memory owned by a <see cref="GpuBackend"/>: a range of one pooled block. Slices
/// are views of the same block (no copy); reading on the host is an explicit, counted download.
/// </summary>
public sealed class GpuStorage : TensorStorage
{
    readonly GpuBackend _backend;
    readonly long _length;
    readonly ElementType _type;
    GpuStorage? _asF32;

    internal GpuStorage(GpuBackend backend, DeviceBlock block, long offset, long length, ElementType type)
    {
        _backend = backend;
        Block = block;
        Offset = offset;
        _length = length;
        _type = type;
    }

    internal DeviceBlock Block { get; }
    /// <summary>Elements (of <see cref="ElementType"/>) from the start of the block.</summary>
    internal long Offset { get; }
    internal GpuBackend Backend => _backend;

    public override Device Device => _backend.Device;
    public override long Length => _length;
    public override ElementType ElementType => _type;

    internal ArrayView<float> F32 => _type == ElementType.F32 ? Block.View<float>(Offset, _length)
        : throw new InvalidOperationException($"a {_type} tensor is read-only on the device backend");
    internal ArrayView<ushort> U16 => _type != ElementType.F32 ? Block.View<ushort>(Offset, _length)
        : throw new InvalidOperationException("an fp32 tensor has no 16-bit view");

    /// <summary>The elements widened to fp32 on the device (made once, for ops other than GEMM that get a 16-bit weight).</summary>
    internal GpuStorage AsF32()
    {
        if (_type == ElementType.F32) return this;
        return LazyInitializer.EnsureInitialized(ref _asF32, () => _backend.Widen(this));
    }

    public override TensorStorage Slice(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > _length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"slice [{offset}, {offset + length}) is outside {_length} elements");
        return new GpuStorage(_backend, Block, Offset + offset, length, _type);
    }

    public override TensorStorage Clone() => _backend.CloneStorage(this);

    public override void CopyTo(Span<float> destination)
    {
        if (destination.Length < _length) throw new ArgumentException($"destination holds {destination.Length} elements; the storage has {_length}", nameof(destination));
        _backend.Download(this, destination[..checked((int)_length)], TransferKind.Data);
    }
}

using System.Buffers;

namespace Loupe.Models.Loading;

/// <summary>Something that owns native memory and can say whether it is still alive.</summary>
internal interface INativeMemoryOwner
{
    /// <summary>Throws <see cref="ObjectDisposedException"/> once the memory is released.</summary>
    void ThrowIfDisposed();
}

/// <summary>
/// A <see cref="MemoryManager{T}"/> over native memory owned by someone else (a memory-mapped
/// view of a <see cref="SafeTensorsFile"/>). It never frees anything itself: the owner keeps the
/// memory alive until it is disposed, after which <see cref="GetSpan"/> and <see cref="Pin"/>
/// throw <see cref="ObjectDisposedException"/> (a span obtained earlier must not outlive the owner).
/// The memory may be read-only (a read-only mapping): writing through it crashes the process.
/// </summary>
internal sealed unsafe class NativeMemoryManager<T> : MemoryManager<T> where T : unmanaged
{
    readonly T* _pointer;
    readonly int _length;
    readonly INativeMemoryOwner _owner;

    public NativeMemoryManager(T* pointer, int length, INativeMemoryOwner owner)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        _pointer = pointer;
        _length = length;
        _owner = owner;
    }

    /// <summary>The owner of the memory (used by tests to check zero-copy results).</summary>
    public object Owner => _owner;

    public override Span<T> GetSpan()
    {
        _owner.ThrowIfDisposed();
        return new Span<T>(_pointer, _length);
    }

    public override MemoryHandle Pin(int elementIndex = 0)
    {
        _owner.ThrowIfDisposed();
        if ((uint)elementIndex > (uint)_length) throw new ArgumentOutOfRangeException(nameof(elementIndex));
        return new MemoryHandle(_pointer + elementIndex);
    }

    public override void Unpin() { }

    protected override void Dispose(bool disposing) { }
}

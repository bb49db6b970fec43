using Loupe.Tensors;

namespace Loupe.Models.Hooks;

/// <summary>
/// A model's dead scratch storage kept between passes, by length. A pass's released intermediates would otherwise be
/// garbage the moment it ends, and the next pass would allocate the same arrays again: on the CPU every one is a fresh
/// large-object array the kernel pages in (a GPT-2 batch-1 forward took ~9,000 page faults) and whose garbage makes a
/// later pass pay for a gen-2 collection; on a GPU every one is a device allocation. PyTorch's caching allocator keeps
/// freed blocks for the same reason. The pool holds at most <see cref="CapacityBytes"/>; what does not fit is dropped.
/// A request takes the smallest storage of at least its length and at most twice it: passes over batches of different
/// lengths (a probe's sentences, a server's prompts) then reuse a longer pass's storage, which the kernel paged in once,
/// instead of each allocating afresh (a 2,000-sentence POS harvest took ~550,000 page faults and 7 s of system time).
/// </summary>
/// <remarks>Thread-safe: passes on one model may run concurrently (the web app serves several requests).</remarks>
public sealed class ScratchPool
{
    /// <summary>The default capacity: <c>LOUPE_SCRATCH_POOL_MB</c> if set (0 turns pooling off), else 1 GiB.</summary>
    public static long DefaultCapacityBytes { get; } =
        long.TryParse(Environment.GetEnvironmentVariable("LOUPE_SCRATCH_POOL_MB"), out long mb) && mb >= 0 ? mb << 20 : 1L << 30;

    readonly object _gate = new();
    // By storage length, ascending, so a request finds the smallest that serves it by binary search.
    readonly SortedList<long, Stack<TensorStorage>> _byLength = [];
    long _bytes;

    /// <param name="capacityBytes">The most storage the pool keeps, in bytes (0: keep nothing).</param>
    public ScratchPool(long capacityBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacityBytes);
        CapacityBytes = capacityBytes;
    }

    /// <summary>The most storage the pool keeps, in bytes.</summary>
    public long CapacityBytes { get; }

    /// <summary>The storage the pool holds now, in bytes.</summary>
    public long Bytes { get { lock (_gate) return _bytes; } }

    /// <summary>The most elements a storage handed out for a request of n elements may hold: 2·n.</summary>
    public static long LongestServing(long length) => 2 * length;

    /// <summary>
    /// Takes the smallest storage the pool holds of at least <paramref name="length"/> elements and at most
    /// <see cref="LongestServing"/> of it, if there is one. It may be longer than asked: the caller uses a
    /// <see cref="TensorStorage.Slice"/> of it and gives back the whole storage.
    /// </summary>
    public bool TryTake(long length, out TensorStorage storage)
    {
        lock (_gate)
        {
            var lengths = _byLength.Keys;
            int lo = 0, hi = lengths.Count; // the first length ≥ the request
            while (lo < hi)
            {
                int mid = (lo + hi) >>> 1;
                if (lengths[mid] < length) lo = mid + 1; else hi = mid;
            }
            if (lo < lengths.Count && lengths[lo] <= LongestServing(length))
            {
                var stack = _byLength.Values[lo];
                var found = stack.Pop();
                if (stack.Count == 0) _byLength.RemoveAt(lo);
                _bytes -= BytesOf(found);
                storage = found;
                return true;
            }
        }
        storage = null!;
        return false;
    }

    /// <summary>
    /// Keeps dead storages for later passes, as many as fit; the caller must not touch them again. When they do not all
    /// fit, lengths this pass did not give back go first: they belong to other shapes (another prompt length or batch).
    /// </summary>
    public void Return(IEnumerable<TensorStorage> storages)
    {
        var given = storages.ToList();
        lock (_gate)
        {
            long incoming = given.Sum(BytesOf);
            if (_bytes + incoming > CapacityBytes)
            {
                var lengths = given.Select(s => s.Length).ToHashSet();
                foreach (var (length, stack) in _byLength.Where(entry => !lengths.Contains(entry.Key)).ToList())
                {
                    _bytes -= stack.Sum(BytesOf);
                    _byLength.Remove(length);
                }
            }
            foreach (var storage in given)
            {
                long bytes = BytesOf(storage);
                if (_bytes + bytes > CapacityBytes) continue;
                if (!_byLength.TryGetValue(storage.Length, out var stack)) _byLength[storage.Length] = stack = new();
                stack.Push(storage);
                _bytes += bytes;
            }
        }
    }

    /// <summary>Drops everything the pool holds (the memory goes back when the collector or the device frees it).</summary>
    public void Clear()
    {
        lock (_gate)
        {
            _byLength.Clear();
            _bytes = 0;
        }
    }

    static long BytesOf(TensorStorage storage) => storage.Length * (storage.ElementType == ElementType.F32 ? 4 : 2);
}

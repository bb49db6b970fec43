using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Models.Generation;

/// <summary>
/// Keys and values of every layer for the positions seen so far, preallocated to a capacity.
/// Per layer: k, v <c>[batch, capacity, n_key_value_heads, d_head]</c> (keys after rotary).
/// </summary>
public sealed class KvCache
{
    readonly Tensor[] _keys, _values;

    /// <summary>A cache in host memory.</summary>
    public KvCache(int nLayers, int batch, int capacity, int nKvHeads, int dHead) : this(CpuBackend.Instance, nLayers, batch, capacity, nKvHeads, dHead) { }

    /// <summary>A cache on <paramref name="backend"/>'s device.</summary>
    /// <exception cref="InputError">The cache would not fit in one array per layer (a config or request too large to run).</exception>
    public KvCache(IComputeBackend backend, int nLayers, int batch, int capacity, int nKvHeads, int dHead)
    {
        // Sizes come from the config and the request: check the products before allocating.
        Check.Product("KV cache", "[batch, capacity, n_key_value_heads, d_head]", Check.MaxArrayElements, batch, capacity, nKvHeads, dHead);
        Check.Product("KV cache", "[n_layers, batch, capacity, n_key_value_heads, d_head]", long.MaxValue, nLayers, batch, capacity, nKvHeads, dHead);
        Batch = batch;
        Capacity = capacity;
        RowWidth = nKvHeads * dHead;
        _keys = new Tensor[nLayers];
        _values = new Tensor[nLayers];
        for (int l = 0; l < nLayers; l++)
        {
            _keys[l] = backend.Zeros(batch, capacity, nKvHeads, dHead);
            _values[l] = backend.Zeros(batch, capacity, nKvHeads, dHead);
        }
        KeyValid = new bool[batch * capacity];
    }

    public int Batch { get; }
    public int Capacity { get; }
    /// <summary>Floats per position: n_key_value_heads · d_head.</summary>
    public int RowWidth { get; }
    /// <summary>Positions already stored.</summary>
    public int Length { get; private set; }
    /// <summary>Padding mask over stored positions <c>[batch, capacity]</c>.</summary>
    public bool[] KeyValid { get; }

    /// <summary>Keys of a layer <c>[batch, capacity, n_key_value_heads, d_head]</c>.</summary>
    public Tensor Keys(int layer) => _keys[layer];
    /// <summary>Values of a layer <c>[batch, capacity, n_key_value_heads, d_head]</c>.</summary>
    public Tensor Values(int layer) => _values[layer];

    /// <summary>Writes one layer's new keys and values <c>[batch, newLen, kv_heads, d_head]</c> after the stored ones.</summary>
    public void Write(IComputeBackend backend, int layer, Tensor k, Tensor v, int newLen)
    {
        if (Length + newLen > Capacity)
            throw new InvalidOperationException($"KV cache holds {Capacity} positions; {Length} + {newLen} do not fit");
        int span = newLen * RowWidth;
        backend.CopyRows(k, 0, span, _keys[layer], (long)Length * RowWidth, Capacity * RowWidth, Batch, span);
        backend.CopyRows(v, 0, span, _values[layer], (long)Length * RowWidth, Capacity * RowWidth, Batch, span);
    }

    /// <summary>Marks <paramref name="newLen"/> positions as stored (after every layer wrote them).</summary>
    public void Advance(int newLen, bool[]? valid)
    {
        for (int b = 0; b < Batch; b++)
            for (int t = 0; t < newLen; t++)
                KeyValid[b * Capacity + Length + t] = valid is null || valid[b * newLen + t];
        Length += newLen;
    }

    /// <summary>The padding mask of the stored plus <paramref name="newLen"/> incoming positions, laid out <c>[batch, capacity]</c>.</summary>
    public bool[] MaskWithIncoming(int newLen, bool[]? valid)
    {
        var mask = (bool[])KeyValid.Clone();
        for (int b = 0; b < Batch; b++)
            for (int t = 0; t < newLen; t++)
                mask[b * Capacity + Length + t] = valid is null || valid[b * newLen + t];
        return mask;
    }
}

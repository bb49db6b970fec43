namespace Loupe.Models.Hooks;

/// <summary>
/// Axis names of hook point activations, TransformerLens's (its jaxtyping annotations), so code can
/// say "the head axis" instead of "axis 2".
/// </summary>
public static class HookAxis
{
    public const string Batch = "batch";
    /// <summary>Token position (the query position in attention).</summary>
    public const string Pos = "pos";
    /// <summary>Attention head; at <c>hook_k</c>, <c>hook_v</c> and <c>hook_rot_k</c> it counts key/value heads.</summary>
    public const string HeadIndex = "head_index";
    public const string DHead = "d_head";
    public const string DModel = "d_model";
    public const string DMlp = "d_mlp";
    /// <summary>Query position of attention scores and patterns.</summary>
    public const string QueryPos = "query_pos";
    /// <summary>Key position of attention scores and patterns (grows with a KV cache during generation).</summary>
    public const string KeyPos = "key_pos";
    /// <summary>The size-1 last axis of a norm's <c>hook_scale</c> (TransformerLens writes <c>[batch, pos, 1]</c>).</summary>
    public const string One = "1";
}

/// <summary>
/// One hook point as the model declares it: where it is and what its activation looks like, known
/// from the config alone (no forward pass). The activation (and its gradient) at this point is a
/// tensor with one dimension per axis.
/// </summary>
public sealed record HookPoint
{
    /// <param name="name">The TransformerLens name, e.g. <c>blocks.0.attn.hook_q</c>.</param>
    /// <param name="layer">The block index, −1 outside blocks (embeddings, <c>ln_final</c>).</param>
    /// <param name="axes">Axis names in memory order (<see cref="HookAxis"/>), e.g. <c>[batch, pos, head_index, d_head]</c>.</param>
    /// <param name="sizes">
    /// Per axis, its size when the model fixes it, or null when the run does (batch, pos, query_pos, key_pos).
    /// </param>
    /// <param name="dType">The element type of the activation.</param>
    /// <exception cref="ArgumentException">The name is empty, or axes and sizes differ in count, or a size is below 1, or an axis name repeats.</exception>
    public HookPoint(string name, int layer, IReadOnlyList<string> axes, IReadOnlyList<int?> sizes, string dType = "float32")
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(axes);
        ArgumentNullException.ThrowIfNull(sizes);
        if (axes.Count != sizes.Count)
            throw new ArgumentException($"hook point {name}: {axes.Count} axes but {sizes.Count} sizes", nameof(sizes));
        if (sizes.Any(s => s < 1))
            throw new ArgumentException($"hook point {name}: sizes must be at least 1 (or null), found [{string.Join(", ", sizes)}]", nameof(sizes));
        if (axes.Distinct(StringComparer.Ordinal).Count() != axes.Count)
            throw new ArgumentException($"hook point {name}: axis names repeat in [{string.Join(", ", axes)}]", nameof(axes));
        Name = name;
        Layer = layer;
        Axes = axes.ToArray();
        Sizes = sizes.ToArray();
        DType = dType;
    }

    public string Name { get; }
    public int Layer { get; }
    public IReadOnlyList<string> Axes { get; }
    public IReadOnlyList<int?> Sizes { get; }
    public string DType { get; }

    /// <summary>Where the activation lives during a run: the device of the model's backend.</summary>
    public Tensors.Device Device { get; init; } = Tensors.Device.Cpu;

    public int Rank => Axes.Count;

    /// <summary>The position of axis <paramref name="axis"/> (e.g. <see cref="HookAxis.HeadIndex"/>) in the activation's shape.</summary>
    /// <exception cref="ArgumentException">The hook point has no such axis (the message lists its axes).</exception>
    public int AxisIndex(string axis)
    {
        int index = IndexOf(axis);
        return index >= 0 ? index : throw new ArgumentException($"hook point {Name} has no axis '{axis}'; its axes are [{string.Join(", ", Axes)}]", nameof(axis));
    }

    public bool HasAxis(string axis) => IndexOf(axis) >= 0;

    /// <summary>The model-fixed size of <paramref name="axis"/>, or null where the run decides it (batch and positions).</summary>
    /// <exception cref="ArgumentException">The hook point has no such axis.</exception>
    public int? Size(string axis) => Sizes[AxisIndex(axis)];

    /// <summary>
    /// The activation's shape in a run over <paramref name="batch"/> sequences of <paramref name="positions"/>
    /// tokens without a KV cache (so key_pos = query_pos = pos).
    /// </summary>
    public int[] Shape(int batch, int positions)
    {
        var shape = new int[Rank];
        for (int i = 0; i < shape.Length; i++)
            shape[i] = Sizes[i] ?? (Axes[i] == HookAxis.Batch ? batch : positions);
        return shape;
    }

    /// <summary>Whether <paramref name="shape"/> has this hook point's rank and every model-fixed size.</summary>
    public bool Fits(ReadOnlySpan<int> shape)
    {
        if (shape.Length != Rank) return false;
        for (int i = 0; i < shape.Length; i++)
            if (Sizes[i] is int size && shape[i] != size) return false;
        return true;
    }

    /// <summary>The name and axes, e.g. <c>blocks.0.attn.hook_q [batch, pos, head_index=12, d_head=64]</c>.</summary>
    public string Describe() => $"{Name} {AxesText()}";

    /// <summary>The axes alone, e.g. <c>[batch, pos, head_index=12, d_head=64]</c>; a size-named axis prints once (<c>1</c>).</summary>
    public string AxesText() =>
        "[" + string.Join(", ", Axes.Select((a, i) => Sizes[i] is int s && a != s.ToString(System.Globalization.CultureInfo.InvariantCulture) ? $"{a}={s}" : a)) + "]";

    public override string ToString() => Describe();

    public bool Equals(HookPoint? other) =>
        other is not null && Name == other.Name && Layer == other.Layer && DType == other.DType && Device == other.Device
        && Axes.SequenceEqual(other.Axes) && Sizes.SequenceEqual(other.Sizes);

    public override int GetHashCode() => HashCode.Combine(Name, Layer, DType, Rank);

    int IndexOf(string axis)
    {
        for (int i = 0; i < Axes.Count; i++)
            if (Axes[i] == axis) return i;
        return -1;
    }
}

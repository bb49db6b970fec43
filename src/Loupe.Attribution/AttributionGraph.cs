namespace Loupe.Attribution;

/// <summary>The kinds of node an attribution graph holds, with circuit-tracer's numeric codes.</summary>
public enum NodeKind
{
    /// <summary>An active transcoder feature (layer, position, feature index).</summary>
    Feature = 0,
    /// <summary>The error node of a layer at a position: the MLP output the transcoder does not reconstruct.</summary>
    Error = 1,
    /// <summary>A token embedding (position, token id).</summary>
    Token = 2,
    /// <summary>A logit at the last position (vocabulary id).</summary>
    Logit = 3,
}

/// <summary>
/// One node. <see cref="Layer"/> is −1 for tokens and n_layers for logits; <see cref="Index"/> is the
/// feature index (features), the token id (tokens), the vocabulary id (logits) or −1 (errors).
/// <see cref="Value"/> is the feature's activation, the logit's probability, else 0.
/// </summary>
public readonly record struct GraphNode(NodeKind Kind, int Layer, int Position, int Index, float Value);

/// <summary>What made a graph: recorded in every file written from it.</summary>
/// <param name="Model">The model's source (hub id or folder) and architecture.</param>
/// <param name="ModelFingerprint">Fingerprint of the model weights.</param>
/// <param name="Transcoders">Where the transcoders came from.</param>
/// <param name="TranscoderFingerprint">Fingerprint of the transcoder weights.</param>
/// <param name="Settings">The attribution settings by name (max_n_logits, desired_logit_prob, max_feature_nodes, batch_size…).</param>
/// <param name="LoupeVersion">The Loupe version that made it.</param>
/// <param name="CreatedUtc">When it was made.</param>
public sealed record GraphProvenance(
    string Model,
    string ModelFingerprint,
    string Transcoders,
    string TranscoderFingerprint,
    IReadOnlyDictionary<string, string> Settings,
    string LoupeVersion,
    DateTimeOffset CreatedUtc);

/// <summary>
/// A prompt's attribution graph over a replacement model, laid out as circuit-tracer's <c>Graph</c>.
/// Node order (both adjacency axes): <c>[selected features (in <see cref="SelectedFeatures"/> order),
/// error nodes (layer-major, then position: L·T), token nodes (by position: T), logit nodes (by
/// descending probability)]</c>. The adjacency A is <c>[n, n]</c> with <b>rows = targets, columns = sources</b>:
/// <c>A[t, s]</c> is the direct effect of source s on target t (a feature target's pre-activation, a logit
/// target's demeaned logit). Only feature and logit rows can be nonzero (errors and tokens have no inputs),
/// so it is held either dense (<see cref="Adjacency"/>) or as those rows only (<see cref="TargetRows"/>) —
/// the form attribution produces, L·T + T rows smaller. Read it with <see cref="Row"/> or <see cref="Edge"/>.
/// </summary>
public sealed record AttributionGraph
{
    /// <summary>The prompt's token ids.</summary>
    public required int[] InputTokens { get; init; }

    /// <summary>The prompt's tokens as text (one per position), when a tokenizer was at hand.</summary>
    public string[]? TokenStrings { get; init; }

    /// <summary>The prompt as text, when known.</summary>
    public string? Prompt { get; init; }

    /// <summary>n_layers of the model.</summary>
    public required int Layers { get; init; }

    /// <summary>Every active feature as (layer, position, feature), sorted by layer, then position, then feature.</summary>
    public required (int Layer, int Position, int Feature)[] ActiveFeatures { get; init; }

    /// <summary>The activation of each active feature (same order as <see cref="ActiveFeatures"/>).</summary>
    public required float[] ActivationValues { get; init; }

    /// <summary>Indices into <see cref="ActiveFeatures"/> of the features that are graph nodes, in node order.</summary>
    public required int[] SelectedFeatures { get; init; }

    /// <summary>The logit targets' vocabulary ids, by descending probability.</summary>
    public required int[] LogitTokens { get; init; }

    /// <summary>Their probabilities at the last position (for a target that is not one token, its weight: see <see cref="AttributionTarget"/>).</summary>
    public required float[] LogitProbabilities { get; init; }

    /// <summary>
    /// Labels of the logit targets, one each (null entries, or no array: a vocabulary token, shown by its text). A target
    /// that is not one token (a logit difference, a custom direction) has a label and a virtual id V + its index in
    /// <see cref="LogitTokens"/>, as circuit-tracer numbers them.
    /// </summary>
    public string?[]? LogitLabels { get; init; }

    /// <summary>
    /// The direction each logit row was injected with at the final norm's output, <c>[logits][d_model]</c>, when the
    /// targets were given explicitly; null: the demeaned unembedding columns of <see cref="LogitTokens"/>.
    /// </summary>
    public float[][]? LogitVectors { get; init; }

    /// <summary>The adjacency matrix <c>[n, n]</c>, rows = targets, columns = sources (null when held as <see cref="TargetRows"/>).</summary>
    public float[]? Adjacency { get; init; }

    /// <summary>
    /// The adjacency's feature rows then logit rows, <c>[selected features + logits, n]</c> (null when held dense
    /// in <see cref="Adjacency"/>). Error and token rows are zero.
    /// </summary>
    public float[]? TargetRows { get; init; }

    /// <summary>Error vectors <c>[L, T, d_model]</c> (MLP output minus reconstruction), when kept.</summary>
    public float[]? ErrorVectors { get; init; }

    /// <summary>Token embedding vectors <c>[T, d_model]</c>, when kept.</summary>
    public float[]? TokenVectors { get; init; }

    /// <summary>What made the graph.</summary>
    public GraphProvenance? Provenance { get; init; }

    /// <summary>Number of positions T.</summary>
    public int Positions => InputTokens.Length;

    /// <summary>Number of nodes n = selected features + L·T + T + logits.</summary>
    public int NodeCount => SelectedFeatures.Length + Layers * Positions + Positions + LogitTokens.Length;

    /// <summary>Index of the first error node.</summary>
    public int ErrorOffset => SelectedFeatures.Length;

    /// <summary>Index of the first token node.</summary>
    public int TokenOffset => ErrorOffset + Layers * Positions;

    /// <summary>Index of the first logit node.</summary>
    public int LogitOffset => TokenOffset + Positions;

    /// <summary>The node at <paramref name="index"/> (in adjacency order).</summary>
    public GraphNode Node(int index)
    {
        if ((uint)index >= (uint)NodeCount) throw new ArgumentOutOfRangeException(nameof(index), $"node {index} is outside 0..{NodeCount - 1}");
        if (index < ErrorOffset)
        {
            int a = SelectedFeatures[index];
            var (l, p, f) = ActiveFeatures[a];
            return new GraphNode(NodeKind.Feature, l, p, f, ActivationValues[a]);
        }
        if (index < TokenOffset)
        {
            int e = index - ErrorOffset;
            return new GraphNode(NodeKind.Error, e / Positions, e % Positions, -1, 0f);
        }
        if (index < LogitOffset)
        {
            int p = index - TokenOffset;
            return new GraphNode(NodeKind.Token, -1, p, InputTokens[p], 0f);
        }
        int j = index - LogitOffset;
        return new GraphNode(NodeKind.Logit, Layers, Positions - 1, LogitTokens[j], LogitProbabilities[j]);
    }

    /// <summary>Every node in adjacency order.</summary>
    public IEnumerable<GraphNode> Nodes() => Enumerable.Range(0, NodeCount).Select(Node);

    /// <summary>A[target, source].</summary>
    public float Edge(int target, int source) => Row(target)[source];

    float[]? _zeroRow;

    /// <summary>Row <paramref name="target"/> of the adjacency (the target's inputs), n wide.</summary>
    /// <exception cref="InvalidOperationException">Neither <see cref="Adjacency"/> nor <see cref="TargetRows"/> has the right size.</exception>
    public ReadOnlySpan<float> Row(int target)
    {
        int n = NodeCount;
        if ((uint)target >= (uint)n) throw new ArgumentOutOfRangeException(nameof(target), $"node {target} is outside 0..{n - 1}");
        if (Adjacency is { } dense)
        {
            if (dense.LongLength != (long)n * n) throw new InvalidOperationException($"the adjacency has {dense.LongLength} entries; expected {n}×{n}");
            return dense.AsSpan(checked((int)((long)target * n)), n);
        }
        var rows = TargetRows ?? throw new InvalidOperationException("the graph has no adjacency (neither Adjacency nor TargetRows)");
        if (rows.LongLength != (long)StoredRows * n) throw new InvalidOperationException($"the target rows hold {rows.LongLength} entries; expected {StoredRows}×{n}");
        int stored = target < ErrorOffset ? target : target >= LogitOffset ? ErrorOffset + target - LogitOffset : -1;
        if (stored < 0) return _zeroRow ??= new float[n];
        return rows.AsSpan(checked((int)((long)stored * n)), n);
    }

    /// <summary>Rows held in <see cref="TargetRows"/>: the selected features and the logits.</summary>
    public int StoredRows => SelectedFeatures.Length + LogitTokens.Length;

    /// <summary>Whether the adjacency's entry count fits its form (dense n×n, or the feature and logit rows).</summary>
    public bool HasValidAdjacency =>
        Adjacency is { } a ? a.LongLength == (long)NodeCount * NodeCount : TargetRows is { } r && r.LongLength == (long)StoredRows * NodeCount;

    /// <summary>The adjacency as a dense <c>[n, n]</c> array (allocates n² floats unless it is held dense).</summary>
    public float[] DenseAdjacency()
    {
        if (Adjacency is { } a) return a;
        int n = NodeCount;
        var dense = new float[(long)n * n];
        for (int t = 0; t < n; t++)
            if (t < ErrorOffset || t >= LogitOffset) Row(t).CopyTo(dense.AsSpan(checked((int)((long)t * n)), n));
        return dense;
    }
}

namespace Loupe.Attribution;

/// <summary>How an attribution graph is computed (circuit-tracer's <c>attribute</c> arguments, same defaults).</summary>
public sealed record AttributionSettings
{
    /// <summary>At most this many logit targets (<c>max_n_logits</c>).</summary>
    public int MaxLogits { get; init; } = 10;

    /// <summary>Logit targets are added by descending probability until their cumulative probability reaches this (<c>desired_logit_prob</c>).</summary>
    public double LogitProbability { get; init; } = 0.95;

    /// <summary>
    /// The targets to explain, in order (<c>attribution_targets</c>); null: the salient next tokens
    /// (<see cref="MaxLogits"/>, <see cref="LogitProbability"/>). See <see cref="AttributionTarget"/>.
    /// </summary>
    public IReadOnlyList<AttributionTarget>? Targets { get; init; }

    /// <summary>Target rows per batched backward pass (<c>batch_size</c>).</summary>
    public int BatchSize { get; init; } = 256;

    /// <summary>At most this many feature nodes, chosen greedily by influence on the logits (<c>max_feature_nodes</c>); null = every active feature.</summary>
    public int? MaxFeatureNodes { get; init; }

    /// <summary>Batches computed between re-rankings of the features by influence (<c>update_interval</c>).</summary>
    public int UpdateInterval { get; init; } = 4;

    /// <summary>
    /// Bytes the attribution rows may take in memory; beyond it they are streamed to a scratch file in
    /// <see cref="ScratchDirectory"/> (null = half of the memory available to the process).
    /// </summary>
    public long? MaxMemoryBytes { get; init; }

    /// <summary>Where rows that do not fit <see cref="MaxMemoryBytes"/> go (null = the system's temp folder).</summary>
    public string? ScratchDirectory { get; init; }

    /// <summary>Key positions per block of the causal pattern product (tests make it small to cover the blocking).</summary>
    internal int CausalBlock { get; init; } = 256;

    /// <summary>
    /// Leading positions whose features and error vectors are not sources (their MLP outputs stay frozen constants):
    /// circuit-tracer's BOS, or the chat prefix <c>&lt;bos&gt;&lt;start_of_turn&gt;user\n</c> of Gemma 3 instruction-tuned
    /// models. Null: <see cref="DefaultZeroPositions"/>.
    /// </summary>
    public int? ZeroPositions { get; init; }

    /// <summary>Gemma 3's chat prefix as token ids (circuit-tracer zeroes these four positions on Gemma 3 "-it" models).</summary>
    static readonly int[] s_gemma3ChatPrefix = [2, 105, 2364, 107];

    /// <summary>4 when a Gemma 3 prompt starts with its chat prefix (token ids 2, 105, 2364, 107), as circuit-tracer does; else 1 (the first token).</summary>
    public static int DefaultZeroPositions(string architecture, IReadOnlyList<int> tokens) =>
        architecture == "gemma3" && tokens.Count > s_gemma3ChatPrefix.Length && tokens.Take(s_gemma3ChatPrefix.Length).SequenceEqual(s_gemma3ChatPrefix) ? 4 : 1;

    /// <summary>Write progress lines here (null = silent).</summary>
    public Action<string>? Log { get; init; }

    /// <summary>The settings by circuit-tracer's names, as recorded in every file.</summary>
    public IReadOnlyDictionary<string, string> Describe() => new SortedDictionary<string, string>(StringComparer.Ordinal)
    {
        ["max_n_logits"] = MaxLogits.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["desired_logit_prob"] = LogitProbability.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        ["batch_size"] = BatchSize.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["max_feature_nodes"] = MaxFeatureNodes?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "all",
        ["update_interval"] = UpdateInterval.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["zero_positions"] = ZeroPositions?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "auto",
        ["attribution_targets"] = Targets is null ? "salient" : string.Join(", ", Targets),
    };
}

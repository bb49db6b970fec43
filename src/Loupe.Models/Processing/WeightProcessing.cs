namespace Loupe.Models.Processing;

/// <summary>
/// TransformerLens's weight processing, chosen at load (all off by default). Each option leaves the
/// model's log-probabilities unchanged; <see cref="CenterUnembed"/> shifts every logit of a position by
/// the same amount. Applied in TransformerLens's order: fold_ln, center_writing_weights, center_unembed,
/// fold_value_biases, refactor_factored_attn_matrices.
/// </summary>
public sealed record WeightProcessing
{
    /// <summary>Fold each norm's weight (and LayerNorm's bias) into the layers reading it; LayerNorm weights that read it are centred over d_model (TL's <c>fold_ln</c>).</summary>
    public bool FoldLn { get; init; }
    /// <summary>Subtract the mean over d_model from every weight and bias writing to the residual stream (TL's <c>center_writing_weights</c>; LayerNorm models only).</summary>
    public bool CenterWritingWeights { get; init; }
    /// <summary>Subtract the mean over the vocabulary from W_U's rows and b_U (TL's <c>center_unembed</c>).</summary>
    public bool CenterUnembed { get; init; }
    /// <summary><c>b_O += Σ_h b_V[h]·W_O[h]</c>, <c>b_V = 0</c> (TL's <c>fold_value_biases</c>).</summary>
    public bool FoldValueBiases { get; init; }
    /// <summary>Refactor W_Q/W_K and W_V/W_O of every head into TL's "even" SVD factors (TL's <c>refactor_factored_attn_matrices</c>).</summary>
    public bool RefactorFactoredAttn { get; init; }

    /// <summary>No processing: the weights as the checkpoint holds them.</summary>
    public static WeightProcessing None { get; } = new();

    /// <summary>What TransformerLens's <c>from_pretrained</c> does by default: everything but the refactoring.</summary>
    public static WeightProcessing TransformerLensDefaults { get; } = new() { FoldLn = true, CenterWritingWeights = true, CenterUnembed = true, FoldValueBiases = true };

    /// <summary>The option names, in TransformerLens's spelling and order.</summary>
    public static IReadOnlyList<string> OptionNames { get; } = ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices"];

    /// <summary>True when nothing is processed.</summary>
    public bool IsNone => !(FoldLn || CenterWritingWeights || CenterUnembed || FoldValueBiases || RefactorFactoredAttn);

    /// <summary>Every option with whether it is on, in TransformerLens's order (for JSON artifacts).</summary>
    public IReadOnlyDictionary<string, bool> ToDictionary() => new Dictionary<string, bool>
    {
        ["fold_ln"] = FoldLn,
        ["center_writing_weights"] = CenterWritingWeights,
        ["center_unembed"] = CenterUnembed,
        ["fold_value_biases"] = FoldValueBiases,
        ["refactor_factored_attn_matrices"] = RefactorFactoredAttn,
    };

    /// <summary>The options that are on, e.g. <c>fold_ln,center_writing_weights</c>; <c>none</c> when none is.</summary>
    public string Describe()
    {
        var on = ToDictionary().Where(p => p.Value).Select(p => p.Key).ToArray();
        return on.Length == 0 ? "none" : string.Join(',', on);
    }

    public override string ToString() => Describe();

    /// <summary>
    /// Parses a comma-separated list of option names (<see cref="OptionNames"/>), <c>none</c>, or <c>tl</c>
    /// (TransformerLens's <c>from_pretrained</c> defaults). Null or blank is <see cref="None"/>.
    /// </summary>
    /// <param name="text">The list, e.g. <c>fold_ln,center_unembed</c>.</param>
    /// <param name="where">Where it came from, for the message (e.g. <c>argument</c>).</param>
    /// <param name="what">What it is there (e.g. <c>--process</c>).</param>
    /// <exception cref="InputError">A name is not an option.</exception>
    public static WeightProcessing Parse(string? text, string where = "weight processing", string what = "options")
    {
        if (string.IsNullOrWhiteSpace(text)) return None;
        var result = None;
        foreach (var raw in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            result = raw.Replace('-', '_').ToLowerInvariant() switch
            {
                "none" => result,
                "tl" or "transformer_lens" => result with { FoldLn = true, CenterWritingWeights = true, CenterUnembed = true, FoldValueBiases = true },
                "fold_ln" => result with { FoldLn = true },
                "center_writing_weights" => result with { CenterWritingWeights = true },
                "center_unembed" => result with { CenterUnembed = true },
                "fold_value_biases" => result with { FoldValueBiases = true },
                "refactor_factored_attn_matrices" or "refactor_factored_attn" => result with { RefactorFactoredAttn = true },
                _ => throw InputError.Expected(where, what,
                    $"a comma-separated list of {string.Join(", ", OptionNames)}, 'tl' (TransformerLens's defaults) or 'none'", raw),
            };
        }
        return result;
    }
}

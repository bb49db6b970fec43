// What an attribution graph explains (circuit-tracer's attribution_targets): by default the salient next tokens (the most
// likely ones until their probability reaches desired_logit_prob); or tokens named explicitly; or a direction that is not
// one token's — the logit difference of two tokens (the direction u_x − u_y, weighted |p_x − p_y|, as circuit-tracer's
// attribution-targets demo builds it) or any vector with a label and weight (circuit-tracer's CustomTarget). A target
// that is not one vocabulary token gets a virtual id, V + its index in the list, as circuit-tracer numbers them, so graph
// files name it without colliding with a real token.
namespace Loupe.Attribution;

/// <summary>What a target is.</summary>
public enum AttributionTargetKind
{
    /// <summary>A vocabulary token: its demeaned unembedding, weighted by its probability.</summary>
    Token,

    /// <summary>logit(x) − logit(y): u_x − u_y, weighted by |p_x − p_y| (at least 1e-6).</summary>
    Difference,

    /// <summary>A given direction in the final norm's output space, with a label and weight.</summary>
    Custom,
}

/// <summary>One attribution target (see the file header); make one with <see cref="Token"/>, <see cref="Difference"/> or <see cref="Custom"/>.</summary>
public sealed record AttributionTarget
{
    AttributionTarget(AttributionTargetKind kind) => Kind = kind;

    public AttributionTargetKind Kind { get; }

    /// <summary>The token (Token), or x of logit(x) − logit(y) (Difference); −1 for Custom.</summary>
    public int TokenId { get; private init; } = -1;

    /// <summary>y of logit(x) − logit(y); −1 otherwise.</summary>
    public int OtherTokenId { get; private init; } = -1;

    /// <summary>The label of a Custom target.</summary>
    public string? Label { get; private init; }

    /// <summary>The weight of a Custom target (circuit-tracer's <c>prob</c>): what the target counts for in influence and pruning.</summary>
    public double Weight { get; private init; }

    /// <summary>The direction of a Custom target, [d_model], applied as given (not demeaned).</summary>
    public float[]? Vector { get; private init; }

    public static AttributionTarget Token(int tokenId) => new(AttributionTargetKind.Token) { TokenId = tokenId };

    public static AttributionTarget Difference(int tokenId, int otherTokenId) =>
        new(AttributionTargetKind.Difference) { TokenId = tokenId, OtherTokenId = otherTokenId };

    /// <exception cref="ArgumentException">An empty label, a weight that is not finite and ≥ 0, or a vector with a non-finite value.</exception>
    public static AttributionTarget Custom(string label, double weight, float[] vector)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(label);
        ArgumentNullException.ThrowIfNull(vector);
        if (!double.IsFinite(weight) || weight < 0) throw new ArgumentException($"target '{label}': the weight must be finite and ≥ 0, not {weight}", nameof(weight));
        if (!Array.TrueForAll(vector, float.IsFinite)) throw new ArgumentException($"target '{label}': the vector holds NaN or infinity", nameof(vector));
        return new(AttributionTargetKind.Custom) { Label = label, Weight = weight, Vector = vector };
    }

    /// <summary>
    /// A target token written as <c>#ID</c> (how the CLI, MCP and the web job name a token by id); false for anything else,
    /// which callers read as one token's text.
    /// </summary>
    public static bool TryParseId(string text, out int id)
    {
        id = -1;
        return text is { Length: > 1 } && text[0] == '#'
            && int.TryParse(text.AsSpan(1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out id);
    }

    /// <summary>How the settings record it: <c>#id</c>, <c>#x-#y</c>, or the custom label.</summary>
    public override string ToString() => Kind switch
    {
        AttributionTargetKind.Token => $"#{TokenId}",
        AttributionTargetKind.Difference => $"#{TokenId}-#{OtherTokenId}",
        _ => Label!,
    };
}

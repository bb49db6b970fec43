namespace Loupe.Circuits.Heads;

/// <summary>The kinds of attention head the detector scores.</summary>
public enum HeadKind
{
    /// <summary>Attends from each token to the one right before it (q → q−1).</summary>
    PreviousToken,
    /// <summary>Attends from a token to its earlier occurrence (q → the earlier position holding the same token).</summary>
    DuplicateToken,
    /// <summary>Attends from a token to the position right after its earlier occurrence ([A][B] … [A] → [B]).</summary>
    Induction,
}

/// <summary>How <see cref="DetectionPatterns.Similarity"/> compares an attention pattern with a detection pattern (TransformerLens's <c>error_measure</c>).</summary>
public enum ErrorMeasure
{
    /// <summary><c>Σ A⊙D / Σ A</c>: the share of the head's attention that falls on the detection pattern's 1s (TransformerLens's default).</summary>
    Mul,
    /// <summary><c>1 − Σ|A − D| / seq_len</c>: 1 for a perfect match, −1 for a perfect mismatch.</summary>
    Abs,
}

/// <summary>
/// TransformerLens's head-detection patterns (<c>transformer_lens/head_detector.py</c>) and its similarity score,
/// for one sequence. A detection pattern is a 0/1 matrix <c>[q, k]</c> (row-major, seq_len × seq_len, lower
/// triangular) that marks where the kind of head is expected to attend:
/// <list type="bullet">
/// <item>previous token: <c>D[q, q−1] = 1</c> for q ≥ 1;</item>
/// <item>duplicate token: <c>D[q, k] = 1</c> where k &lt; q and <c>tokens[k] = tokens[q]</c>;</item>
/// <item>induction: the duplicate pattern shifted one column right, <c>D[q, k] = dup[q, k−1]</c> for k ≥ 1, kept where k ≤ q.</item>
/// </list>
/// </summary>
public static class DetectionPatterns
{
    /// <summary>The detection pattern of <paramref name="kind"/> for <paramref name="tokens"/>: <c>[q, k]</c>, row-major.</summary>
    public static float[] For(HeadKind kind, ReadOnlySpan<int> tokens) => kind switch
    {
        HeadKind.PreviousToken => PreviousToken(tokens.Length),
        HeadKind.DuplicateToken => DuplicateToken(tokens),
        HeadKind.Induction => Induction(tokens),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not a head kind"),
    };

    /// <summary><c>D[q, q−1] = 1</c> for q ≥ 1; zero elsewhere. <c>[q, k]</c>, row-major.</summary>
    public static float[] PreviousToken(int seqLen)
    {
        var d = new float[seqLen * seqLen];
        for (int q = 1; q < seqLen; q++) d[q * seqLen + q - 1] = 1;
        return d;
    }

    /// <summary><c>D[q, k] = 1</c> for every earlier position k &lt; q that holds the same token as q. <c>[q, k]</c>, row-major.</summary>
    public static float[] DuplicateToken(ReadOnlySpan<int> tokens)
    {
        int n = tokens.Length;
        var d = new float[n * n];
        for (int q = 0; q < n; q++)
            for (int k = 0; k < q; k++)
                if (tokens[k] == tokens[q]) d[q * n + k] = 1;
        return d;
    }

    /// <summary>
    /// The duplicate pattern shifted one column right: <c>D[q, k] = 1</c> when position k−1 (k ≥ 1, k ≤ q) holds an
    /// earlier occurrence of q's token. As in TransformerLens, an adjacent repeat (tokens[q−1] = tokens[q]) marks
    /// the diagonal. <c>[q, k]</c>, row-major.
    /// </summary>
    public static float[] Induction(ReadOnlySpan<int> tokens)
    {
        int n = tokens.Length;
        var d = new float[n * n];
        for (int q = 0; q < n; q++)
            for (int k = 1; k <= q; k++)
                if (tokens[k - 1] == tokens[q]) d[q * n + k] = 1;
        return d;
    }

    /// <summary>
    /// TransformerLens's <c>compute_head_attention_similarity_score</c> for one head on one sequence.
    /// <c>Mul</c>: <c>Σ A⊙D / Σ A</c> (Σ A = seq_len when every row sums to one). <c>Abs</c>:
    /// <c>1 − Σ|A − D| / seq_len</c>, i.e. one minus the mean L1 distance of a row; TransformerLens also rounds that
    /// distance to 3 decimals, which is not done here. <paramref name="excludeBos"/> zeroes column 0 (of A for
    /// <c>Mul</c>, of the difference for <c>Abs</c>), <paramref name="excludeCurrentToken"/> the diagonal.
    /// </summary>
    /// <param name="pattern">The head's attention <c>[q, k]</c>, row-major, seq_len × seq_len.</param>
    /// <param name="detection">A detection pattern of the same shape (see <see cref="For"/>).</param>
    /// <param name="measure">How the two are compared.</param>
    /// <param name="excludeBos">Leave out attention to position 0.</param>
    /// <param name="excludeCurrentToken">Leave out attention from each position to itself.</param>
    /// <returns>The score; NaN for <c>Mul</c> when no attention is left to compare.</returns>
    /// <exception cref="ArgumentException">The two are not the same square shape.</exception>
    public static double Similarity(ReadOnlySpan<float> pattern, ReadOnlySpan<float> detection, ErrorMeasure measure,
        bool excludeBos = false, bool excludeCurrentToken = false)
    {
        int n = (int)Math.Round(Math.Sqrt(pattern.Length));
        if (n * n != pattern.Length || detection.Length != pattern.Length)
            throw new ArgumentException($"an attention pattern of {pattern.Length} values and a detection pattern of {detection.Length} are not the same square [q, k] matrix");
        double matched = 0, total = 0, distance = 0;
        for (int q = 0; q < n; q++)
            for (int k = 0; k < n; k++)
            {
                if ((excludeBos && k == 0) || (excludeCurrentToken && k == q)) continue;
                double a = pattern[q * n + k], d = detection[q * n + k];
                matched += a * d;
                total += a;
                distance += Math.Abs(a - d);
            }
        return measure == ErrorMeasure.Mul ? matched / total : 1 - distance / n;
    }
}

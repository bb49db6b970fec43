using Loupe.Models;

namespace Loupe.Circuits.Weights;

/// <summary>What residual stream the positional patterns are computed on.</summary>
public enum PositionalMode
{
    /// <summary>Each layer's ln1 reads W_pos alone, as if the token embedding and earlier layers wrote nothing.</summary>
    LayerAlone,
    /// <summary>
    /// The residual starts as W_pos (token embedding zero) and every attention layer's output (all heads,
    /// b_V and b_O included) is added to it; MLPs are skipped (a partial checkpoint may not have them).
    /// Later heads then see positions as earlier heads pass them on.
    /// </summary>
    ThroughAttention,
}

/// <summary>
/// Each head's attention pattern from learned position embeddings alone. Steps: (1) the residual for
/// positions 0 … P − 1 is W_pos (see <see cref="PositionalMode"/> for what is added layer by layer);
/// (2) per layer ln1 is applied and per head <c>q_p = ln1(r_p)·W_Q + b_Q</c>, <c>k_p = ln1(r_p)·W_K + b_K</c>;
/// (3) the causal softmax over keys of <c>q·kᵀ/√d_head</c>; (4) the previous-token score = mean over
/// queries q ≥ 1 of the attention on q − 1. Scores are <c>[layer, head]</c>. A shortformer model's positions never enter the
/// stream: the residual starts at zero (ln1 of it is ln1's bias), and W_pos is added to ln1's output for the queries and keys.
/// </summary>
public sealed class PositionalAttention
{
    PositionalAttention(int nLayers, int nHeads, int positions, PositionalMode mode, double[] previousToken, double[] previousAmongEarlier)
    {
        NLayers = nLayers; NHeads = nHeads; Positions = positions; Mode = mode;
        PreviousTokenScores = previousToken; PreviousAmongEarlierScores = previousAmongEarlier;
    }

    public int NLayers { get; }
    public int NHeads { get; }
    /// <summary>How many positions (0 … Positions − 1) the patterns cover.</summary>
    public int Positions { get; }
    public PositionalMode Mode { get; }
    /// <summary>Mean attention on the previous position, <c>[layer, head]</c>.</summary>
    public double[] PreviousTokenScores { get; }

    /// <summary>
    /// The same with the query's own position left out (softmax over keys j &lt; q): with no token embedding
    /// a position's query and key come from one vector, and adjacent W_pos rows are nearly parallel, so
    /// attention to self swamps the previous-position signal a real token stream would separate.
    /// </summary>
    public double[] PreviousAmongEarlierScores { get; }

    /// <summary>Each head's pattern <c>[layer·head][query_pos·P + key_pos]</c>, when asked for.</summary>
    public double[][]? Patterns { get; private init; }

    public double PreviousToken(int layer, int head) => PreviousTokenScores[layer * NHeads + head];
    public double PreviousAmongEarlier(int layer, int head) => PreviousAmongEarlierScores[layer * NHeads + head];

    /// <summary>How the residual and ln1 are treated, for reports.</summary>
    public static string Describe(PositionalMode mode) => mode == PositionalMode.LayerAlone
        ? "each layer's ln1 applied to W_pos rows as if the token embedding and earlier layers' outputs were zero"
        : "residual = W_pos (token embedding zero) plus every earlier attention layer's output on it (MLPs skipped); each layer's ln1 applied to that";

    /// <summary>Previous-token scores for every head over the first <paramref name="positions"/> positions.</summary>
    /// <param name="w">The heads' weights, with learned positions.</param>
    /// <param name="positions">Positions to cover (at most n_ctx).</param>
    /// <param name="mode">What residual stream the patterns read.</param>
    /// <param name="keepPatterns">Keep every head's pattern in <see cref="Patterns"/>.</param>
    /// <exception cref="InputError">The weights have no learned positions (rotary or absent).</exception>
    public static PositionalAttention Compute(AttentionWeights w, int positions = 128, PositionalMode mode = PositionalMode.ThroughAttention, bool keepPatterns = false)
    {
        var pos = w.Positions ?? throw new InputError($"{w.Source}: positional attention needs learned position embeddings (wpe / W_pos); this model has none");
        int P = Math.Min(positions, w.NCtx), L = w.NLayers, H = w.NHeads, D = w.DModel;
        var scores = new double[L * H];
        var earlier = new double[L * H];
        var patterns = keepPatterns ? new double[L * H][] : null;
        var positionRows = Array.ConvertAll(pos[..(P * D)], x => (double)x);
        var resid = w.Shortformer ? new double[P * D] : (double[])positionRows.Clone(); // [pos, d_model]
        for (int l = 0; l < L; l++)
        {
            var input = mode == PositionalMode.LayerAlone ? (w.Shortformer ? new double[P * D] : positionRows) : resid;
            var normed = Ln1(w, l, input, P);
            var queryKey = QueryKeyInput(w, normed, positionRows);
            var outputs = new double[H][];
            Parallel.For(0, H, h =>
            {
                var pattern = Pattern(w, l, h, queryKey, P);
                if (patterns is not null) patterns[l * H + h] = pattern;
                double sum = 0, sumEarlier = 0;
                for (int q = 1; q < P; q++)
                {
                    sum += pattern[q * P + q - 1];
                    double rest = 1 - pattern[q * P + q];
                    sumEarlier += rest <= 0 ? 0 : pattern[q * P + q - 1] / rest;
                }
                scores[l * H + h] = sum / (P - 1);
                earlier[l * H + h] = sumEarlier / (P - 1);
                if (mode == PositionalMode.ThroughAttention) outputs[h] = HeadOutput(w, l, h, normed, pattern, P);
            });
            if (mode == PositionalMode.ThroughAttention)
                for (int p = 0; p < P; p++)
                    for (int d = 0; d < D; d++)
                    {
                        double add = w.BO[l][d];
                        for (int h = 0; h < H; h++) add += outputs[h][p * D + d];
                        resid[p * D + d] += add;
                    }
        }
        return new PositionalAttention(L, H, P, mode, scores, earlier) { Patterns = patterns };
    }

    /// <summary>ln1 of layer <paramref name="layer"/> on each row of <c>x [pos, d_model]</c>.</summary>
    static double[] Ln1(AttentionWeights w, int layer, double[] x, int P)
    {
        int D = w.DModel;
        var normed = new double[P * D];
        var gamma = w.Ln1Weight[layer];
        var beta = w.Ln1Bias[layer];
        bool centre = w.NormKind == NormKind.LayerNorm;
        for (int p = 0; p < P; p++)
        {
            var row = x.AsSpan(p * D, D);
            double mean = 0;
            if (centre) { foreach (double v in row) mean += v; mean /= D; }
            double variance = 0;
            foreach (double v in row) variance += (v - mean) * (v - mean);
            double scale = w.NormKind == NormKind.None ? 1 : 1 / Math.Sqrt(variance / D + w.NormEps);
            for (int d = 0; d < D; d++) normed[p * D + d] = (row[d] - mean) * scale * gamma[d] + beta[d];
        }
        return normed;
    }

    /// <summary>The causal pattern <c>[query_pos, key_pos]</c> of one head reading <c>normed [pos, d_model]</c>.</summary>
    static double[] Pattern(AttentionWeights w, int layer, int head, double[] normed, int P)
    {
        int D = w.DModel, E = w.DHead;
        var q = Project(normed, P, D, E, w.WQ[layer][head], w.BQ[layer][head]);
        var k = Project(normed, P, D, E, w.WK[layer][head], w.BK[layer][head]);
        var pattern = new double[P * P];
        double invSqrt = 1 / Math.Sqrt(E);
        for (int i = 0; i < P; i++)
        {
            double max = double.NegativeInfinity;
            for (int j = 0; j <= i; j++)
            {
                double s = 0;
                for (int e = 0; e < E; e++) s += q[i * E + e] * k[j * E + e];
                pattern[i * P + j] = s * invSqrt;
                max = Math.Max(max, s * invSqrt);
            }
            double total = 0;
            for (int j = 0; j <= i; j++) total += pattern[i * P + j] = Math.Exp(pattern[i * P + j] - max);
            for (int j = 0; j <= i; j++) pattern[i * P + j] /= total;
        }
        return pattern;
    }

    /// <summary>One head's output <c>[pos, d_model]</c> = pattern·(ln1(r)·W_V + b_V)·W_O.</summary>
    static double[] HeadOutput(AttentionWeights w, int layer, int head, double[] normed, double[] pattern, int P)
    {
        int D = w.DModel, E = w.DHead;
        var v = Project(normed, P, D, E, w.WV[layer][head], w.BV[layer][head]);
        var z = new double[P * E];
        for (int i = 0; i < P; i++)
            for (int j = 0; j <= i; j++)
            {
                double a = pattern[i * P + j];
                for (int e = 0; e < E; e++) z[i * E + e] += a * v[j * E + e];
            }
        var wo = w.WO[layer][head];
        var output = new double[P * D];
        for (int i = 0; i < P; i++)
            for (int e = 0; e < E; e++)
            {
                double ze = z[i * E + e];
                for (int d = 0; d < D; d++) output[i * D + d] += ze * wo[e * D + d];
            }
        return output;
    }

    /// <summary>The pattern <c>[query_pos, key_pos]</c> of one head over <paramref name="positions"/> positions, in <see cref="PositionalMode.LayerAlone"/> mode.</summary>
    public static double[] PatternAlone(AttentionWeights w, int layer, int head, int positions)
    {
        var pos = w.Positions ?? throw new InputError($"{w.Source}: no learned position embeddings");
        int P = Math.Min(positions, w.NCtx);
        var positionRows = Array.ConvertAll(pos[..(P * w.DModel)], x => (double)x);
        var normed = Ln1(w, layer, w.Shortformer ? new double[positionRows.Length] : positionRows, P);
        return Pattern(w, layer, head, QueryKeyInput(w, normed, positionRows), P);
    }

    /// <summary>What queries and keys read: ln1's output, plus the positions for a shortformer.</summary>
    static double[] QueryKeyInput(AttentionWeights w, double[] normed, double[] positionRows)
    {
        if (!w.Shortformer) return normed;
        var sum = new double[normed.Length];
        for (int i = 0; i < sum.Length; i++) sum[i] = normed[i] + positionRows[i];
        return sum;
    }

    static double[] Project(double[] x, int rows, int dModel, int dHead, float[] weight, float[] bias)
    {
        var y = new double[rows * dHead];
        for (int r = 0; r < rows; r++)
            for (int e = 0; e < dHead; e++)
            {
                double s = bias[e];
                for (int d = 0; d < dModel; d++) s += x[r * dModel + d] * weight[d * dHead + e];
                y[r * dHead + e] = s;
            }
        return y;
    }
}

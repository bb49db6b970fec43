using Loupe.Tensors.Kernels;

namespace Loupe.Circuits.Weights;

/// <summary>Which input of the later head reads the earlier head's output.</summary>
public enum CompositionKind { Q, K, V }

/// <summary>
/// Composition scores between every pair of heads (Elhage et al. 2021, "A Mathematical Framework for
/// Transformer Circuits"), as TransformerLens's <c>all_composition_scores</c> with row-vector weights:
///   Q: ‖W_OV^A·W_QK^B‖_F / (‖W_OV^A‖_F‖W_QK^B‖_F)     (A's output read by B's queries)
///   K: ‖W_OV^A·W_QK^Bᵀ‖_F / (‖W_OV^A‖_F‖W_QK^B‖_F)    (… by B's keys)
///   V: ‖W_OV^A·W_OV^B‖_F / (‖W_OV^A‖_F‖W_OV^B‖_F)     (… by B's values)
/// with W_QK = W_Q·W_Kᵀ and W_OV = W_V·W_O, both <c>[d_model, d_model]</c>. (The paper writes column
/// vectors, <c>W_QKᵀ·W_OV</c> etc.; these are the same norms.) Scores lie in [0, 1]; each table is
/// <c>[src_layer, src_head, dst_layer, dst_head]</c>, zero unless src_layer &lt; dst_layer.
/// </summary>
public sealed class CompositionScores
{
    CompositionScores(int nLayers, int nHeads, double[] q, double[] k, double[] v, IReadOnlyList<string> processing)
    {
        NLayers = nLayers; NHeads = nHeads; QScores = q; KScores = k; VScores = v; Processing = processing;
    }

    public int NLayers { get; }
    public int NHeads { get; }
    /// <summary>Q-composition, flattened <c>[src_layer, src_head, dst_layer, dst_head]</c>.</summary>
    public double[] QScores { get; }
    public double[] KScores { get; }
    public double[] VScores { get; }
    /// <summary>The weight processing the scores were computed on (e.g. fold_ln, center_writing_weights).</summary>
    public IReadOnlyList<string> Processing { get; }

    public double[] Of(CompositionKind kind) => kind switch { CompositionKind.Q => QScores, CompositionKind.K => KScores, _ => VScores };

    public double Get(CompositionKind kind, int srcLayer, int srcHead, int dstLayer, int dstHead) =>
        Of(kind)[((srcLayer * NHeads + srcHead) * NLayers + dstLayer) * NHeads + dstHead];

    /// <summary>One score, the slow obvious way: <c>‖left·right‖_F / (‖left‖_F‖right‖_F)</c> (TransformerLens's <c>composition_scores</c>).</summary>
    public static double Score(FactoredMatrix left, FactoredMatrix right) =>
        (left * right).FrobeniusNorm() / (left.FrobeniusNorm() * right.FrobeniusNorm());

    /// <summary>
    /// All three tables. Steps: (1) per head, thin-QR whitening in fp64 so each score's numerator is the
    /// Frobenius norm of a d_head×d_head product: with <c>W_V = Q_V·R_V</c>, <c>‖W_OV^A·X‖ = ‖(R_V·W_O)^A·X‖</c>,
    /// and for the destination <c>W_QK^B = (W_Q·R_Kᵀ)·Q_Kᵀ</c>, <c>W_QK^Bᵀ = (W_K·R_Qᵀ)·Q_Qᵀ</c>,
    /// <c>W_OV^B = (W_V·R_Oᵀ)·Q_Oᵀ</c> (QR of W_Oᵀ) — orthonormal factors do not change Frobenius norms;
    /// (2) per destination layer one fp32 GEMM of every earlier head's <c>R_V·W_O [d_head, d_model]</c> against
    /// the layer's three <c>[d_model, d_head]</c> factors per head; (3) fp64 Frobenius norms of the
    /// d_head×d_head blocks, divided by the two norms.
    /// </summary>
    /// <exception cref="ArgumentException">d_model &lt; d_head (the thin QR needs a tall factor).</exception>
    public static CompositionScores Compute(AttentionWeights w)
    {
        int L = w.NLayers, H = w.NHeads, D = w.DModel, E = w.DHead;
        if (D < E) throw new ArgumentException($"composition scores need d_model ≥ d_head; found {D} < {E}");
        int heads = L * H;
        var source = new float[(long)heads * E * D];        // [layer·head·d_head, d_model]: R_V·W_O
        var sourceNorm = new double[heads];
        var targets = new float[L][];                         // per layer [d_model, kind·head·d_head]
        for (int l = 0; l < L; l++) targets[l] = new float[D * 3 * H * E];
        var targetNorm = new double[3 * heads];               // [kind, layer·head]
        Parallel.For(0, heads, i =>
        {
            int l = i / H, h = i % H;
            var wq = AttentionWeights.ToDouble(w.WQ[l][h]);
            var wk = AttentionWeights.ToDouble(w.WK[l][h]);
            var wv = AttentionWeights.ToDouble(w.WV[l][h]);
            var wo = AttentionWeights.ToDouble(w.WO[l][h]);
            var rv = SmallLinearAlgebra.HouseholderR(wv, D, E);
            var whitenedO = SmallLinearAlgebra.Multiply(rv, wo, E, E, D);   // [d_head, d_model]
            sourceNorm[i] = Norm(whitenedO);
            for (int j = 0; j < whitenedO.Length; j++) source[(long)i * E * D + j] = (float)whitenedO[j];
            var rk = SmallLinearAlgebra.HouseholderR(wk, D, E);
            var rq = SmallLinearAlgebra.HouseholderR(wq, D, E);
            var ro = SmallLinearAlgebra.HouseholderR(SmallLinearAlgebra.Transpose(wo, E, D), D, E);
            var forQ = SmallLinearAlgebra.Multiply(wq, rk, D, E, E, transB: true);  // W_Q·R_Kᵀ
            var forK = SmallLinearAlgebra.Multiply(wk, rq, D, E, E, transB: true);  // W_K·R_Qᵀ
            var forV = SmallLinearAlgebra.Multiply(wv, ro, D, E, E, transB: true);  // W_V·R_Oᵀ
            targetNorm[i] = Norm(forQ); targetNorm[heads + i] = Norm(forK); targetNorm[2 * heads + i] = Norm(forV);
            var t = targets[l];
            int width = 3 * H * E;
            double[][] factors = [forQ, forK, forV];
            for (int kind = 0; kind < 3; kind++)
                for (int d = 0; d < D; d++)
                    for (int e = 0; e < E; e++) t[d * width + (kind * H + h) * E + e] = (float)factors[kind][d * E + e];
        });

        var scores = new double[3][];
        for (int kind = 0; kind < 3; kind++) scores[kind] = new double[heads * heads];
        for (int l2 = 1; l2 < L; l2++)
        {
            int rows = l2 * H * E, width = 3 * H * E;
            var products = new float[(long)rows * width];  // [src layer·head·d_head, kind·dst head·d_head]
            Gemm.Sgemm(false, false, rows, width, D, 1f, source.AsSpan(0, rows * D), D, targets[l2], width, 0f, products, width);
            Parallel.For(0, l2 * H, src =>
            {
                for (int kind = 0; kind < 3; kind++)
                    for (int h2 = 0; h2 < H; h2++)
                    {
                        double sum = 0;
                        for (int r = 0; r < E; r++)
                        {
                            var row = products.AsSpan((src * E + r) * width + (kind * H + h2) * E, E);
                            foreach (float x in row) sum += (double)x * x;
                        }
                        int dst = l2 * H + h2;
                        double denominator = sourceNorm[src] * targetNorm[kind * heads + dst];
                        scores[kind][src * heads + dst] = denominator == 0 ? 0 : Math.Min(1, Math.Sqrt(sum) / denominator);
                    }
            });
        }
        return new CompositionScores(L, H, scores[0], scores[1], scores[2], w.Processing);
    }

    static double Norm(double[] x)
    {
        double s = 0;
        foreach (double v in x) s += v * v;
        return Math.Sqrt(s);
    }

    /// <summary>The strongest partners of head (layer, head) in later layers, best first.</summary>
    public IReadOnlyList<(int Layer, int Head, double Score)> TopPartners(CompositionKind kind, int layer, int head, int count)
    {
        var table = Of(kind);
        var partners = new List<(int, int, double)>();
        for (int l2 = layer + 1; l2 < NLayers; l2++)
            for (int h2 = 0; h2 < NHeads; h2++) partners.Add((l2, h2, table[((layer * NHeads + head) * NLayers + l2) * NHeads + h2]));
        return [.. partners.OrderByDescending(p => p.Item3).Take(count)];
    }
}

using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Weights;

/// <summary>
/// Full OV and QK circuits through embed and unembed: rows of the factored product equal the explicitly
/// multiplied four-matrix chain, and on the real induction model the heads the fixture README identifies
/// as induction heads from their attention (L1H1–3) are the ones whose full OV circuit copies tokens.
/// </summary>
public class FullCircuitsTests
{
    [Fact]
    public void RowsEqualTheExplicitChainOfProducts()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var w = AttentionWeights.FromModel(model);
        var embedding = FullCircuits.Embedding(model)!;
        int V = model.Config.DVocab, D = w.DModel, E = w.DHead;
        var unembed = model.UnembedLayer;
        var u = unembed.Weight.Span.ToArray();
        var ov = FullCircuits.OV(w, 1, 2, embedding, u, V, unembed.WeightIsOutIn);
        var qk = FullCircuits.QK(w, 1, 2, embedding, V);
        foreach (int t in new[] { 0, 17, V - 1 })
        {
            // Explicit: x = W_E[t]; (x·W_V)·W_O·W_U and (x·W_Q)·(W_E·W_K)ᵀ.
            var v = new double[E];
            var q = new double[E];
            for (int e = 0; e < E; e++)
                for (int d = 0; d < D; d++) { v[e] += embedding[t * D + d] * w.WV[1][2][d * E + e]; q[e] += embedding[t * D + d] * w.WQ[1][2][d * E + e]; }
            var written = new double[D];
            for (int d = 0; d < D; d++)
                for (int e = 0; e < E; e++) written[d] += v[e] * w.WO[1][2][e * D + d];
            var ovRow = ov.Row(t);
            var qkRow = qk.Row(t);
            for (int o = 0; o < V; o += 37)
            {
                double logit = 0, score = 0;
                for (int d = 0; d < D; d++) logit += written[d] * (unembed.WeightIsOutIn ? u[o * D + d] : u[d * V + o]);
                for (int e = 0; e < E; e++)
                {
                    double k = 0;
                    for (int d = 0; d < D; d++) k += embedding[o * D + d] * w.WK[1][2][d * E + e];
                    score += q[e] * k;
                }
                Assert.InRange(ovRow[o], logit - 1e-6 * (1 + Math.Abs(logit)), logit + 1e-6 * (1 + Math.Abs(logit)));
                Assert.InRange(qkRow[o], score - 1e-6 * (1 + Math.Abs(score)), score + 1e-6 * (1 + Math.Abs(score)));
            }
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => ov.Row(V));
    }

    [RequiresSharedFact("models/induction-attn-only-2l")]
    public void InductionHeadsFullOvCircuitsCopy()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/induction-attn-only-2l"));
        var w = AttentionWeights.FromModel(model).FoldLayerNorm(centerWriting: false);
        var embedding = FullCircuits.Embedding(model)!;
        var unembed = model.UnembedLayer;
        int V = model.Config.DVocab;
        DiagonalScore Ov(int l, int h) => FullCircuits.Diagonal(FullCircuits.OV(w, l, h, embedding, unembed.Weight.Span, V, unembed.WeightIsOutIn), l, h);
        foreach (int h in new[] { 1, 2, 3 }) Assert.True(Ov(1, h).Top1 > 0.8, $"L1H{h} copies: OV top-1 {Ov(1, h).Top1:P1}");
        foreach (int h in new[] { 0, 1, 3 }) Assert.True(Ov(0, h).Top1 < 0.1, $"L0H{h} does not copy: OV top-1 {Ov(0, h).Top1:P1}");
    }
}

using System.Numerics;
using Loupe.Models;
using Loupe.Tensors.Kernels;

namespace Loupe.Circuits.Weights;

/// <summary>
/// OV copying scores (Elhage et al. 2021): for each head the full OV circuit <c>W_E·W_OV·W_U [d_vocab, d_vocab]</c>
/// (no norms, as TransformerLens's <c>OV</c> circuit), scored as <c>Σ Re λ / Σ |λ|</c> over its eigenvalues —
/// near 1 for a head that copies the token it attends to. Steps: (1) <c>M = W_U·W_E [d_model, d_model]</c>
/// once (one fp32 GEMM over the vocabulary); (2) per head the nonzero eigenvalues of <c>W_E·W_V·W_O·W_U</c>
/// are those of <c>W_O·M·W_V [d_head, d_head]</c> (cyclic shift, as <see cref="FactoredMatrix.Eigenvalues"/>);
/// (3) the ratio. Scores are <c>[layer, head]</c>.
/// </summary>
public static class OvCopying
{
    /// <summary>Copying scores from explicit embeddings.</summary>
    /// <param name="w">The heads (W_V, W_O used as they are).</param>
    /// <param name="embedding">W_E, row-major <c>[d_vocab, d_model]</c>.</param>
    /// <param name="unembedding">W_U as stored: <c>[d_model, d_vocab]</c>, or <c>[d_vocab, d_model]</c> when <paramref name="unembeddingIsVocabFirst"/>.</param>
    /// <param name="vocab">d_vocab (rows of W_E = columns of W_U).</param>
    /// <param name="unembeddingIsVocabFirst">Whether W_U is stored <c>[d_vocab, d_model]</c> (nn.Linear, tied embeddings).</param>
    public static double[] Compute(AttentionWeights w, ReadOnlySpan<float> embedding, ReadOnlySpan<float> unembedding, int vocab, bool unembeddingIsVocabFirst) =>
        [.. Eigenvalues(w, embedding, unembedding, vocab, unembeddingIsVocabFirst).Select(Score)];

    /// <summary>Per head <c>[layer·head]</c> the d_head eigenvalues of <c>W_O·W_U·W_E·W_V</c> (the nonzero ones of the full OV circuit).</summary>
    internal static Complex[][] Eigenvalues(AttentionWeights w, ReadOnlySpan<float> embedding, ReadOnlySpan<float> unembedding, int vocab, bool unembeddingIsVocabFirst)
    {
        int D = w.DModel, E = w.DHead, H = w.NHeads;
        var m = new float[D * D]; // W_U·W_E [d_model, d_model]
        Gemm.Sgemm(unembeddingIsVocabFirst, false, D, D, vocab, 1f, unembedding, unembeddingIsVocabFirst ? D : vocab, embedding, D, 0f, m, D);
        var eigen = new Complex[w.NLayers * H][];
        for (int l = 0; l < w.NLayers; l++)
        {
            var wv = new float[D * H * E]; // [d_model, head·d_head]
            for (int h = 0; h < H; h++)
                for (int d = 0; d < D; d++) w.WV[l][h].AsSpan(d * E, E).CopyTo(wv.AsSpan(d * H * E + h * E, E));
            var mv = new float[D * H * E]; // M·W_V for every head of the layer
            Gemm.Sgemm(false, false, D, H * E, D, 1f, m, D, wv, H * E, 0f, mv, H * E);
            int layer = l;
            Parallel.For(0, H, h =>
            {
                var small = new double[E * E]; // W_O·M·W_V [d_head, d_head]
                var wo = w.WO[layer][h];
                for (int i = 0; i < E; i++)
                    for (int d = 0; d < D; d++)
                    {
                        double o = wo[i * D + d];
                        if (o == 0) continue;
                        for (int j = 0; j < E; j++) small[i * E + j] += o * mv[d * H * E + h * E + j];
                    }
                eigen[layer * H + h] = SmallLinearAlgebra.Eigenvalues(small, E);
            });
        }
        return eigen;
    }

    /// <summary><c>Σ Re λ / Σ |λ|</c> (0 when every eigenvalue is 0).</summary>
    public static double Score(IEnumerable<Complex> eigenvalues)
    {
        double real = 0, abs = 0;
        foreach (var l in eigenvalues) { real += l.Real; abs += Complex.Abs(l); }
        return abs == 0 ? 0 : real / abs;
    }

    /// <summary>
    /// Copying scores of a loaded model: W_U from its unembedding, W_E read from the model folder's
    /// safetensors (<c>wte</c>, <c>embed_tokens</c>, <c>embed_in</c> or <c>W_E</c>), since the model does not expose it.
    /// Returns null when no token embedding is found there.
    /// </summary>
    public static double[]? Compute(HookedTransformer model, AttentionWeights w)
    {
        var unembed = model.UnembedLayer;
        if (model.Config.VocabOut != model.Config.DVocab || FullCircuits.Embedding(model) is not { } embedding) return null;
        // Linear stores [d_in, d_out] = [d_model, d_vocab] unless WeightIsOutIn ([d_vocab, d_model]).
        return Compute(w, embedding, unembed.Weight.Span, model.Config.DVocab, unembed.WeightIsOutIn);
    }
}

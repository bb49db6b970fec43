using Loupe.Models;
using Loupe.Models.Loading;

namespace Loupe.Circuits.Weights;

/// <summary>How strongly a head's full circuit favours the diagonal (token → the same token).</summary>
/// <param name="Layer">The head's layer.</param>
/// <param name="Head">The head.</param>
/// <param name="Top1">Share of tokens whose row's largest entry is on the diagonal (the OV circuit predicts the token it attends to; the QK circuit attends most to its own token).</param>
/// <param name="Top5">Share of tokens whose diagonal entry is among the row's five largest.</param>
/// <param name="MeanDiagonalRank">Mean rank of the diagonal entry within its row (0 = largest).</param>
public sealed record DiagonalScore(int Layer, int Head, double Top1, double Top5, double MeanDiagonalRank);

/// <summary>
/// Full circuits through the embedding and unembedding (Elhage et al. 2021), kept factored as TransformerLens's
/// <c>model.OV</c>/<c>model.QK</c> with embed and unembed: the OV circuit <c>W_E·W_V·W_O·W_U [d_vocab, d_vocab]</c>
/// (row = the token attended to, column = the logit it moves) and the QK circuit <c>W_E·W_Q·W_Kᵀ·W_Eᵀ</c>
/// (row = the query token, column = the key token). Both are rank ≤ d_head products; rows are computed one at a
/// time, never the whole d_vocab² matrix. No norms are applied (as TransformerLens's, after fold_ln the norms' weights
/// are in the matrices; here pass weights from <see cref="AttentionWeights.FoldLayerNorm"/> for that).
/// </summary>
public static class FullCircuits
{
    /// <summary><c>W_E·W_V[h]·W_O[h]·W_U</c>, factored as <c>(W_E·W_V) [d_vocab, d_head] · (W_O·W_U) [d_head, d_vocab]</c>.</summary>
    /// <param name="w">The heads.</param>
    /// <param name="layer">The head's layer.</param>
    /// <param name="head">The head.</param>
    /// <param name="embedding">W_E, row-major <c>[d_vocab, d_model]</c>.</param>
    /// <param name="unembedding">W_U as stored: <c>[d_model, d_vocab]</c>, or <c>[d_vocab, d_model]</c> when <paramref name="unembeddingIsVocabFirst"/>.</param>
    /// <param name="vocab">d_vocab.</param>
    /// <param name="unembeddingIsVocabFirst">Whether W_U is stored <c>[d_vocab, d_model]</c> (nn.Linear, tied embeddings).</param>
    public static FactoredMatrix OV(AttentionWeights w, int layer, int head, ReadOnlySpan<float> embedding, ReadOnlySpan<float> unembedding, int vocab, bool unembeddingIsVocabFirst)
    {
        int D = w.DModel, E = w.DHead;
        Check(w, layer, head, embedding, vocab);
        var left = Multiply(embedding, vocab, D, w.WV[layer][head], E); // [V, E]
        var wo = w.WO[layer][head]; // [E, D]
        var right = new double[E * vocab]; // W_O·W_U [E, V]
        for (int e = 0; e < E; e++)
            for (int d = 0; d < D; d++)
            {
                double o = wo[e * D + d];
                if (o == 0) continue;
                var row = right.AsSpan(e * vocab, vocab);
                if (unembeddingIsVocabFirst)
                    for (int v = 0; v < vocab; v++) row[v] += o * unembedding[v * D + d];
                else
                {
                    var u = unembedding.Slice(d * vocab, vocab);
                    for (int v = 0; v < vocab; v++) row[v] += o * u[v];
                }
            }
        return new FactoredMatrix(left, right, vocab, E, vocab);
    }

    /// <summary><c>W_E·W_Q[h]·W_K[h]ᵀ·W_Eᵀ</c>, factored as <c>(W_E·W_Q) [d_vocab, d_head] · (W_E·W_K)ᵀ [d_head, d_vocab]</c>.</summary>
    /// <param name="w">The heads.</param>
    /// <param name="layer">The head's layer.</param>
    /// <param name="head">The head.</param>
    /// <param name="embedding">W_E, row-major <c>[d_vocab, d_model]</c>.</param>
    /// <param name="vocab">d_vocab.</param>
    public static FactoredMatrix QK(AttentionWeights w, int layer, int head, ReadOnlySpan<float> embedding, int vocab)
    {
        int D = w.DModel, E = w.DHead;
        Check(w, layer, head, embedding, vocab);
        var q = Multiply(embedding, vocab, D, w.WQ[layer][head], E);
        var k = Multiply(embedding, vocab, D, w.WK[layer][head], E);
        return new FactoredMatrix(q, SmallLinearAlgebra.Transpose(k, vocab, E), vocab, E, vocab);
    }

    /// <summary>Diagonal statistics of a square full circuit over its first <paramref name="tokens"/> rows (all when null).</summary>
    /// <exception cref="ArgumentException">The matrix is not square.</exception>
    public static DiagonalScore Diagonal(FactoredMatrix m, int layer, int head, int? tokens = null)
    {
        if (m.Rows != m.Cols) throw new ArgumentException($"a diagonal score needs a square matrix; this one is {m.Rows}×{m.Cols}", nameof(m));
        int n = Math.Min(tokens ?? m.Rows, m.Rows);
        int top1 = 0, top5 = 0;
        double rankSum = 0;
        var ranks = new int[n];
        Parallel.For(0, n, t =>
        {
            var row = m.Row(t);
            double own = row[t];
            int rank = 0;
            foreach (double x in row) if (x > own) rank++;
            ranks[t] = rank;
        });
        foreach (int rank in ranks)
        {
            if (rank == 0) top1++;
            if (rank < 5) top5++;
            rankSum += rank;
        }
        return new DiagonalScore(layer, head, (double)top1 / n, (double)top5 / n, rankSum / n);
    }

    /// <summary>
    /// The token embedding W_E of a loaded model, read from its folder's safetensors (<c>wte</c>, <c>embed_tokens</c>,
    /// <c>embed_in</c> or TransformerLens's <c>W_E</c>): null when the checkpoint has none.
    /// </summary>
    public static float[]? Embedding(HookedTransformer model)
    {
        if (model.Source is not { } folder || !Directory.Exists(folder)) return null;
        int V = model.Config.DVocab, D = model.Config.DModel;
        foreach (var file in Directory.GetFiles(folder, "*.safetensors").Order(StringComparer.Ordinal))
        {
            using var st = SafeTensorsFile.Open(file);
            var name = st.Names.FirstOrDefault(n =>
                (n.EndsWith("wte.weight", StringComparison.Ordinal) || n.EndsWith("embed_tokens.weight", StringComparison.Ordinal) ||
                 n.EndsWith("embed_in.weight", StringComparison.Ordinal) || n.EndsWith("W_E", StringComparison.Ordinal))
                && st.GetInfo(n).Shape is [var rows, var cols] && rows == V && cols == D);
            if (name is not null) return st.GetFloat32(name).ToArray();
        }
        return null;
    }

    static void Check(AttentionWeights w, int layer, int head, ReadOnlySpan<float> embedding, int vocab)
    {
        if ((uint)layer >= (uint)w.NLayers || (uint)head >= (uint)w.NHeads)
            throw new ArgumentOutOfRangeException(nameof(head), $"head L{layer}H{head} is outside {w.NLayers} layers × {w.NHeads} heads");
        if (embedding.Length != (long)vocab * w.DModel)
            throw new ArgumentException($"the embedding has {embedding.Length} values; d_vocab {vocab} × d_model {w.DModel} = {(long)vocab * w.DModel} expected", nameof(embedding));
    }

    /// <summary><c>X [rows, inner] · W [inner, cols]</c> in fp64.</summary>
    static double[] Multiply(ReadOnlySpan<float> x, int rows, int inner, float[] w, int cols)
    {
        var result = new double[rows * cols];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < inner; i++)
            {
                double a = x[r * inner + i];
                if (a == 0) continue;
                for (int c = 0; c < cols; c++) result[r * cols + c] += a * w[i * cols + c];
            }
        return result;
    }
}

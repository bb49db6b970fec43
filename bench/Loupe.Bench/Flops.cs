namespace Loupe.Bench;

/// <summary>
/// One matrix product the forward pass makes, as <see cref="Loupe.Tensors.Kernels.Gemm.Sgemm"/>
/// sees it: <c>C[m, n] = A[m, k] · op(B)</c>, row strides <c>lda, ldb, ldc</c>, made
/// <paramref name="Count"/> times per forward.
/// </summary>
/// <param name="Label">What the product is (qkv, scores, pattern·v, W_O, mlp in, mlp out, unembed).</param>
public sealed record GemmShape(string Label, int M, int N, int K, bool TransB, int Lda, int Ldb, int Ldc, long Count)
{
    public double Flops => 2.0 * M * N * K;
    public double TotalFlops => Flops * Count;

    /// <summary>A key that identifies the kernel call, so each distinct shape is timed once.</summary>
    public string Key => $"{M}x{N}x{K}{(TransB ? "T" : "N")}/{Lda},{Ldb},{Ldc}";

    public string ShapeText => $"[{M}×{K}]·[{K}×{N}]{(TransB ? "ᵀ" : "")}";
}

/// <summary>FLOP counts of a forward pass: the closed form and the list of products it is made of.</summary>
public static class Flops
{
    /// <summary>
    /// FLOPs of one forward pass over <paramref name="batch"/> rows of <paramref name="length"/> tokens,
    /// counting 2·m·n·k for every matrix product (one multiply and one add per term) and nothing else
    /// (norms, softmax, activations, bias and residual adds are O(rows·width) and left out):
    /// <code>
    /// N = batch·length                  rows of the residual stream
    /// per layer:
    ///   QKV projection     2·N·d_model·(3·d_model)
    ///   scores q·kᵀ        2·batch·n_heads·length·length·d_head   (the full T×T, masked half included)
    ///   pattern·v          2·batch·n_heads·length·length·d_head
    ///   output W_O         2·N·d_model·d_model
    ///   MLP in             2·N·d_model·d_mlp
    ///   MLP out            2·N·d_mlp·d_model
    /// unembedding          2·N·d_model·d_vocab                      (logits at every position)
    /// total = n_layers·(per layer) + unembedding
    /// </code>
    /// </summary>
    public static double Forward(BenchModel m, int batch, int length)
    {
        double N = (double)batch * length, D = m.DModel, T = length;
        double perLayer =
              2 * N * D * (3 * D)
            + 2 * batch * m.NHeads * T * T * m.DHead
            + 2 * batch * m.NHeads * T * T * m.DHead
            + 2 * N * D * D
            + 2 * N * D * m.DMlp
            + 2 * N * m.DMlp * D;
        double unembed = 2 * N * D * m.DVocab;
        return m.NLayers * perLayer + unembed;
    }

    /// <summary>
    /// The same products as <see cref="Forward"/>, with the shapes, transpositions and strides the
    /// model's kernels pass to Gemm.Sgemm (see Linear, AttentionLayer and Kernels/Attention.cs):
    /// Conv1D weights (GPT-2) are <c>[in, out]</c> (no transpose), nn.Linear weights (GPT-NeoX) and
    /// every unembedding are <c>[out, in]</c> (transposed B). Attention runs one product per
    /// (batch, head) on strided views of q/k/v <c>[batch, pos, head_index, d_head]</c>.
    /// </summary>
    public static IReadOnlyList<GemmShape> Products(BenchModel m, int batch, int length)
    {
        int N = batch * length, D = m.DModel, T = length, Hd = m.NHeads * m.DHead, L = m.NLayers;
        bool t = m.WeightsAreOutIn;
        GemmShape Linear(string label, int k, int n, long count) => new(label, N, n, k, t, k, t ? k : n, n, count);
        var list = new List<GemmShape>
        {
            Linear("qkv", D, 3 * D, L),
            new("scores q·kᵀ", T, T, m.DHead, true, Hd, Hd, T, (long)L * batch * m.NHeads),
            new("pattern·v", T, m.DHead, T, false, T, Hd, Hd, (long)L * batch * m.NHeads),
            Linear("W_O", Hd, D, L),
            Linear("mlp in", D, m.DMlp, L),
            Linear("mlp out", m.DMlp, D, L),
            new("unembed", N, m.DVocab, D, true, D, D, m.DVocab, 1),
        };
        double sum = list.Sum(p => p.TotalFlops), closed = Forward(m, batch, length);
        if (Math.Abs(sum - closed) > 1e-9 * closed)
            throw new InvalidOperationException($"FLOP formula ({closed:E6}) and product list ({sum:E6}) disagree for {m.Name}");
        return list;
    }
}

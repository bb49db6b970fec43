namespace Loupe.Tensors.Kernels;

// Shapes (TransformerLens axis names):
//   q        [batch, query_pos, head_index, d_head]
//   k, v     [batch, key_pos, kv_head_index, d_head]      kv heads = n_heads / group (grouped-query attention)
//   scores   [batch, head_index, query_pos, key_pos]      masked entries are −∞
//   pattern  [batch, head_index, query_pos, key_pos]
//   z        [batch, query_pos, head_index, d_head]

/// <summary>Which keys a query may see.</summary>
/// <param name="QueryOffset">Absolute position of query 0 among the keys (the KV-cache length; 0 without a cache).</param>
/// <param name="SlidingWindow">When &gt; 0, query at position i sees keys j with i − window &lt; j ≤ i.</param>
/// <param name="SoftCap">When &gt; 0, scores become <c>cap·tanh(s/cap)</c> before masking (Gemma 2).</param>
/// <param name="KeyValid">Optional <c>[batch, key_pos]</c>: false marks padding keys that no query sees.</param>
public readonly record struct AttentionMask(int QueryOffset = 0, int SlidingWindow = 0, float SoftCap = 0f, bool[]? KeyValid = null);

/// <summary>
/// Causal multi-head attention in three steps, so hooks can sit between them:
/// 1. <see cref="Scores"/>: <c>scale · q·kᵀ</c>, soft-cap, causal/window/padding mask to −∞.
/// 2. <see cref="Softmax.Rows"/> over key_pos gives the pattern.
/// 3. <see cref="ApplyPattern"/>: <c>z = pattern · v</c>.
/// Query head h reads kv head <c>h / (nHeads / nKvHeads)</c>.
/// </summary>
public static class Attention
{
    /// <summary>Step 1: masked attention scores <c>[batch, head, query_pos, key_pos]</c>.
    /// <paramref name="keyCapacity"/> &gt; 0 means k is a KV cache whose batch rows hold that many positions.</summary>
    public static void Scores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, int batch, int queryLen, int keyLen,
        int nHeads, int nKvHeads, int dHead, float scale, AttentionMask mask, Span<float> scores, int keyCapacity = 0)
    {
        int kvStride = (keyCapacity > 0 ? keyCapacity : keyLen) * nKvHeads * dHead;
        CheckHeads(nHeads, nKvHeads);
        CheckLen(q, (long)batch * queryLen * nHeads * dHead, "q");
        CheckLen(k, (long)(batch - 1) * kvStride + (long)keyLen * nKvHeads * dHead, "k");
        CheckLen(scores, (long)batch * nHeads * queryLen * keyLen, "scores");
        if (mask.KeyValid is { } kv && kv.Length < batch * keyLen)
            throw new ArgumentException($"key mask has {kv.Length} entries; expected {batch * keyLen}");
        int group = nHeads / nKvHeads;
        unsafe
        {
            fixed (float* pq = q) fixed (float* pk = k) fixed (float* ps = scores)
            {
                float* qq = pq, kk = pk, ss = ps;
                ForEachHead(batch * nHeads, (long)queryLen * keyLen * dHead, bh =>
                {
                    int b = bh / nHeads, h = bh % nHeads, kvh = h / group;
                    var qs = new ReadOnlySpan<float>(qq + ((long)b * queryLen * nHeads + h) * dHead, ((queryLen - 1) * nHeads + 1) * dHead);
                    var ks = new ReadOnlySpan<float>(kk + (long)b * kvStride + (long)kvh * dHead, ((keyLen - 1) * nKvHeads + 1) * dHead);
                    var sc = new Span<float>(ss + (long)bh * queryLen * keyLen, queryLen * keyLen);
                    Gemm.Sgemm(false, true, queryLen, keyLen, dHead, scale, qs, nHeads * dHead, ks, nKvHeads * dHead, 0f, sc, keyLen);
                    MaskRows(sc, b, queryLen, keyLen, mask);
                });
            }
        }
    }

    /// <summary>Applies soft-capping and the mask to one (batch, head) block of scores <c>[query_pos, key_pos]</c>.</summary>
    public static void MaskRows(Span<float> scores, int batchIndex, int queryLen, int keyLen, AttentionMask mask)
    {
        for (int i = 0; i < queryLen; i++)
        {
            var row = scores.Slice(i * keyLen, keyLen);
            if (mask.SoftCap > 0)
                for (int j = 0; j < keyLen; j++) row[j] = mask.SoftCap * MathF.Tanh(row[j] / mask.SoftCap);
            int qpos = mask.QueryOffset + i;
            int first = mask.SlidingWindow > 0 ? Math.Max(0, qpos - mask.SlidingWindow + 1) : 0;
            row[..Math.Min(first, keyLen)].Fill(float.NegativeInfinity);
            if (qpos + 1 < keyLen) row[(qpos + 1)..].Fill(float.NegativeInfinity);
            if (mask.KeyValid is { } valid)
                for (int j = 0; j < keyLen; j++)
                    if (!valid[batchIndex * keyLen + j]) row[j] = float.NegativeInfinity;
        }
    }

    /// <summary>Step 3: <c>z[b, q, h, :] = Σ_k pattern[b, h, q, k] · v[b, k, h/group, :]</c>.</summary>
    public static void ApplyPattern(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, int batch, int queryLen, int keyLen,
        int nHeads, int nKvHeads, int dHead, Span<float> z, int keyCapacity = 0)
    {
        int kvStride = (keyCapacity > 0 ? keyCapacity : keyLen) * nKvHeads * dHead;
        CheckHeads(nHeads, nKvHeads);
        CheckLen(pattern, (long)batch * nHeads * queryLen * keyLen, "pattern");
        CheckLen(v, (long)(batch - 1) * kvStride + (long)keyLen * nKvHeads * dHead, "v");
        CheckLen(z, (long)batch * queryLen * nHeads * dHead, "z");
        int group = nHeads / nKvHeads;
        unsafe
        {
            fixed (float* pp = pattern) fixed (float* pv = v) fixed (float* pz = z)
            {
                float* ppat = pp, vv = pv, zz = pz;
                ForEachHead(batch * nHeads, (long)queryLen * keyLen * dHead, bh =>
                {
                    int b = bh / nHeads, h = bh % nHeads, kvh = h / group;
                    var pat = new ReadOnlySpan<float>(ppat + (long)bh * queryLen * keyLen, queryLen * keyLen);
                    var vs = new ReadOnlySpan<float>(vv + (long)b * kvStride + (long)kvh * dHead, ((keyLen - 1) * nKvHeads + 1) * dHead);
                    var zs = new Span<float>(zz + ((long)b * queryLen * nHeads + h) * dHead, ((queryLen - 1) * nHeads + 1) * dHead);
                    Gemm.Sgemm(false, false, queryLen, dHead, keyLen, 1f, pat, keyLen, vs, nKvHeads * dHead, 0f, zs, nHeads * dHead);
                });
            }
        }
    }

    /// <summary>
    /// Runs one per-head product (of <paramref name="productSize"/> = m·n·k multiply-adds) per index. The managed GEMM has
    /// no thread pool, so there heads always run in parallel. OpenBLAS threads a product itself when m·n·k exceeds
    /// <see cref="BlasThreadsAbove"/>, and concurrent callers of such products fight its thread pool (measured: 10–40×
    /// slower), so those go one after another; below it OpenBLAS runs the product on the calling thread, and heads run
    /// in parallel (one after another they left every other core idle: a generation step, or a small model's heads).
    /// </summary>
    public static void ForEachHead(int count, long productSize, Action<int> body)
    {
        if (Gemm.UsesBlas && productSize > BlasThreadsAbove)
            for (int i = 0; i < count; i++) body(i);
        else
            Parallel.For(0, count, body);
    }

    /// <summary>
    /// The m·n·k up to which OpenBLAS computes a product on the calling thread (its interface/gemm.c: SMP_THRESHOLD_MIN ·
    /// GEMM_MULTITHREAD_THRESHOLD = 65,536 · 4).
    /// </summary>
    public const long BlasThreadsAbove = 65_536L * 4;

    static void CheckHeads(int nHeads, int nKvHeads)
    {
        if (nKvHeads <= 0 || nHeads % nKvHeads != 0)
            throw new ArgumentException($"{nHeads} query heads cannot be grouped over {nKvHeads} key/value heads");
    }

    static void CheckLen(ReadOnlySpan<float> s, long needed, string name)
    {
        if (s.Length < needed) throw new ArgumentException($"{name} has {s.Length} elements; {needed} are needed", name);
    }

    static void CheckLen(Span<float> s, long needed, string name) => CheckLen((ReadOnlySpan<float>)s, needed, name);
}

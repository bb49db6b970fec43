using Loupe.Tensors.Kernels;
using Loupe.Tensors.Kernels.Reference;

namespace Loupe.Tensors.Tests;

// Shapes (TransformerLens axis names):
//   q          [batch, query_pos, head_index, d_head]
//   k, v       [batch, key_capacity, kv_head_index, d_head]   only key_pos < key_len is meaningful (a KV cache)
//   scores     [batch, head_index, query_pos, key_pos]        hook_attn_scores
//   pattern    [batch, head_index, query_pos, key_pos]        hook_pattern
//   z          [batch, query_pos, head_index, d_head]         hook_z
//   key_valid  [batch, key_pos]

/// <summary>
/// <see cref="Attention.Scores"/> → <see cref="Softmax.Rows"/> → <see cref="Attention.ApplyPattern"/>
/// against <see cref="ReferenceKernels.Attention"/>, through both GEMM paths (they call <see cref="Gemm.Sgemm"/>
/// from parallel workers, so this also exercises BLAS called from several threads at once).
/// </summary>
[Collection(GemmPathCollection.Name)]
public class AttentionTests
{
    /// <summary>One attention problem. <paramref name="Capacity"/> 0 means k and v hold exactly key_len positions.</summary>
    public sealed record Case(int Batch, int QueryLen, int KeyLen, int NHeads, int NKvHeads, int DHead,
        AttentionMask Mask, int Capacity = 0, float Spread = 1f);

    static readonly Dictionary<string, Case> Cases = new()
    {
        ["mha"] = new(1, 7, 7, 4, 4, 16, new()),
        ["gqa 8 over 2"] = new(1, 9, 9, 8, 2, 8, new()),
        ["mqa 8 over 1"] = new(2, 6, 6, 8, 1, 8, new()),
        ["batch 3, gqa"] = new(3, 10, 10, 4, 2, 12, new()),
        ["sliding window 4"] = new(2, 12, 12, 4, 2, 8, new(SlidingWindow: 4)),
        // Raw scores of typically ±5, up to ~±20, so the cap of 5 really bends them.
        ["soft-cap 5"] = new(1, 8, 8, 2, 2, 16, new(SoftCap: 5f), Spread: 4f),
        // Batch 1 is left-padded by 3: its first three queries see no key at all.
        ["padding mask"] = new(2, 8, 8, 4, 2, 8, new(KeyValid: KeyValid(2, 8, [0, 3]))),
        ["offset without cache"] = new(1, 4, 9, 4, 2, 8, new(QueryOffset: 5)),
        ["kv cache"] = new(2, 3, 8, 4, 2, 8, new(QueryOffset: 5), Capacity: 16),
        ["decode step"] = new(2, 1, 20, 8, 2, 16, new(QueryOffset: 19), Capacity: 32),
        ["decode, window, soft-cap"] = new(1, 1, 30, 8, 4, 8, new(QueryOffset: 29, SlidingWindow: 8, SoftCap: 30f), Capacity: 40, Spread: 2f),
        ["cache, window, padding"] = new(3, 4, 12, 6, 3, 8, new(QueryOffset: 8, SlidingWindow: 6, KeyValid: KeyValid(3, 12, [0, 2, 5])), Capacity: 14),
    };

    public static TheoryData<string, string> CasesOnBothPaths()
    {
        var data = new TheoryData<string, string>();
        foreach (var name in Cases.Keys)
            foreach (var path in GemmPath.Both)
                data.Add(name, path);
        return data;
    }

    [Theory]
    [MemberData(nameof(CasesOnBothPaths))]
    public void MatchesReference(string name, string path)
    {
        var c = Cases[name];
        int capacity = c.Capacity > 0 ? c.Capacity : c.KeyLen;
        int kvRow = c.NKvHeads * c.DHead;
        float scale = 1f / MathF.Sqrt(c.DHead);
        var rng = new Random(name.Length * 7 + c.Batch * 31 + c.KeyLen);
        var q = TestRandom.Uniform(rng, c.Batch * c.QueryLen * c.NHeads * c.DHead, -c.Spread, c.Spread);
        var k = TestRandom.Uniform(rng, c.Batch * capacity * kvRow, -c.Spread, c.Spread);
        var v = TestRandom.Uniform(rng, c.Batch * capacity * kvRow);
        for (int b = 0; b < c.Batch; b++) // cache slots past key_len hold garbage that must never be read
        {
            Array.Fill(k, float.NaN, (b * capacity + c.KeyLen) * kvRow, (capacity - c.KeyLen) * kvRow);
            Array.Fill(v, float.NaN, (b * capacity + c.KeyLen) * kvRow, (capacity - c.KeyLen) * kvRow);
        }

        // The reference reads k and v as [batch, key_len, kv_heads, d_head].
        var kRef = Compact(k, c.Batch, capacity, c.KeyLen, kvRow);
        var vRef = Compact(v, c.Batch, capacity, c.KeyLen, kvRow);
        var refPattern = new float[c.Batch * c.NHeads * c.QueryLen * c.KeyLen];
        var refZ = new float[c.Batch * c.QueryLen * c.NHeads * c.DHead];
        ReferenceKernels.Attention(q, kRef, vRef, c.Batch, c.QueryLen, c.KeyLen, c.NHeads, c.NKvHeads, c.DHead, scale, c.Mask, refPattern, refZ);

        var scores = TestRandom.Filled(refPattern.Length, float.NaN);
        var pattern = new float[refPattern.Length];
        var z = TestRandom.Filled(refZ.Length, float.NaN);
        using (GemmPath.Use(path))
        {
            Attention.Scores(q, k, c.Batch, c.QueryLen, c.KeyLen, c.NHeads, c.NKvHeads, c.DHead, scale, c.Mask, scores, c.Capacity);
            Softmax.Rows(scores, c.Batch * c.NHeads * c.QueryLen, c.KeyLen, pattern);
            Attention.ApplyPattern(pattern, v, c.Batch, c.QueryLen, c.KeyLen, c.NHeads, c.NKvHeads, c.DHead, z, c.Capacity);
        }

        int[] patternShape = [c.Batch, c.NHeads, c.QueryLen, c.KeyLen];
        // Float32 dot products over d_head terms of size up to spread²·scale each.
        double scoreTol = 2e-7 * c.DHead * c.Spread * c.Spread * scale;
        Close.All(ExpectedScores(c, q, kRef, scale), scores, scoreTol, 1e-6, $"{name}: scores ({path})", patternShape);
        Close.All(refPattern, pattern, 1e-6, 1e-5, $"{name}: pattern ({path})", patternShape);
        Close.All(refZ, z, 2e-6, 1e-5, $"{name}: z ({path})", [c.Batch, c.QueryLen, c.NHeads, c.DHead]);
        CheckPatternRows(c, pattern, z);
    }

    /// <summary>Masked entries are exactly 0; a row with any visible key sums to 1; a row with none is all 0 and so is its z.</summary>
    static void CheckPatternRows(Case c, float[] pattern, float[] z)
    {
        for (int b = 0; b < c.Batch; b++)
            for (int h = 0; h < c.NHeads; h++)
                for (int i = 0; i < c.QueryLen; i++)
                {
                    var row = pattern.AsSpan(((b * c.NHeads + h) * c.QueryLen + i) * c.KeyLen, c.KeyLen);
                    double sum = 0;
                    bool anyVisible = false;
                    for (int j = 0; j < c.KeyLen; j++)
                    {
                        if (Visible(c, b, i, j)) anyVisible = true;
                        else Assert.True(row[j] == 0f, $"pattern[{b}, {h}, {i}, {j}] = {row[j]} but key {j} is masked");
                        sum += row[j];
                    }
                    Assert.True(Math.Abs(sum - (anyVisible ? 1 : 0)) < 1e-5, $"pattern[{b}, {h}, {i}, :] sums to {sum:R}");
                    if (!anyVisible)
                        for (int e = 0; e < c.DHead; e++)
                            Assert.Equal(0f, z[((b * c.QueryLen + i) * c.NHeads + h) * c.DHead + e]);
                }
    }

    /// <summary>The mask's rule, stated independently: causal, inside the window, and not padding.</summary>
    static bool Visible(Case c, int b, int i, int j)
    {
        int qpos = c.Mask.QueryOffset + i;
        return j <= qpos && (c.Mask.SlidingWindow <= 0 || j > qpos - c.Mask.SlidingWindow)
            && (c.Mask.KeyValid is null || c.Mask.KeyValid[b * c.KeyLen + j]);
    }

    /// <summary>hook_attn_scores in double: scale·q·k, soft-capped, −∞ where masked.</summary>
    static float[] ExpectedScores(Case c, float[] q, float[] kRef, float scale)
    {
        var s = new float[c.Batch * c.NHeads * c.QueryLen * c.KeyLen];
        int group = c.NHeads / c.NKvHeads;
        for (int b = 0; b < c.Batch; b++)
            for (int h = 0; h < c.NHeads; h++)
                for (int i = 0; i < c.QueryLen; i++)
                    for (int j = 0; j < c.KeyLen; j++)
                    {
                        double dot = 0;
                        for (int e = 0; e < c.DHead; e++)
                            dot += (double)q[((b * c.QueryLen + i) * c.NHeads + h) * c.DHead + e]
                                 * kRef[((b * c.KeyLen + j) * c.NKvHeads + h / group) * c.DHead + e];
                        dot *= scale;
                        if (c.Mask.SoftCap > 0) dot = c.Mask.SoftCap * Math.Tanh(dot / c.Mask.SoftCap);
                        s[((b * c.NHeads + h) * c.QueryLen + i) * c.KeyLen + j] = Visible(c, b, i, j) ? (float)dot : float.NegativeInfinity;
                    }
        return s;
    }

    static float[] Compact(float[] cache, int batch, int capacity, int keyLen, int kvRow)
    {
        var o = new float[batch * keyLen * kvRow];
        for (int b = 0; b < batch; b++)
            Array.Copy(cache, b * capacity * kvRow, o, b * keyLen * kvRow, keyLen * kvRow);
        return o;
    }

    /// <summary>[batch, key_len] validity with the first <c>padding[b]</c> keys of batch row b marked as padding.</summary>
    static bool[] KeyValid(int batch, int keyLen, int[] padding)
    {
        var valid = new bool[batch * keyLen];
        for (int b = 0; b < batch; b++)
            for (int j = 0; j < keyLen; j++) valid[b * keyLen + j] = j >= padding[b];
        return valid;
    }

    [Theory]
    [InlineData(6, 4)]
    [InlineData(8, 3)]
    [InlineData(4, 0)]
    public void RejectsBadHeadGrouping(int nHeads, int nKvHeads)
    {
        var big = new float[1024];
        var message = $"{nHeads} query heads cannot be grouped over {nKvHeads} key/value heads";
        Assert.Contains(message, Assert.Throws<ArgumentException>(() =>
            Attention.Scores(big, big, 1, 2, 2, nHeads, nKvHeads, 4, 1f, new(), big)).Message);
        Assert.Contains(message, Assert.Throws<ArgumentException>(() =>
            Attention.ApplyPattern(big, big, 1, 2, 2, nHeads, nKvHeads, 4, big)).Message);
    }

    [Fact]
    public void NamesTheBufferThatIsTooShort()
    {
        // batch 2, query_len 3, key_len 5 in a cache of 8, 4 heads over 2, d_head 4.
        var q = new float[2 * 3 * 4 * 4];
        var k = new float[8 * 2 * 4 + 5 * 2 * 4];     // the last batch row only needs key_len positions
        var scores = new float[2 * 4 * 3 * 5];
        var z = new float[q.Length];
        Attention.Scores(q, k, 2, 3, 5, 4, 2, 4, 1f, new(), scores, keyCapacity: 8);
        Attention.ApplyPattern(scores, k, 2, 3, 5, 4, 2, 4, z, keyCapacity: 8);

        Assert.Equal("q", Assert.Throws<ArgumentException>(() => Attention.Scores(q[..^1], k, 2, 3, 5, 4, 2, 4, 1f, new(), scores, 8)).ParamName);
        Assert.Equal("k", Assert.Throws<ArgumentException>(() => Attention.Scores(q, k[..^1], 2, 3, 5, 4, 2, 4, 1f, new(), scores, 8)).ParamName);
        Assert.Equal("scores", Assert.Throws<ArgumentException>(() => Attention.Scores(q, k, 2, 3, 5, 4, 2, 4, 1f, new(), scores[..^1], 8)).ParamName);
        Assert.Equal("pattern", Assert.Throws<ArgumentException>(() => Attention.ApplyPattern(scores[..^1], k, 2, 3, 5, 4, 2, 4, z, 8)).ParamName);
        Assert.Equal("v", Assert.Throws<ArgumentException>(() => Attention.ApplyPattern(scores, k[..^1], 2, 3, 5, 4, 2, 4, z, 8)).ParamName);
        Assert.Equal("z", Assert.Throws<ArgumentException>(() => Attention.ApplyPattern(scores, k, 2, 3, 5, 4, 2, 4, z[..^1], 8)).ParamName);
        Assert.Contains("key mask has 9 entries; expected 10", Assert.Throws<ArgumentException>(() =>
            Attention.Scores(q, k, 2, 3, 5, 4, 2, 4, 1f, new(KeyValid: new bool[9]), scores, 8)).Message);
    }
}

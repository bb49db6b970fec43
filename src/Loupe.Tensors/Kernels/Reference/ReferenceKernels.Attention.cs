using Loupe.Tensors.Backends;

namespace Loupe.Tensors.Kernels.Reference;

// Double twins of rotary (and its inverse) and of the three attention steps with their backward.
// Shapes (TransformerLens axis names), with KeyRows = KeyCapacity for a KV cache, else KeyLen:
//   q        [batch, query_pos, head_index, d_head]
//   k, v     [batch, KeyRows, kv_head_index, d_head]     query head h reads kv head h / (heads / kv_heads)
//   scores   [batch, head_index, query_pos, key_pos]
//   pattern  [batch, head_index, query_pos, key_pos]
//   z        [batch, query_pos, head_index, d_head]
public static partial class ReferenceKernels
{
    /// <summary>
    /// Rotate-half rotary embedding of x <c>[rows, heads, headDim]</c> in place, row r at <c>positions[r]</c>:
    /// for i &lt; h = rotaryDim/2, θᵢ = pos·theta^(−2i/rotaryDim),
    /// <c>x'[i] = x[i]·cos θᵢ − x[i+h]·sin θᵢ</c>, <c>x'[i+h] = x[i+h]·cos θᵢ + x[i]·sin θᵢ</c>; dims past rotaryDim unchanged.
    /// <paramref name="inverse"/> rotates by −θ: the rotation is orthogonal, so that is its transpose, the backward.
    /// </summary>
    public static void Rotary(Span<double> x, int rows, int heads, int headDim, int rotaryDim, double theta, ReadOnlySpan<int> positions, bool inverse)
    {
        int half = rotaryDim / 2;
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
            {
                int o = (r * heads + h) * headDim;
                for (int i = 0; i < half; i++)
                {
                    double angle = (inverse ? -1 : 1) * positions[r] * Math.Pow(theta, -2.0 * i / rotaryDim);
                    double a = x[o + i], b = x[o + i + half];
                    x[o + i] = a * Math.Cos(angle) - b * Math.Sin(angle);
                    x[o + i + half] = b * Math.Cos(angle) + a * Math.Sin(angle);
                }
            }
    }

    static int QIndex(AttentionShape s, int b, int i, int h, int e) => ((b * s.QueryLen + i) * s.Heads + h) * s.DHead + e;
    static int KIndex(AttentionShape s, int b, int j, int h, int e) => ((b * s.KeyRows + j) * s.KvHeads + h / s.Group) * s.DHead + e;
    static int SIndex(AttentionShape s, int b, int h, int i, int j) => ((b * s.Heads + h) * s.QueryLen + i) * s.KeyLen + j;

    /// <summary>Whether query i of batch row b may see key j: causal at absolute position QueryOffset + i, inside the window, not padding.</summary>
    public static bool KeyVisible(AttentionMask mask, int keyLen, int b, int i, int j)
    {
        int queryPosition = mask.QueryOffset + i;
        return j <= queryPosition
            && (mask.SlidingWindow <= 0 || queryPosition - j < mask.SlidingWindow)
            && (mask.KeyValid is null || mask.KeyValid[b * keyLen + j]);
    }

    /// <summary>
    /// <c>scores[b, h, i, j] = cap·tanh(scale·q·k / cap)</c> (just scale·q·k without a soft-cap), −∞ where
    /// <see cref="KeyVisible"/> says no.
    /// </summary>
    public static void AttentionScores(ReadOnlySpan<double> q, ReadOnlySpan<double> k, AttentionShape s, double scale, AttentionMask mask,
        Span<double> scores)
    {
        for (int b = 0; b < s.Batch; b++)
            for (int h = 0; h < s.Heads; h++)
                for (int i = 0; i < s.QueryLen; i++)
                    for (int j = 0; j < s.KeyLen; j++)
                    {
                        double dot = 0;
                        for (int e = 0; e < s.DHead; e++) dot += q[QIndex(s, b, i, h, e)] * k[KIndex(s, b, j, h, e)];
                        double score = scale * dot;
                        if (mask.SoftCap > 0) score = mask.SoftCap * Math.Tanh(score / mask.SoftCap);
                        scores[SIndex(s, b, h, i, j)] = KeyVisible(mask, s.KeyLen, b, i, j) ? score : double.NegativeInfinity;
                    }
    }

    /// <summary><c>z[b, i, h, :] = Σⱼ pattern[b, h, i, j]·v[b, j, h/group, :]</c>.</summary>
    public static void AttentionApply(ReadOnlySpan<double> pattern, ReadOnlySpan<double> v, AttentionShape s, Span<double> z)
    {
        for (int b = 0; b < s.Batch; b++)
            for (int h = 0; h < s.Heads; h++)
                for (int i = 0; i < s.QueryLen; i++)
                    for (int e = 0; e < s.DHead; e++)
                    {
                        double sum = 0;
                        for (int j = 0; j < s.KeyLen; j++) sum += pattern[SIndex(s, b, h, i, j)] * v[KIndex(s, b, j, h, e)];
                        z[QIndex(s, b, i, h, e)] = sum;
                    }
    }

    /// <summary>
    /// Backward of <see cref="AttentionApply"/>, z[b,i,h,e] = Σⱼ P[b,h,i,j]·v[b,j,h/g,e]:
    /// <c>dP[b,h,i,j] = Σₑ dz[b,i,h,e]·v[b,j,h/g,e]</c>; <c>dv[b,j,kv,e] = Σ_{h/g = kv} Σᵢ P[b,h,i,j]·dz[b,i,h,e]</c> (written).
    /// </summary>
    public static void AttentionApplyBackward(ReadOnlySpan<double> dz, ReadOnlySpan<double> pattern, ReadOnlySpan<double> v, AttentionShape s,
        Span<double> dPattern, Span<double> dv)
    {
        dv[..(s.Batch * s.KeyRows * s.KvHeads * s.DHead)].Clear();
        for (int b = 0; b < s.Batch; b++)
            for (int h = 0; h < s.Heads; h++)
                for (int i = 0; i < s.QueryLen; i++)
                    for (int j = 0; j < s.KeyLen; j++)
                    {
                        double dp = 0, p = pattern[SIndex(s, b, h, i, j)];
                        for (int e = 0; e < s.DHead; e++)
                        {
                            dp += dz[QIndex(s, b, i, h, e)] * v[KIndex(s, b, j, h, e)];
                            dv[KIndex(s, b, j, h, e)] += p * dz[QIndex(s, b, i, h, e)];
                        }
                        dPattern[SIndex(s, b, h, i, j)] = dp;
                    }
    }

    /// <summary>
    /// Backward of the raw scores R[b,h,i,j] = scale·Σₑ q[b,i,h,e]·k[b,j,h/g,e]:
    /// <c>dq[b,i,h,e] = scale·Σⱼ dR[b,h,i,j]·k[b,j,h/g,e]</c>; <c>dk[b,j,kv,e] = scale·Σ_{h/g = kv} Σᵢ dR[b,h,i,j]·q[b,i,h,e]</c> (written).
    /// </summary>
    public static void AttentionScoresBackward(ReadOnlySpan<double> dRaw, ReadOnlySpan<double> q, ReadOnlySpan<double> k, AttentionShape s,
        double scale, Span<double> dq, Span<double> dk)
    {
        dq[..(s.Batch * s.QueryLen * s.Heads * s.DHead)].Clear();
        dk[..(s.Batch * s.KeyRows * s.KvHeads * s.DHead)].Clear();
        for (int b = 0; b < s.Batch; b++)
            for (int h = 0; h < s.Heads; h++)
                for (int i = 0; i < s.QueryLen; i++)
                    for (int j = 0; j < s.KeyLen; j++)
                    {
                        double g = scale * dRaw[SIndex(s, b, h, i, j)];
                        for (int e = 0; e < s.DHead; e++)
                        {
                            dq[QIndex(s, b, i, h, e)] += g * k[KIndex(s, b, j, h, e)];
                            dk[KIndex(s, b, j, h, e)] += g * q[QIndex(s, b, i, h, e)];
                        }
                    }
    }
}

using System.Numerics.Tensors;
using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>
/// A ReLU crosscoder's activation and penalty (Anthropic 2024; dictionary_learning's CrossCoderTrainer; Kissane's replication):
/// L1 = λ/B Σ_b Σ_i f[b,i]·Σ_s ‖W_dec^s[i]‖ — the decoder norm summed over the sources, not the norm of the concatenated
/// row, so a latent pays for every source it writes to and one that serves a single source is cheaper than one spread over
/// all. The decoder rows of the dictionary are [W_dec^1[i] | … | W_dec^S[i]], each of width d_out / S.
/// </summary>
public sealed class CrosscoderReluActivation : SaeActivation
{
    /// <exception cref="ArgumentOutOfRangeException">Fewer than two sources.</exception>
    public CrosscoderReluActivation(int sources) =>
        Sources = sources >= 2 ? sources : throw new ArgumentOutOfRangeException(nameof(sources), "a crosscoder reads at least two sources");

    /// <summary>S, the number of sources the decoder rows are split into.</summary>
    public int Sources { get; }

    public override string Architecture => "crosscoder";
    public override bool UnitNormDecoder => false;
    public override bool GradientOnlyWhereActive => true;

    // acts = max(pre, 0); NaN → 0, as ReLU's comparison pre > 0 gives
    public override void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p)
    {
        TensorPrimitives.Max(pre[..(batch * dSae)], 0f, acts);
        for (int i = 0; i < batch * dSae; i++) if (float.IsNaN(pre[i])) acts[i] = 0f;
    }

    public override void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
        Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g) => MaskedAdd(acts, dActs, dPre, batch * dSae);

    // L1 = λ/B Σ_b Σ_i acts[b,i]·N_i, N_i = Σ_s ‖W_dec^s[i]‖;  dL/dacts[b,i] = λ/B·N_i,
    // dL/dW_dec^s[i] = λ/B·(Σ_b acts[b,i])·W_dec^s[i] / ‖W_dec^s[i]‖ (0 where that segment is 0).
    public override float Sparsity(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, int batch, int dSae, float coefficient,
        SaeParameters p, Span<float> dActs, Span<float> dPre, SaeParameters? g)
    {
        int dOut = p.DOut, d = dOut / Sources;
        if (d * Sources != dOut) throw new InvalidOperationException($"d_out = {dOut} does not split into {Sources} sources");
        var segNorms = new float[dSae * Sources]; // [d_sae, S]
        var total = new float[dSae];              // [d_sae] N_i
        var colSum = new float[dSae];             // [d_sae] Σ_b acts[b,i]
        for (int i = 0; i < dSae; i++)
            for (int s = 0; s < Sources; s++)
                total[i] += segNorms[i * Sources + s] = TensorPrimitives.Norm(p.WDec.AsSpan(i * dOut + s * d, d));
        float scale = coefficient / batch;
        double loss = WeightedL1(acts, batch, dSae, total, scale, g is null ? default : dActs, colSum);
        if (g is not null)
        {
            for (int i = 0; i < dSae; i++)
                for (int s = 0; s < Sources; s++)
                {
                    float n = segNorms[i * Sources + s];
                    if (n == 0 || colSum[i] == 0) continue;
                    var seg = p.WDec.AsSpan(i * dOut + s * d, d);
                    var gSeg = g.WDec.AsSpan(i * dOut + s * d, d);
                    TensorPrimitives.MultiplyAdd(seg, scale * colSum[i] / n, gSeg, gSeg);
                }
        }
        return (float)(loss * scale);
    }
}

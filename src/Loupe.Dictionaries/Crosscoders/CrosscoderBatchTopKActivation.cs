using Loupe.Dictionaries.Sae;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>
/// A BatchTopK crosscoder's activation (Minder, Dumas et al. 2025; dictionary_learning's BatchTopKCrossCoder, CROSSCODER code
/// normalisation): with f = ReLU(pre) and n_i = Σ_s ‖W_dec^s[i]‖,
///   training:  keep f[b,i] for the k·batch largest f[b,i]·n_i of the whole batch, 0 elsewhere;
///   inference: keep f[b,i] where f[b,i]·n_i &gt; θ;
/// θ is the running mean (momentum <see cref="Momentum"/>) of the smallest kept f·n_i, the first step's taken as it is.
/// Ranking by f·n_i rather than f makes the selection blind to how a latent splits its scale between encoder and decoder.
/// No sparsity penalty: the gradient reaches the kept entries only, as TopK's does. Decoder rows are S segments of d.
/// </summary>
public sealed class CrosscoderBatchTopKActivation : SaeActivation
{
    /// <exception cref="ArgumentOutOfRangeException">k not positive, fewer than two sources, or a momentum outside (0, 1].</exception>
    public CrosscoderBatchTopKActivation(int k, int sources, float momentum = 0.01f)
    {
        K = k > 0 ? k : throw new ArgumentOutOfRangeException(nameof(k), "k must be positive");
        Sources = sources >= 2 ? sources : throw new ArgumentOutOfRangeException(nameof(sources), "a crosscoder reads at least two sources");
        Momentum = momentum is > 0 and <= 1 ? momentum : throw new ArgumentOutOfRangeException(nameof(momentum));
    }

    public int K { get; }
    public int Sources { get; }
    public float Momentum { get; }
    public override string Architecture => "crosscoder_batchtopk";
    public override bool UnitNormDecoder => false;
    public override bool HasSparsityPenalty => false;
    public override bool SupportsAuxK => true;
    public override bool GradientOnlyWhereActive => true;

    // n_i per latent from the current decoder
    float[] CodeNorms(SaeParameters p, int dSae)
    {
        int dOut = p.DOut, d = dOut / Sources;
        var seg = Crosscoder.SegmentNorms(p.WDec, dSae, Sources, d);
        var n = new float[dSae];
        for (int i = 0; i < dSae; i++)
            for (int s = 0; s < Sources; s++) n[i] += seg[i * Sources + s];
        return n;
    }

    public override void Forward(ReadOnlySpan<float> pre, Span<float> acts, int batch, int dSae, bool training, SaeParameters p)
    {
        int total = batch * dSae;
        acts[..total].Clear();
        var norms = CodeNorms(p, dSae);
        if (!training)
        {
            float t = p.Threshold[0];
            for (int i = 0; i < total; i++)
            {
                float f = pre[i] > 0 ? pre[i] : 0f;
                if (f > 0 && f * norms[i % dSae] > t) acts[i] = f;
            }
            return;
        }
        var scaled = new float[total];
        for (int i = 0; i < total; i++) scaled[i] = pre[i] > 0 ? pre[i] * norms[i % dSae] : 0f;
        int keep = Math.Min(K * batch, total);
        var scratch = new float[total];
        float cut = TopKSelection.KthLargest(scaled, keep, scratch);
        int above = 0;
        for (int i = 0; i < total; i++) if (scaled[i] > cut) above++;
        int ties = keep - above;
        for (int i = 0; i < total; i++)
        {
            float v = scaled[i];
            if (v > cut || (v == cut && ties-- > 0)) acts[i] = pre[i] > 0 ? pre[i] : 0f;
        }
    }

    public override void Backward(ReadOnlySpan<float> pre, ReadOnlySpan<float> acts, ReadOnlySpan<float> dActs,
        Span<float> dPre, int batch, int dSae, SaeParameters p, SaeParameters g) => MaskedAdd(acts, dActs, dPre, batch * dSae);

    // θ ← (1 − m)·θ + m·min{f·n_i kept}; the first update sets it.
    public override void AfterTrainingForward(ReadOnlySpan<float> acts, int batch, int dSae, SaeParameters p)
    {
        var norms = CodeNorms(p, dSae);
        float min = float.PositiveInfinity;
        for (int i = 0; i < batch * dSae; i++)
            if (acts[i] > 0 && acts[i] * norms[i % dSae] is var v && v < min) min = v;
        UpdateThreshold(min, p);
    }

    /// <summary>Folds one training step's smallest kept f·n_i into θ (nothing when none was kept: +∞); the device trainer's entry.</summary>
    public void UpdateThreshold(float minKept, SaeParameters p)
    {
        ArgumentNullException.ThrowIfNull(p);
        if (!(minKept < float.PositiveInfinity)) return;
        p.Threshold[0] = p.Threshold[0] < 0 ? minKept : (1 - Momentum) * p.Threshold[0] + Momentum * minKept;
    }
}

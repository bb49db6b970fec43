// Latent Scaling (Minder, Dumas et al. 2025, "Overcoming Sparsity Artifacts in Crosscoders to Interpret Chat-Tuning"):
// is a latent that only one model's decoder uses really absent from the other model?
//
// For a latent j owned by source o (its decoder writes (almost) only there; the other source is q) with d = W_dec^o[j]
// and activation f_j, the least-squares scale of f_j·d that best explains a target y over every row n is
//     β(y) = Σ_n f_j(n)·⟨y_n, d⟩ / (‖d‖² · Σ_n f_j(n)²)
// with four targets (all in the crosscoder's units, after the input scales):
//     error ε_s        = x_s − (x̂_s − f_j·W_dec^s[j])     (what the rest of the crosscoder leaves unexplained in s, with j's own part back)
//     reconstruction r_s = x̂_s                               (what the crosscoder puts in s)
// for s = q and s = o, and the ratios
//     ν^ε = β(ε_q) / β(ε_o)   high: "complete shrinkage" — the other model's error holds the latent's direction the L1
//                               penalty pushed its other decoder to 0 for; the latent is not exclusive
//     ν^r = β(r_q) / β(r_o)   high: "latent decoupling" — other latents rebuild the direction in the other model
// A genuinely exclusive latent has both ratios near 0. closed_form.py's closed_form_scalars is the reference.
namespace Loupe.Dictionaries.Crosscoders;

/// <summary>Latent Scaling's statistics for one latent.</summary>
public sealed record CrosscoderLatentScale(int Index, string Owner, string Other, long ActiveRows,
    double BetaErrorOther, double BetaErrorOwner, double BetaReconOther, double BetaReconOwner)
{
    /// <summary>ν^ε = β(ε_other) / β(ε_owner).</summary>
    public double NuError => BetaErrorOther / BetaErrorOwner;

    /// <summary>ν^r = β(r_other) / β(r_owner).</summary>
    public double NuReconstruction => BetaReconOther / BetaReconOwner;
}

/// <summary>Accumulates Latent Scaling's sums over batches (see the file header).</summary>
public sealed class CrosscoderLatentScaling
{
    readonly Crosscoder _cc;
    readonly int[] _latents, _owner;
    readonly double[] _num; // [latent, target] targets: ε_other, ε_owner, r_other, r_owner
    readonly double[] _fSq;
    readonly long[] _active;

    /// <param name="crosscoder">A crosscoder over two sources.</param>
    /// <param name="latents">The latents to scale.</param>
    /// <param name="owners">For each latent, the source (0 or 1) whose decoder vector is d; null: the source with the larger decoder norm.</param>
    /// <exception cref="InputError">Not two sources, a latent out of range, or a latent whose owner decoder is 0.</exception>
    public CrosscoderLatentScaling(Crosscoder crosscoder, IReadOnlyList<int> latents, IReadOnlyList<int>? owners = null)
    {
        ArgumentNullException.ThrowIfNull(crosscoder);
        ArgumentNullException.ThrowIfNull(latents);
        if (crosscoder.Sources.Count != 2) throw new InputError($"latent scaling compares two sources; this crosscoder has {crosscoder.Sources.Count}");
        _cc = crosscoder;
        _latents = latents.ToArray();
        var norms = crosscoder.DecoderNorms();
        _owner = new int[_latents.Length];
        for (int i = 0; i < _latents.Length; i++)
        {
            int j = _latents[i];
            if (j < 0 || j >= crosscoder.DSae) throw new InputError($"argument: --latent-scaling: latent {j} is out of range (d_sae = {crosscoder.DSae})");
            _owner[i] = owners?[i] ?? (norms[j * 2 + 1] > norms[j * 2] ? 1 : 0);
            if (norms[j * 2 + _owner[i]] == 0) throw new InputError($"argument: --latent-scaling: latent {j} has no decoder vector in {crosscoder.Sources[_owner[i]]}");
        }
        _num = new double[_latents.Length * 4];
        _fSq = new double[_latents.Length];
        _active = new long[_latents.Length];
    }

    /// <summary>The latents being scaled.</summary>
    public IReadOnlyList<int> Latents => _latents;

    /// <summary>
    /// Adds a batch: the crosscoder's input <paramref name="x"/> [rows, 2·d] (already scaled, as <see cref="Crosscoder.Concatenate"/>
    /// gives it), its latents [rows, F] and its reconstruction <paramref name="recon"/> [rows, 2·d] in the same units.
    /// </summary>
    public void Add(float[] x, float[] latents, float[] recon, int rows)
    {
        int d = _cc.Width, f = _cc.DSae, w = 2 * d;
        var wDec = _cc.Dictionary.P.WDec;
        for (int i = 0; i < _latents.Length; i++)
        {
            int j = _latents[i], o = _owner[i], q = 1 - o;
            var dj = wDec.AsSpan(j * w + o * d, d);
            var ownOther = wDec.AsSpan(j * w + q * d, d);   // j's own decoder in the other source (ε_q adds it back)
            double dOwnOther = Dot(ownOther, dj), dd = Dot(dj, dj);
            for (int r = 0; r < rows; r++)
            {
                float fj = latents[(long)r * f + j];
                if (fj == 0) continue;
                _active[i]++;
                _fSq[i] += (double)fj * fj;
                var xq = x.AsSpan(r * w + q * d, d);
                var xo = x.AsSpan(r * w + o * d, d);
                var rq = recon.AsSpan(r * w + q * d, d);
                var ro = recon.AsSpan(r * w + o * d, d);
                double rqd = Dot(rq, dj), rod = Dot(ro, dj);
                // ⟨ε_s, d⟩ = ⟨x_s, d⟩ − ⟨x̂_s, d⟩ + f_j·⟨W_dec^s[j], d⟩
                _num[i * 4 + 0] += fj * (Dot(xq, dj) - rqd + fj * dOwnOther);
                _num[i * 4 + 1] += fj * (Dot(xo, dj) - rod + fj * dd);
                _num[i * 4 + 2] += fj * rqd;
                _num[i * 4 + 3] += fj * rod;
            }
        }
    }

    /// <summary>β for each target and the ratios, per latent (β is NaN for a latent that never fired).</summary>
    public IReadOnlyList<CrosscoderLatentScale> Result()
    {
        int d = _cc.Width, w = 2 * d;
        var wDec = _cc.Dictionary.P.WDec;
        var labels = _cc.SourceLabels();
        return [.. _latents.Select((j, i) =>
        {
            int o = _owner[i];
            var dj = wDec.AsSpan(j * w + o * d, d);
            double den = Dot(dj, dj) * _fSq[i];
            double B(int t) => den > 0 ? _num[i * 4 + t] / den : double.NaN;
            return new CrosscoderLatentScale(j, labels[o], labels[1 - o], _active[i], B(0), B(1), B(2), B(3));
        })];
    }

    static double Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double s = 0;
        for (int k = 0; k < a.Length; k++) s += (double)a[k] * b[k];
        return s;
    }
}

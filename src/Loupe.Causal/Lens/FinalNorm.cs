using Loupe.Models;
using Loupe.Models.Layers;

namespace Loupe.Causal.Lens;

/// <summary>
/// The final norm (ln_final) applied to single residual-stream vectors <c>[d_model]</c>, in double:
/// with its real scale (the norm as the model computes it), or with a frozen scale (a linear map,
/// so it can be applied to each component of a sum separately).
/// </summary>
static class FinalNorm
{
    /// <summary>The per-channel factor <c>w + offset</c> (1 + offset where the norm has no weight); null for no norm.</summary>
    public static double[]? Weight(HookedTransformer model)
    {
        var norm = model.FinalNormLayer;
        if (norm is null || norm.Kind == NormKind.None) return null;
        int D = model.Config.DModel;
        var w = norm.Weight.Span;
        var result = new double[D];
        for (int d = 0; d < D; d++) result[d] = (w.IsEmpty ? 1.0 : w[d]) + norm.WeightOffset;
        return result;
    }

    public static bool Centres(HookedTransformer model) => model.FinalNormLayer is { Kind: NormKind.LayerNorm };

    /// <summary>
    /// The linear part of the norm with the scale frozen at <paramref name="scale"/>:
    /// <c>(x − [LayerNorm] mean(x)) / scale ⊙ (w + offset)</c> — no bias. Identity without a norm.
    /// </summary>
    public static double[] Frozen(HookedTransformer model, ReadOnlySpan<float> x, double scale)
    {
        var w = Weight(model);
        var y = new double[x.Length];
        if (w is null)
        {
            for (int d = 0; d < x.Length; d++) y[d] = x[d];
            return y;
        }
        double mean = 0;
        if (Centres(model))
        {
            for (int d = 0; d < x.Length; d++) mean += x[d];
            mean /= x.Length;
        }
        for (int d = 0; d < x.Length; d++) y[d] = (x[d] - mean) / scale * w[d];
        return y;
    }

    /// <summary>The scale the norm would divide <paramref name="x"/> by: <c>√(var + eps)</c> (LayerNorm) or <c>√(mean x² + eps)</c> (RMSNorm); 1 without a norm.</summary>
    public static double RealScale(HookedTransformer model, ReadOnlySpan<float> x)
    {
        var norm = model.FinalNormLayer;
        if (norm is null || norm.Kind == NormKind.None) return 1;
        double mean = 0, sq = 0;
        if (norm.Kind == NormKind.LayerNorm)
        {
            foreach (var v in x) mean += v;
            mean /= x.Length;
        }
        foreach (var v in x) sq += (v - mean) * (v - mean);
        return Math.Sqrt(sq / x.Length + norm.Eps);
    }

    /// <summary>The norm's bias <c>[d_model]</c> (zeros when it has none).</summary>
    public static double[] Bias(HookedTransformer model)
    {
        var result = new double[model.Config.DModel];
        if (model.FinalNormLayer is { Kind: not NormKind.None } norm && !norm.Bias.IsEmpty)
        {
            var b = norm.Bias.Span;
            for (int d = 0; d < result.Length; d++) result[d] = b[d];
        }
        return result;
    }
}

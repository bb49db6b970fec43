using Loupe.Models;
using Loupe.Models.Layers;

namespace Loupe.Circuits.Edges;

/// <summary>
/// A norm's forward and its real (not frozen) backward on host rows, in double within a row.
/// Forward: <c>c = x − mean(x)</c> (LayerNorm) or <c>x</c> (RMSNorm); <c>σ = sqrt(mean(c²) + eps)</c>;
/// <c>y = c/σ · (w + offset) + b</c> (a folded norm has no w and no b: w = 1). <see cref="NormKind.None"/> is the identity.
/// </summary>
static class HostNorm
{
    /// <summary>Normalizes every row of <paramref name="x"/> (<c>[rows, d]</c>) into <paramref name="y"/>.</summary>
    public static void Forward(Norm norm, ReadOnlySpan<float> x, int d, Span<float> y)
    {
        if (norm.Kind == NormKind.None) { x.CopyTo(y); return; }
        var w = norm.Weight.Span;
        var b = norm.Bias.Span;
        var c = new double[d];
        for (int r = 0; r < x.Length / d; r++)
        {
            var row = x.Slice(r * d, d);
            double sigma = Centre(norm, row, c);
            for (int i = 0; i < d; i++)
                y[r * d + i] = (float)(c[i] / sigma * ((w.IsEmpty ? 1 : w[i]) + norm.WeightOffset) + (b.IsEmpty ? 0 : b[i]));
        }
    }

    /// <summary>
    /// d loss / d x for every row, given d loss / d y. Backward of the forward above:
    /// <c>dĉ = dy ⊙ w_eff</c>; <c>dc = (dĉ − ĉ·mean(dĉ·ĉ)) / σ</c>; LayerNorm: <c>dx = dc − mean(dc)</c>.
    /// </summary>
    public static void Backward(Norm norm, ReadOnlySpan<float> x, ReadOnlySpan<float> dy, int d, Span<float> dx)
    {
        if (norm.Kind == NormKind.None) { dy.CopyTo(dx); return; }
        var w = norm.Weight.Span;
        var c = new double[d];
        var dHat = new double[d];
        for (int r = 0; r < x.Length / d; r++)
        {
            double sigma = Centre(norm, x.Slice(r * d, d), c);
            double dot = 0;
            for (int i = 0; i < d; i++)
            {
                dHat[i] = dy[r * d + i] * (double)((w.IsEmpty ? 1 : w[i]) + norm.WeightOffset);
                dot += dHat[i] * c[i] / sigma;
            }
            dot /= d;
            double mean = 0;
            for (int i = 0; i < d; i++) { dHat[i] = (dHat[i] - c[i] / sigma * dot) / sigma; mean += dHat[i]; }
            mean = norm.Kind == NormKind.LayerNorm ? mean / d : 0;
            for (int i = 0; i < d; i++) dx[r * d + i] = (float)(dHat[i] - mean);
        }
    }

    /// <summary>Writes the centred row (or the row, for RMSNorm) into <paramref name="c"/> and returns σ.</summary>
    static double Centre(Norm norm, ReadOnlySpan<float> row, double[] c)
    {
        int d = row.Length;
        double mean = 0;
        if (norm.Kind == NormKind.LayerNorm)
        {
            foreach (var v in row) mean += v;
            mean /= d;
        }
        double sq = 0;
        for (int i = 0; i < d; i++) { c[i] = row[i] - mean; sq += c[i] * c[i]; }
        return Math.Sqrt(sq / d + norm.Eps);
    }
}

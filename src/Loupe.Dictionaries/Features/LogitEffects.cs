// Direct logit effects of dictionary features: what one unit of a feature, written into the residual
// stream, does to each output logit (SAEDashboard's logits table: W_dec[f] · W_U).
//
// Shape legend: F = features in a chunk, D = d_model, V = d_vocab_out.
//   u       [F, D]   decoder rows W_dec[f], folded through the final norm's linear part
//   W_U     [D, V]   unembedding (stored [V, D] when the model keeps it out×in)
//   logits  [F, V]   u · W_U
//
// 1. u = W_dec[f]; for a LayerNorm final norm, centre it (u − mean u: the norm removes the mean);
// 2. multiply by the norm's per-channel weight (w + offset) — TransformerLens's fold_ln, which the
//    W_U used by SAEDashboard already contains; the norm's scale is taken as 1 and its bias and b_U
//    are left out (they do not depend on the feature);
// 3. logits = u · W_U in chunks of features (memory F·V floats);
// 4. per feature keep the N largest (promoted) and N smallest (suppressed) logits, and a histogram of
//    all V values over [min, max] (SAEDashboard's logits histogram).
using Loupe.Models;
using Loupe.Models.Layers;
using Loupe.Tensors.Kernels;

namespace Loupe.Dictionaries.Features;

/// <summary>One token's entry in a feature's logit table.</summary>
/// <param name="TokenId">Output token id.</param>
/// <param name="Value">Change in that token's logit per unit feature activation (before the final norm's scale).</param>
public readonly record struct LogitEntry(int TokenId, float Value);

/// <summary>A feature's direct logit effects: top promoted and suppressed tokens and a histogram over the vocabulary.</summary>
/// <param name="Promoted">Largest values first.</param>
/// <param name="Suppressed">Smallest (most negative) values first.</param>
/// <param name="HistogramEdges">B + 1 equal-width edges over [min, max] of the feature's logit vector.</param>
/// <param name="HistogramCounts">Tokens per bin (last bin closed on the right); they sum to d_vocab_out.</param>
public sealed record FeatureLogits(LogitEntry[] Promoted, LogitEntry[] Suppressed, double[] HistogramEdges, long[] HistogramCounts);

/// <summary>Computes <see cref="FeatureLogits"/> for every feature of a dictionary from the model's final norm and W_U.</summary>
public static class LogitEffects
{
    /// <summary>Why logit effects cannot be computed for a dictionary writing <paramref name="dOut"/>-wide vectors, or null when they can.</summary>
    public static string? Unavailable(HookedTransformer model, int dOut) =>
        dOut == model.Config.DModel ? null
            : $"the dictionary writes d_out = {dOut} but the residual stream has d_model = {model.Config.DModel}; logit effects need a residual-stream decoder";

    /// <summary>
    /// The logit effects of every row of <paramref name="wDec"/> <c>[d_sae, d_model]</c>: <paramref name="top"/>
    /// promoted and suppressed tokens and a <paramref name="histogramBins"/>-bin histogram per feature.
    /// </summary>
    /// <exception cref="ArgumentException">The rows are not d_model wide, or a count is not positive.</exception>
    /// <exception cref="OperationCanceledException">Cancelled between chunks.</exception>
    public static FeatureLogits[] Compute(HookedTransformer model, ReadOnlySpan<float> wDec, int dSae, int top, int histogramBins,
        CancellationToken cancellationToken = default)
    {
        int D = model.Config.DModel, V = model.Config.VocabOut;
        if (wDec.Length != (long)dSae * D) throw new ArgumentException($"W_dec has {wDec.Length} values; logit effects need [d_sae = {dSae}, d_model = {D}]", nameof(wDec));
        if (top <= 0) throw new ArgumentOutOfRangeException(nameof(top), top, "the number of logits per feature must be positive");
        if (histogramBins <= 0) throw new ArgumentOutOfRangeException(nameof(histogramBins), histogramBins, "histogram bins must be positive");
        top = Math.Min(top, V);
        var unembed = model.UnembedLayer;
        if (unembed.DIn != D || unembed.DOut != V)
            throw new InvalidOperationException($"the unembedding is [{unembed.DIn}, {unembed.DOut}]; expected [d_model = {D}, d_vocab_out = {V}]");
        var (gain, centre) = NormFold(model);

        int chunk = Math.Clamp((1 << 24) / V, 1, dSae);
        var u = new float[chunk * D];       // [F, D]
        var logits = new float[chunk * V];  // [F, V]
        var result = new FeatureLogits[dSae];
        for (int f0 = 0; f0 < dSae; f0 += chunk)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int F = Math.Min(chunk, dSae - f0);
            for (int i = 0; i < F; i++)
            {
                var row = u.AsSpan(i * D, D);
                wDec.Slice((f0 + i) * D, D).CopyTo(row);
                if (centre)
                {
                    float mean = System.Numerics.Tensors.TensorPrimitives.Sum(row) / D;
                    System.Numerics.Tensors.TensorPrimitives.Subtract(row, mean, row);
                }
                if (gain is not null) System.Numerics.Tensors.TensorPrimitives.Multiply(row, gain, row);
            }
            // logits[F, V] = u[F, D] · W_U[D, V]
            if (unembed.WeightIsOutIn)
                Gemm.Sgemm(false, true, F, V, D, 1f, u, D, unembed.Weight.Span, D, 0f, logits, V);
            else
                Gemm.Sgemm(false, false, F, V, D, 1f, u, D, unembed.Weight.Span, V, 0f, logits, V);
            for (int i = 0; i < F; i++) result[f0 + i] = Summarize(logits.AsSpan(i * V, V), top, histogramBins);
        }
        return result;
    }

    /// <summary>The final norm's per-channel weight (null when it has none) and whether it centres (LayerNorm).</summary>
    static (float[]? Gain, bool Centre) NormFold(HookedTransformer model)
    {
        var norm = model.FinalNormLayer;
        if (norm is null || norm.Kind == NormKind.None) return (null, false);
        int D = model.Config.DModel;
        var w = norm.Weight.Span;
        var gain = new float[D];
        for (int d = 0; d < D; d++) gain[d] = (w.IsEmpty ? 1f : w[d]) + norm.WeightOffset;
        return (gain, norm.Kind == NormKind.LayerNorm);
    }

    /// <summary>Top and bottom <paramref name="top"/> entries (ties to the lower token id) and the histogram of one logit vector.</summary>
    internal static FeatureLogits Summarize(ReadOnlySpan<float> logits, int top, int bins)
    {
        var promoted = Select(logits, top, largest: true);
        var suppressed = Select(logits, top, largest: false);
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        foreach (float v in logits)
        {
            if (!float.IsFinite(v)) throw new InputError("a logit effect is NaN or infinite: the dictionary's W_dec or the model's W_U holds non-finite values");
            if (v < min) min = v;
            if (v > max) max = v;
        }
        var edges = new double[bins + 1];
        for (int k = 0; k <= bins; k++) edges[k] = min + ((double)max - min) * k / bins;
        edges[bins] = max;
        var counts = new long[bins];
        double width = ((double)max - min) / bins;
        foreach (float v in logits)
        {
            int k = width > 0 ? (int)((v - min) / width) : 0;
            counts[Math.Clamp(k, 0, bins - 1)]++;
        }
        return new FeatureLogits(promoted, suppressed, edges, counts);
    }

    // A bounded heap of the n best (largest or smallest) values: O(V log n).
    static LogitEntry[] Select(ReadOnlySpan<float> logits, int n, bool largest)
    {
        // Key: larger is better; ties favour the lower token id.
        var heap = new PriorityQueue<int, (float Key, int NegId)>(n + 1);
        for (int t = 0; t < logits.Length; t++)
        {
            var key = (largest ? logits[t] : -logits[t], -t);
            if (heap.Count < n) heap.Enqueue(t, key);
            else if (heap.TryPeek(out _, out var worst) && key.CompareTo(worst) > 0) heap.EnqueueDequeue(t, key);
        }
        var result = new LogitEntry[heap.Count];
        for (int i = result.Length - 1; i >= 0; i--)
        {
            int t = heap.Dequeue();
            result[i] = new LogitEntry(t, logits[t]);
        }
        return result;
    }
}

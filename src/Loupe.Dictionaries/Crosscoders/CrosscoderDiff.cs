// Model diffing from a crosscoder's decoder alone: which latents write to which source.
//
// For latent i with decoder vectors d_s = W_dec^s[i] (norms n_s = ‖d_s‖):
//   relative norm (Anthropic 2024, Kissane et al. 2024), two sources A, B:   r_i = n_B / (n_A + n_B)   ∈ [0, 1]
//     0: only A's reconstruction uses it; 1: only B's; ½: both, equally.
//   relative norm difference (Minder et al. 2025, "Robustly identifying concepts introduced during chat fine-tuning"):
//     Δ_i = ½·((n_B − n_A) / max(n_A, n_B) + 1)  ∈ [0, 1], same ends and middle, spread differently between them
//   decoder cosine cos(d_A, d_B): whether a latent both sources use means the same direction in both
//   class, by Δ (Minder et al.'s thresholds, configurable): "B only" Δ > 0.9, "A only" Δ < 0.1, "shared" 0.4 ≤ Δ ≤ 0.6,
//     "other" between; "dead" when every n_s is 0.
// With more than two sources (a multi-layer crosscoder, or several fine-tunes), each latent reports its norms, the source
// it writes to most (its peak) and the share of the summed norm that source holds.
// The decoder's norms are in the units training saw (after the input scales), as in the papers.
using System.Numerics.Tensors;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Loupe.Dictionaries.Crosscoders;

/// <summary>Thresholds on Δ that classify latents (Minder et al.'s by default).</summary>
public sealed record CrosscoderDiffOptions
{
    /// <summary>Δ above this: only the second source uses the latent.</summary>
    public double OnlySecondAbove { get; init; } = 0.9;

    /// <summary>Δ below this: only the first source uses it.</summary>
    public double OnlyFirstBelow { get; init; } = 0.1;

    /// <summary>Δ in [SharedFrom, SharedTo]: shared.</summary>
    public double SharedFrom { get; init; } = 0.4;

    /// <summary>Upper end of the shared band.</summary>
    public double SharedTo { get; init; } = 0.6;

    /// <summary>Bins of the relative-norm and Δ histograms over [0, 1] (cosines: the same count over [−1, 1]).</summary>
    public int Bins { get; init; } = 50;

    /// <summary>How many latents each class lists, most extreme first.</summary>
    public int Top { get; init; } = 20;

    /// <exception cref="InputError">Thresholds out of [0, 1] or out of order, or bins / top out of range.</exception>
    public void Validate()
    {
        if (!(OnlyFirstBelow >= 0 && OnlyFirstBelow <= SharedFrom && SharedFrom <= SharedTo && SharedTo <= OnlySecondAbove && OnlySecondAbove <= 1))
            throw new InputError($"argument: thresholds: expected 0 ≤ only-first ({OnlyFirstBelow}) ≤ shared-from ({SharedFrom}) ≤ shared-to ({SharedTo}) ≤ only-second ({OnlySecondAbove}) ≤ 1");
        if (Bins is < 1 or > 10_000) throw new InputError($"argument: --bins: expected 1 to 10000, got {Bins}");
        if (Top is < 0 or > 1_000_000) throw new InputError($"argument: --top: expected 0 to 1000000, got {Top}");
    }
}

/// <summary>One latent's decoder statistics.</summary>
public sealed record CrosscoderLatentDiff(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("norms")] float[] Norms,
    [property: JsonPropertyName("relative_norm")] double? RelativeNorm,
    [property: JsonPropertyName("norm_diff")] double? NormDiff,
    [property: JsonPropertyName("cosine")] double? Cosine,
    [property: JsonPropertyName("peak_source")] int PeakSource,
    [property: JsonPropertyName("peak_share")] double PeakShare,
    [property: JsonPropertyName("class")] string Class);

/// <summary>A histogram over [Lo, Hi] in equal bins.</summary>
public sealed record CrosscoderHistogram(
    [property: JsonPropertyName("lo")] double Lo,
    [property: JsonPropertyName("hi")] double Hi,
    [property: JsonPropertyName("counts")] long[] Counts);

/// <summary>The diff of a whole crosscoder.</summary>
public sealed record CrosscoderDiffResult
{
    [JsonPropertyName("crosscoder")] public required string Origin { get; init; }
    [JsonPropertyName("sources")] public required IReadOnlyList<string> Sources { get; init; }
    [JsonPropertyName("hooks")] public required IReadOnlyList<string> Hooks { get; init; }
    [JsonPropertyName("d_sae")] public int DSae { get; init; }
    [JsonPropertyName("thresholds")] public required CrosscoderDiffOptions Thresholds { get; init; }
    /// <summary>Latents per class ("A only", "B only", "shared", "other", "dead"; with more sources "peak S" and "dead").</summary>
    [JsonPropertyName("counts")] public required IReadOnlyDictionary<string, int> Counts { get; init; }
    [JsonPropertyName("relative_norm_histogram")] public CrosscoderHistogram? RelativeNormHistogram { get; init; }
    [JsonPropertyName("norm_diff_histogram")] public CrosscoderHistogram? NormDiffHistogram { get; init; }
    /// <summary>Decoder cosines of the shared latents.</summary>
    [JsonPropertyName("shared_cosine_histogram")] public CrosscoderHistogram? SharedCosineHistogram { get; init; }
    /// <summary>The most extreme latents of each class (by Δ; shared ones nearest ½ first).</summary>
    [JsonPropertyName("top")] public required IReadOnlyDictionary<string, IReadOnlyList<int>> Top { get; init; }
    /// <summary>Every latent, in index order.</summary>
    [JsonPropertyName("latents")] public required IReadOnlyList<CrosscoderLatentDiff> Latents { get; init; }

    /// <summary>Indented JSON, the layout `loupe crosscoder diff` writes.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, new JsonSerializerOptions { WriteIndented = false });
}

/// <summary>Computes <see cref="CrosscoderDiffResult"/> (see the file header).</summary>
public static class CrosscoderDiff
{
    /// <summary>The diff of <paramref name="crosscoder"/>'s latents.</summary>
    /// <exception cref="InputError">Invalid options.</exception>
    public static CrosscoderDiffResult Compute(Crosscoder crosscoder, CrosscoderDiffOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(crosscoder);
        var o = options ?? new CrosscoderDiffOptions();
        o.Validate();
        int n = crosscoder.Sources.Count, f = crosscoder.DSae;
        var labels = crosscoder.SourceLabels();
        string first = "A only", second = "B only";
        if (n == 2) (first, second) = ($"{labels[0]} only", $"{labels[1]} only");
        var norms = crosscoder.DecoderNorms();
        var latents = new CrosscoderLatentDiff[f];
        for (int i = 0; i < f; i++)
        {
            var ni = norms.AsSpan(i * n, n);
            float sum = TensorPrimitives.Sum(ni);
            int peak = TensorPrimitives.IndexOfMax(ni);
            double share = sum > 0 ? ni[peak] / (double)sum : 0;
            if (sum == 0)
            {
                latents[i] = new CrosscoderLatentDiff(i, ni.ToArray(), null, null, null, peak, 0, "dead");
                continue;
            }
            if (n != 2)
            {
                latents[i] = new CrosscoderLatentDiff(i, ni.ToArray(), null, null, null, peak, share, $"peak {labels[peak]}");
                continue;
            }
            double a = ni[0], b = ni[1];
            double rel = b / (a + b);
            double diff = 0.5 * ((b - a) / Math.Max(a, b) + 1);
            double? cos = a > 0 && b > 0 ? Cosine(crosscoder.DecoderVector(i, 0), crosscoder.DecoderVector(i, 1)) : null;
            string cls = diff > o.OnlySecondAbove ? second : diff < o.OnlyFirstBelow ? first : diff >= o.SharedFrom && diff <= o.SharedTo ? "shared" : "other";
            latents[i] = new CrosscoderLatentDiff(i, ni.ToArray(), rel, diff, cos, peak, share, cls);
        }

        var counts = latents.GroupBy(l => l.Class).OrderBy(g => g.Key, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Count());
        var top = new Dictionary<string, IReadOnlyList<int>>();
        foreach (var g in latents.Where(l => l.Class != "dead").GroupBy(l => l.Class))
        {
            IEnumerable<CrosscoderLatentDiff> ordered = g.Key == second ? g.OrderByDescending(l => l.NormDiff).ThenBy(l => l.Index)
                : g.Key == first ? g.OrderBy(l => l.NormDiff).ThenBy(l => l.Index)
                : g.Key == "shared" ? g.OrderBy(l => Math.Abs(l.NormDiff!.Value - 0.5)).ThenBy(l => l.Index)
                : g.OrderByDescending(l => l.PeakShare).ThenBy(l => l.Index);
            top[g.Key] = ordered.Take(o.Top).Select(l => l.Index).ToArray();
        }
        var live = latents.Where(l => l.Class != "dead").ToArray();
        return new CrosscoderDiffResult
        {
            Origin = crosscoder.Origin, Sources = labels, Hooks = crosscoder.Sources.Select(s => s.Hook).ToArray(), DSae = f, Thresholds = o, Counts = counts, Top = top, Latents = latents,
            RelativeNormHistogram = n == 2 ? Histogram(live.Select(l => l.RelativeNorm!.Value), 0, 1, o.Bins) : null,
            NormDiffHistogram = n == 2 ? Histogram(live.Select(l => l.NormDiff!.Value), 0, 1, o.Bins) : null,
            SharedCosineHistogram = n == 2 ? Histogram(live.Where(l => l.Class == "shared" && l.Cosine is not null).Select(l => l.Cosine!.Value), -1, 1, o.Bins) : null,
        };
    }

    static double Cosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double dot = 0, na = 0, nb = 0;
        for (int j = 0; j < a.Length; j++)
        {
            dot += (double)a[j] * b[j];
            na += (double)a[j] * a[j];
            nb += (double)b[j] * b[j];
        }
        return Math.Clamp(dot / Math.Sqrt(na * nb), -1, 1);
    }

    /// <summary>Counts of <paramref name="values"/> in <paramref name="bins"/> equal bins over [lo, hi] (hi in the last bin).</summary>
    public static CrosscoderHistogram Histogram(IEnumerable<double> values, double lo, double hi, int bins)
    {
        var counts = new long[bins];
        foreach (double v in values)
        {
            int b = (int)Math.Floor((v - lo) / (hi - lo) * bins);
            counts[Math.Clamp(b, 0, bins - 1)]++;
        }
        return new CrosscoderHistogram(lo, hi, counts);
    }
}

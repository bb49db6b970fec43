namespace Loupe.Steering;

/// <summary>
/// How well a scalar score separates a positive from a negative class. Throughout, "positive" is
/// predicted when <c>score &gt; threshold</c>.
/// </summary>
public static class Separation
{
    /// <summary>
    /// Area under the ROC curve: the probability that a random positive scores above a random
    /// negative, ties counting one half (Mann–Whitney U / (n₊·n₋)). 0.5 is chance, 1 perfect.
    /// </summary>
    /// <exception cref="ArgumentException">Either class is empty.</exception>
    public static double Auroc(IReadOnlyList<double> positive, IReadOnlyList<double> negative)
    {
        RequireBoth(positive, negative);
        double wins = 0;
        foreach (double p in positive)
            foreach (double n in negative)
                wins += p > n ? 1 : p == n ? 0.5 : 0;
        return wins / ((double)positive.Count * negative.Count);
    }

    /// <summary>Fraction of both classes on the right side of <paramref name="threshold"/>.</summary>
    /// <exception cref="ArgumentException">Either class is empty.</exception>
    public static double Accuracy(IReadOnlyList<double> positive, IReadOnlyList<double> negative, double threshold)
    {
        RequireBoth(positive, negative);
        int right = positive.Count(p => p > threshold) + negative.Count(n => n <= threshold);
        return right / (double)(positive.Count + negative.Count);
    }

    /// <summary>
    /// The threshold of highest accuracy over the two classes: every midpoint between consecutive
    /// sorted scores is tried; among equally accurate ones the one nearest the midpoint of the
    /// class means wins (so a clean gap is split near its middle).
    /// </summary>
    /// <exception cref="ArgumentException">Either class is empty.</exception>
    public static (double Threshold, double Accuracy) BestThreshold(IReadOnlyList<double> positive, IReadOnlyList<double> negative)
    {
        RequireBoth(positive, negative);
        var all = positive.Concat(negative).Order().ToArray();
        double centre = MeanMidpoint(positive, negative);
        var candidates = new List<double> { all[0] - 1e-6 * (1 + Math.Abs(all[0])) };
        for (int i = 0; i + 1 < all.Length; i++)
            if (all[i + 1] > all[i]) candidates.Add((all[i] + all[i + 1]) / 2);
        double best = candidates[0], bestAccuracy = -1;
        foreach (double t in candidates)
        {
            double acc = Accuracy(positive, negative, t);
            if (acc > bestAccuracy + 1e-12 || (Math.Abs(acc - bestAccuracy) <= 1e-12 && Math.Abs(t - centre) < Math.Abs(best - centre)))
                (best, bestAccuracy) = (t, acc);
        }
        return (best, bestAccuracy);
    }

    /// <summary>(mean₊ + mean₋) / 2.</summary>
    public static double MeanMidpoint(IReadOnlyList<double> positive, IReadOnlyList<double> negative) => (positive.Average() + negative.Average()) / 2;

    /// <summary>
    /// Projection gap over pooled standard deviation, (mean₊ − mean₋) / s, with
    /// s² = ((n₊−1)s₊² + (n₋−1)s₋²) / (n₊ + n₋ − 2) (Cohen's d). +∞ when the gap is positive and
    /// both classes are constant.
    /// </summary>
    /// <exception cref="ArgumentException">Either class is empty.</exception>
    public static double EffectSize(IReadOnlyList<double> positive, IReadOnlyList<double> negative)
    {
        RequireBoth(positive, negative);
        double gap = positive.Average() - negative.Average();
        int dof = positive.Count + negative.Count - 2;
        double pooled = dof <= 0 ? 0 : Math.Sqrt(((positive.Count - 1) * Variance(positive) + (negative.Count - 1) * Variance(negative)) / dof);
        return pooled == 0 ? (gap == 0 ? 0 : gap * double.PositiveInfinity) : gap / pooled;
    }

    /// <summary>Sample variance (n − 1 in the denominator); 0 for fewer than two values.</summary>
    public static double Variance(IReadOnlyList<double> values)
    {
        if (values.Count < 2) return 0;
        double mean = values.Average();
        return values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1);
    }

    /// <summary>Mean and sample standard deviation (0 for a single value).</summary>
    /// <exception cref="ArgumentException">No values.</exception>
    public static (double Mean, double Sd) MeanSd(IReadOnlyList<double> values)
    {
        if (values.Count == 0) throw new ArgumentException("no values to average", nameof(values));
        return (values.Average(), Math.Sqrt(Variance(values)));
    }

    static void RequireBoth(IReadOnlyList<double> positive, IReadOnlyList<double> negative)
    {
        if (positive.Count == 0 || negative.Count == 0)
            throw new ArgumentException($"both classes need at least one score (positive {positive.Count}, negative {negative.Count})");
    }
}

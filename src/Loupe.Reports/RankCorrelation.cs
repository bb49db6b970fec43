namespace Loupe.Reports;

/// <summary>Rank correlation, e.g. of attribution against activation patching, or of a score against a steering coefficient.</summary>
public static class RankCorrelation
{
    /// <summary>Spearman's ρ (Pearson correlation of average ranks; ties share their mean rank). NaN for fewer than 2 values or a constant input.</summary>
    /// <exception cref="ArgumentException">The sequences differ in length.</exception>
    public static double Spearman(IReadOnlyList<double> a, IReadOnlyList<double> b)
    {
        if (a.Count != b.Count) throw new ArgumentException($"rank correlation needs equal lengths ({a.Count} vs {b.Count})");
        if (a.Count < 2) return double.NaN;
        return Pearson(Ranks(a), Ranks(b));
    }

    static double[] Ranks(IReadOnlyList<double> values)
    {
        var order = Enumerable.Range(0, values.Count).OrderBy(i => values[i]).ToArray();
        var ranks = new double[values.Count];
        for (int start = 0; start < order.Length;)
        {
            int end = start;
            while (end + 1 < order.Length && values[order[end + 1]] == values[order[start]]) end++;
            double mean = (start + end) / 2.0 + 1;
            for (int k = start; k <= end; k++) ranks[order[k]] = mean;
            start = end + 1;
        }
        return ranks;
    }

    static double Pearson(double[] x, double[] y)
    {
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Length; i++)
        {
            sxy += (x[i] - mx) * (y[i] - my);
            sxx += (x[i] - mx) * (x[i] - mx);
            syy += (y[i] - my) * (y[i] - my);
        }
        return sxx == 0 || syy == 0 ? double.NaN : sxy / Math.Sqrt(sxx * syy);
    }
}

using System.Globalization;

namespace Loupe.Tensors.Tests;

/// <summary>Seeded random buffers. Every test picks its own seed, so a failure reproduces exactly.</summary>
static class TestRandom
{
    /// <summary>n values uniform in [lo, hi).</summary>
    public static float[] Uniform(Random rng, int n, float lo = -1f, float hi = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = lo + (hi - lo) * rng.NextSingle();
        return a;
    }

    public static float[] Uniform(int seed, int n, float lo = -1f, float hi = 1f) => Uniform(new Random(seed), n, lo, hi);

    public static float[] Filled(int n, float value)
    {
        var a = new float[n];
        Array.Fill(a, value);
        return a;
    }

    public static float MaxAbs(ReadOnlySpan<float> a)
    {
        float m = 0;
        foreach (var v in a) m = Math.Max(m, Math.Abs(v));
        return m;
    }
}

/// <summary>
/// Element-wise closeness, <c>|actual − expected| ≤ atol + rtol·|expected|</c>. NaN must meet NaN and
/// infinities must match exactly. A failure names the worst element (as a multi-index when a shape is given).
/// </summary>
static class Close
{
    public static void All(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double atol, double rtol, string what,
        int[]? shape = null)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: expected {expected.Length} elements, got {actual.Length}");
        int bad = 0, worst = -1;
        double worstExcess = double.NegativeInfinity;
        for (int i = 0; i < expected.Length; i++)
        {
            float e = expected[i], a = actual[i];
            double excess;
            if (float.IsNaN(e) || float.IsNaN(a) || float.IsInfinity(e) || float.IsInfinity(a))
                excess = e.Equals(a) ? double.NegativeInfinity : double.PositiveInfinity;
            else
                excess = Math.Abs((double)a - e) - (atol + rtol * Math.Abs((double)e));
            if (excess > 0) bad++;
            if (excess > worstExcess) { worstExcess = excess; worst = i; }
        }
        if (bad == 0) return;
        float we = expected[worst], wa = actual[worst];
        Assert.Fail(string.Create(CultureInfo.InvariantCulture,
            $"{what}: {bad} of {expected.Length} elements differ; worst at {Index(worst, shape)}: expected {we:R}, got {wa:R} " +
            $"(|diff| {Math.Abs((double)wa - we):E2}, allowed {atol + rtol * Math.Abs((double)we):E2})"));
    }

    /// <summary>Bit-for-bit equality (for outputs that must be untouched or exactly reproduced).</summary>
    public static void Exact(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what, int[]? shape = null) =>
        All(expected, actual, 0, 0, what, shape);

    static string Index(int flat, int[]? shape)
    {
        if (shape is null) return $"[{flat}]";
        var idx = new int[shape.Length];
        for (int d = shape.Length - 1; d >= 0; d--) { idx[d] = flat % shape[d]; flat /= shape[d]; }
        return "[" + string.Join(", ", idx) + "]";
    }
}

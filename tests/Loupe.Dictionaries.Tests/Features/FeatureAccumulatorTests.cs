using Loupe.Dictionaries.Features;

namespace Loupe.Dictionaries.Tests.Features;

public class FeatureAccumulatorTests
{
    [Fact]
    public void TopK_KeepsTheLargest_TiesToTheEarlierToken()
    {
        var rng = new Random(4);
        const int features = 3, k = 7;
        var top = new TopKTracker(features, k, windowWidth: 1);
        var all = Enumerable.Range(0, features).Select(_ => new List<(float A, int C, int P)>()).ToArray();
        for (int c = 0; c < 50; c++)
            for (int p = 0; p < 9; p++)
                for (int f = 0; f < features; f++)
                {
                    float a = rng.Next(0, 4) == 0 ? rng.Next(1, 6) : 0; // few distinct values: many ties
                    if (!(a > 0)) continue;
                    all[f].Add((a, c, p));
                    if (a > top.Threshold[f]) top.Slots.Window(top.Admit(f, a, c, p))[0] = a;
                }
        for (int f = 0; f < features; f++)
        {
            var expected = all[f].OrderByDescending(t => t.A).ThenBy(t => t.C).ThenBy(t => t.P).Take(k).ToList();
            var kept = top.Slots.Sorted(f).Select(s => (top.Slots.Act[s], top.Slots.Context[s], top.Slots.Position[s])).ToList();
            Assert.Equal(expected, kept);
            Assert.All(top.Slots.Sorted(f), s => Assert.Equal(top.Slots.Act[s], top.Slots.Window(s)[0]));
        }
    }

    [Fact]
    public void Reservoir_KeepsEachTokenWithProbabilitySOverN()
    {
        // 12 000 independent runs of Algorithm R over 10 tokens, 3 kept: each token kept in 30% of runs (σ ≈ 0.42%).
        const int runs = 12_000, tokens = 10, s = 3;
        var kept = new int[tokens];
        for (int run = 0; run < runs; run++)
        {
            var sampler = new ReservoirSampler(groups: 1, samples: s, windowWidth: 1, seed: run);
            for (int t = 0; t < tokens; t++) sampler.Offer(0, t, t, 0);
            Assert.Equal(tokens, sampler.Seen[0]);
            Assert.Equal(s, sampler.Slots.Count[0]);
            var chosen = Enumerable.Range(0, s).Select(i => sampler.Slots.Context[i]).ToArray();
            Assert.Equal(s, chosen.Distinct().Count());
            foreach (int c in chosen) kept[c]++;
        }
        foreach (int count in kept) Assert.InRange(count / (double)runs, 0.3 - 0.02, 0.3 + 0.02);
    }

    [Fact]
    public void Bins_SplitZeroToMaxIntoEqualHalfOpenIntervals()
    {
        Assert.Equal(0, ActivationBins.Of(1e-9f, 4f, 4));
        Assert.Equal(0, ActivationBins.Of(1f, 4f, 4));       // (0, 1]
        Assert.Equal(1, ActivationBins.Of(1.0001f, 4f, 4));  // (1, 2]
        Assert.Equal(3, ActivationBins.Of(4f, 4f, 4));       // max is in the last bin
        Assert.Equal(3, ActivationBins.Of(4.001f, 4f, 4));   // float noise above max stays in it
        Assert.Equal([0, 1, 2, 3, 4], ActivationBins.Edges(4f, 4));
    }

    [Fact]
    public void LogitSummary_TopAndBottomWithTiesToTheLowerId_AndAFullHistogram()
    {
        float[] logits = [0.5f, -2f, 3f, 3f, -2f, 0f, 1f];
        var s = LogitEffects.Summarize(logits, top: 3, bins: 5);
        Assert.Equal([new LogitEntry(2, 3f), new LogitEntry(3, 3f), new LogitEntry(6, 1f)], s.Promoted);
        Assert.Equal([new LogitEntry(1, -2f), new LogitEntry(4, -2f), new LogitEntry(5, 0f)], s.Suppressed);
        Assert.Equal([-2, -1, 0, 1, 2, 3], s.HistogramEdges);
        Assert.Equal([2L, 0, 2, 1, 2], s.HistogramCounts); // [-2,-1) [-1,0) [0,1) [1,2) [2,3]
        Assert.Throws<InputError>(() => LogitEffects.Summarize([1f, float.NaN], 1, 2));
    }
}

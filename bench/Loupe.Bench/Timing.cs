using System.Diagnostics;
using System.Runtime;

namespace Loupe.Bench;

/// <summary>Summary of repeated timings, in milliseconds. The median is what every table reports.</summary>
public sealed record Stats(double MedianMs, double MinMs, double MaxMs, int Samples)
{
    public static Stats Of(IReadOnlyList<double> ms)
    {
        if (ms.Count == 0) throw new ArgumentException("no samples", nameof(ms));
        return new Stats(Median(ms), ms.Min(), ms.Max(), ms.Count);
    }

    public static double Median(IEnumerable<double> values)
    {
        var s = values.OrderBy(v => v).ToArray();
        if (s.Length == 0) return double.NaN;
        return s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
    }

    /// <summary>Half the min–max range relative to the median: a rough noise figure.</summary>
    public double SpreadPct => MedianMs > 0 ? 50 * (MaxMs - MinMs) / MedianMs : 0;
}

/// <summary>Timing primitives shared by every benchmark.</summary>
public static class Timing
{
    public static double ElapsedMs(long startTimestamp) => Stopwatch.GetElapsedTime(startTimestamp).TotalMilliseconds;

    /// <summary>
    /// A full blocking, compacting collection, so that one measurement does not pay for the
    /// garbage of the previous one. It runs outside the timed region; collections that a forward
    /// pass triggers itself are still inside it.
    /// </summary>
    public static void Settle()
    {
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
    }

    /// <summary>Runs <paramref name="action"/> <paramref name="warmup"/> times untimed, then <paramref name="reps"/> times timed.</summary>
    public static Stats Measure(Action action, int warmup, int reps, bool settle = false)
    {
        for (int i = 0; i < warmup; i++) action();
        var samples = new List<double>(reps);
        for (int i = 0; i < reps; i++)
        {
            if (settle) Settle();
            long t0 = Stopwatch.GetTimestamp();
            action();
            samples.Add(ElapsedMs(t0));
        }
        return Stats.Of(samples);
    }
}

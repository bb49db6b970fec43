using System.Diagnostics;
using Loupe.Tensors.Kernels;

namespace Loupe.Bench;

/// <summary>One product shape timed alone through <see cref="Gemm.Sgemm"/>.</summary>
/// <param name="MsPerCall">Median over repetitions of the time of one call.</param>
/// <param name="UsedBy">The forward configurations that make this product (e.g. "gpt2-small b8").</param>
public sealed record SgemmResult(string Label, string Shape, int M, int N, int K, bool TransB, int Lda, int Ldb, int Ldc,
    Stats MsPerCall, double Gflops, int CallsPerSample, List<string> UsedBy);

/// <summary>
/// The sgemm roofline: GFLOP/s of <see cref="Gemm.Sgemm"/> at the forward pass's own shapes and
/// strides, and at a large square product as the machine's practical peak. Each distinct shape is
/// timed once per process (memoized), so the forward benchmark and the sgemm table share numbers.
/// </summary>
public sealed class SgemmBench(int warmup, int reps, TextWriter log)
{
    /// <summary>Products shorter than this are repeated within one sample, so the clock's resolution does not matter.</summary>
    const double MinSampleMs = 25;

    readonly Dictionary<string, SgemmResult> _results = new(StringComparer.Ordinal);

    public IReadOnlyCollection<SgemmResult> Results => _results.Values;

    /// <summary>Times <paramref name="shape"/> (once per distinct call) and notes who uses it.</summary>
    public SgemmResult Get(GemmShape shape, string? usedBy = null)
    {
        if (!_results.TryGetValue(shape.Key, out var r))
        {
            r = Time(shape);
            _results[shape.Key] = r;
        }
        if (usedBy is not null && !r.UsedBy.Contains(usedBy)) r.UsedBy.Add(usedBy);
        return r;
    }

    /// <summary>The square product <c>[n×n]·[n×n]</c>: the machine's practical sgemm peak.</summary>
    public SgemmResult Peak(int n) => Get(new GemmShape($"square {n}³ (peak)", n, n, n, false, n, n, n, 1));

    /// <summary>
    /// Prepares the limit of one forward configuration to be timed between forward repetitions,
    /// so that the forward and its limit see the same load on a shared machine.
    /// </summary>
    public LimitPass PrepareLimit(IReadOnlyList<GemmShape> products, string usedBy)
    {
        // Calibrate each product (memoized), then repeat small ones within a sample.
        var inner = products.Select(p => (int)Math.Clamp(Math.Ceiling(5 / Get(p, usedBy).MsPerCall.MedianMs), 1, 100_000)).ToArray();
        return new LimitPass(products, inner);
    }

    /// <summary>Times the product of <paramref name="earlier"/> again; the table keeps the faster of the two.</summary>
    public SgemmResult Repeat(SgemmResult earlier)
    {
        var shape = new GemmShape(earlier.Label, earlier.M, earlier.N, earlier.K, earlier.TransB, earlier.Lda, earlier.Ldb, earlier.Ldc, 1);
        var again = Time(shape);
        if (again.Gflops > earlier.Gflops && _results.ContainsKey(shape.Key))
            _results[shape.Key] = again with { UsedBy = earlier.UsedBy };
        return again;
    }

    SgemmResult Time(GemmShape s)
    {
        var call = Operands(s);
        call(); // first call: page-faults the operands, starts BLAS threads
        long t0 = Stopwatch.GetTimestamp();
        call();
        double once = Timing.ElapsedMs(t0);
        int inner = (int)Math.Clamp(Math.Ceiling(MinSampleMs / Math.Max(once, 1e-4)), 1, 100_000);
        var stats = Timing.Measure(() => { for (int i = 0; i < inner; i++) call(); }, warmup, reps);
        var perCall = new Stats(stats.MedianMs / inner, stats.MinMs / inner, stats.MaxMs / inner, stats.Samples);
        double gflops = s.Flops / (perCall.MedianMs * 1e6);
        log.WriteLine($"  sgemm {s.Label,-18} {s.ShapeText,-26} {perCall.MedianMs,10:F3} ms {gflops,7:F1} GFLOP/s");
        return new SgemmResult(s.Label, s.ShapeText, s.M, s.N, s.K, s.TransB, s.Lda, s.Ldb, s.Ldc, perCall, gflops, inner, []);
    }

    /// <summary>
    /// Operands sized for the strides, exactly as the forward pass's views are, and the call.
    /// Values uniform in [−1, 1) (sgemm's speed does not depend on them; no denormals).
    /// </summary>
    internal static Action Operands(GemmShape s)
    {
        long aLen = (long)(s.M - 1) * s.Lda + s.K;
        long bLen = s.TransB ? (long)(s.N - 1) * s.Ldb + s.K : (long)(s.K - 1) * s.Ldb + s.N;
        long cLen = (long)(s.M - 1) * s.Ldc + s.N;
        var rng = new Random(s.M * 31 + s.N * 17 + s.K);
        float[] a = Random(rng, aLen), b = Random(rng, bLen), c = new float[cLen];
        return () => Gemm.Sgemm(false, s.TransB, s.M, s.N, s.K, 1f, a, s.Lda, b, s.Ldb, 0f, c, s.Ldc);
    }

    static float[] Random(Random rng, long n)
    {
        var x = new float[n];
        for (long i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}

/// <summary>
/// The sgemm limit of one forward configuration, timed as one pass over its products
/// (each product <c>inner</c> times, scaled to its count per forward).
/// </summary>
public sealed class LimitPass
{
    readonly IReadOnlyList<GemmShape> _products;
    readonly int[] _inner;
    readonly Action[] _calls;
    readonly List<double>[] _perProduct;
    readonly List<double> _totals = [];

    internal LimitPass(IReadOnlyList<GemmShape> products, int[] inner)
    {
        _products = products;
        _inner = inner;
        _calls = products.Select(SgemmBench.Operands).ToArray();
        foreach (var c in _calls) c();
        _perProduct = products.Select(_ => new List<double>()).ToArray();
    }

    /// <summary>Times one pass; returns the limit in ms for one forward.</summary>
    public double RunOnce()
    {
        double total = 0;
        for (int i = 0; i < _products.Count; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (int r = 0; r < _inner[i]; r++) _calls[i]();
            double ms = Timing.ElapsedMs(t0) / _inner[i] * _products[i].Count;
            _perProduct[i].Add(ms);
            total += ms;
        }
        _totals.Add(total);
        return total;
    }

    public Stats Total => Stats.Of(_totals);

    /// <summary>Median time per forward of the products labelled <paramref name="label"/> (all their calls).</summary>
    public double MedianMs(string label)
    {
        int i = _products.Select((p, j) => (p, j)).First(x => x.p.Label == label).j;
        return Stats.Median(_perProduct[i]);
    }
}

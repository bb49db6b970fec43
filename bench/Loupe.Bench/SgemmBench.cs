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

    /// <summary>
    /// "The limit" for a forward pass: the time its products take when each is timed alone,
    /// summed with their counts — what the forward would take if everything but GEMM were free.
    /// </summary>
    public double LimitMs(IEnumerable<GemmShape> products, string usedBy) =>
        products.Sum(p => p.Count * Get(p, usedBy).MsPerCall.MedianMs);

    /// <summary>The square product <c>[n×n]·[n×n]</c>: the machine's practical sgemm peak.</summary>
    public SgemmResult Peak(int n) => Get(new GemmShape($"square {n}³ (peak)", n, n, n, false, n, n, n, 1));

    SgemmResult Time(GemmShape s)
    {
        // Operands sized for the strides, exactly as the forward pass's views are.
        long aLen = (long)(s.M - 1) * s.Lda + s.K;
        long bLen = s.TransB ? (long)(s.N - 1) * s.Ldb + s.K : (long)(s.K - 1) * s.Ldb + s.N;
        long cLen = (long)(s.M - 1) * s.Ldc + s.N;
        var rng = new Random(s.M * 31 + s.N * 17 + s.K);
        float[] a = Random(rng, aLen), b = Random(rng, bLen), c = new float[cLen];

        void Call() => Gemm.Sgemm(false, s.TransB, s.M, s.N, s.K, 1f, a, s.Lda, b, s.Ldb, 0f, c, s.Ldc);

        Call(); // first call: page-faults the operands, starts BLAS threads
        long t0 = Stopwatch.GetTimestamp();
        Call();
        double once = Timing.ElapsedMs(t0);
        int inner = (int)Math.Clamp(Math.Ceiling(MinSampleMs / Math.Max(once, 1e-4)), 1, 100_000);
        var stats = Timing.Measure(() => { for (int i = 0; i < inner; i++) Call(); }, warmup, reps);
        var perCall = new Stats(stats.MedianMs / inner, stats.MinMs / inner, stats.MaxMs / inner, stats.Samples);
        double gflops = s.Flops / (perCall.MedianMs * 1e6);
        log.WriteLine($"  sgemm {s.Label,-18} {s.ShapeText,-26} {perCall.MedianMs,10:F3} ms {gflops,7:F1} GFLOP/s");
        return new SgemmResult(s.Label, s.ShapeText, s.M, s.N, s.K, s.TransB, s.Lda, s.Ldb, s.Ldc, perCall, gflops, inner, []);
    }

    static float[] Random(Random rng, long n)
    {
        var x = new float[n];
        for (long i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}

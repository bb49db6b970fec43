using System.Diagnostics;
using System.Runtime.CompilerServices;
using Loupe.Models;
using Loupe.Models.Loading;

namespace Loupe.Bench;

/// <summary>Loading one model: time and resident memory around it.</summary>
/// <param name="FirstLoadMs">The first LoadFolder in this process (includes JIT of the loader).</param>
/// <param name="Reload">Later loads of the same folder (the file is in the page cache).</param>
/// <param name="AfterForward">After one batch-1 forward, which touches every weight page.</param>
public sealed record LoadResult(string Model, string Folder, long FileBytes, long Parameters, double FirstLoadMs, Stats Reload,
    MemorySnapshot BeforeLoad, MemorySnapshot AfterLoad, MemorySnapshot AfterForward);

/// <summary>One mode (plain Run or RunWithCache of every hook) at one configuration.</summary>
/// <param name="AllocatedBytes">Median bytes allocated per forward, all threads (GC.GetTotalAllocatedBytes deltas).</param>
/// <param name="Gen0">Mean garbage collections per forward, by generation.</param>
/// <param name="GcPauseMs">Median time the runtime was paused for garbage collection during one forward (GC.GetTotalPauseDuration).</param>
/// <param name="CachedBytes">Bytes of activations the returned cache holds (0 for plain Run).</param>
/// <param name="PageFaults">Median minor page faults of the process per forward (/proc/self/stat; −1 where unreadable): fresh
/// memory the kernel had to map and zero, which large short-lived arrays cost on every pass.</param>
public sealed record ModeResult(Stats Time, double TokensPerSecond, double Gflops, double AllocatedBytes,
    double Gen0, double Gen1, double Gen2, double GcPauseMs, long CachedBytes, int CachedHooks, double PageFaults = -1);

/// <summary>The forward benchmark of one model at one batch size.</summary>
/// <param name="Flops">FLOPs of one forward (<see cref="Flops.Forward"/>).</param>
/// <param name="CacheExtraPct">How much longer RunWithCache(all hooks) takes than Run, in %.</param>
/// <param name="Limit">The same products timed alone through Gemm.Sgemm and summed (ms per forward).</param>
/// <param name="RatioToLimit">Achieved GFLOP/s ÷ the limit's GFLOP/s (= limit ms ÷ forward ms, medians).</param>
/// <param name="RatioToPeak">Achieved GFLOP/s ÷ the square-sgemm peak.</param>
public sealed record ForwardConfigResult(string Model, int Batch, int Length, double Flops, ModeResult Run, ModeResult Cache,
    double CacheExtraPct, Stats Limit, double LimitGflops, double RatioToLimit, double PeakGflops, double RatioToPeak,
    double? ProfilePlainTotalMs, double? ProfileCacheTotalMs, List<ProfileRow>? Profile, string Summary);

/// <summary>
/// Loads each model through <see cref="ModelLoader.LoadFolder"/> and times its forward pass:
/// 1. <see cref="MeasureLoad"/>: RSS before loading, LoadFolder time, RSS after loading and after
///    one forward (run before anything else has grown the heap);
/// 2. per batch size, warm-up, then repetitions that alternate Run, RunWithCache and one pass
///    over the same products through Gemm.Sgemm (the limit), so that slow periods from other
///    processes on a shared machine hit all three alike;
/// 3. the hook profile of where the time goes.
/// </summary>
public sealed class ForwardBench(BenchOptions o, SgemmBench sgemm, TextWriter log)
{
    const int Length = BenchOptions.SequenceLength;

    public LoadResult MeasureLoad(BenchModel spec, string folder)
    {
        Timing.Settle();
        var before = MemorySnapshot.Read();
        long t0 = Stopwatch.GetTimestamp();
        var model = ModelLoader.LoadFolder(folder);
        double firstLoadMs = Timing.ElapsedMs(t0);
        var afterLoad = MemorySnapshot.Read();
        CheckConfig(spec, model.Config);
        GC.KeepAlive(model.Run(Tokens(spec, 1)));
        Timing.Settle();
        var afterForward = MemorySnapshot.Read();
        long parameters = model.ParameterCount;
        model.Dispose();
        long fileBytes = new FileInfo(Path.Combine(folder, SafeTensorsCheckpoint.SingleFileName)).Length;
        var reload = Timing.Measure(() => ModelLoader.LoadFolder(folder).Dispose(), warmup: 0, reps: o.Quick ? 2 : 3, settle: true);
        log.WriteLine($"{spec.Name}: loaded in {firstLoadMs:F1} ms; RSS {Mb(before.Rss)} → {Mb(afterLoad.Rss)} → {Mb(afterForward.Rss)} MB (file {Mb(fileBytes)} MB)");
        return new LoadResult(spec.Name, folder, fileBytes, parameters, firstLoadMs, reload, before, afterLoad, afterForward);
    }

    public List<ForwardConfigResult> Run(BenchModel spec, string folder, Func<double> peakGflops)
    {
        using var model = ModelLoader.LoadFolder(folder);
        CheckConfig(spec, model.Config);
        return o.Batches.Select(batch => Forward(spec, model, batch, peakGflops)).ToList();
    }

    ForwardConfigResult Forward(BenchModel spec, HookedTransformer model, int batch, Func<double> peakGflops)
    {
        string label = $"{spec.Name} b{batch}";
        var tokens = Tokens(spec, batch);
        double flops = Flops.Forward(spec, batch, Length);
        var products = Flops.Products(spec, batch, Length);
        log.WriteLine($"{label}: {batch}×{Length} tokens, {flops / 1e9:F1} GFLOP per forward");
        var limit = sgemm.PrepareLimit(products, label);

        // 2. Warm-up, then alternate the three measurements. Tiered JIT promotes a method to
        //    optimized code after 30 calls: per-layer code is called n_layers times per forward, so
        //    warm up for at least 32 / n_layers forwards, --warmup pairs and WarmupSeconds.
        long warm = Stopwatch.GetTimestamp();
        int minWarmup = o.Warmup == 0 ? 0 : Math.Max(o.Warmup, (32 + spec.NLayers - 1) / spec.NLayers);
        for (int i = 0; i < 200 && (i < minWarmup || Stopwatch.GetElapsedTime(warm).TotalSeconds < o.WarmupSeconds); i++)
        {
            GC.KeepAlive(model.Run(tokens));
            GC.KeepAlive(model.RunWithCache(tokens, hookPatterns: null));
        }
        var plain = new ModeSamples();
        var cached = new ModeSamples();
        for (int i = 0; i < o.Reps; i++)
        {
            plain.Add(() => model.Run(tokens));
            cached.Add(() => model.RunWithCache(tokens, hookPatterns: null));
            double limitMs = limit.RunOnce();
            log.WriteLine($"  rep {i + 1}/{o.Reps}: run {plain.Ms[^1],9:F1} ms   run+cache {cached.Ms[^1],9:F1} ms   sgemm limit {limitMs,9:F1} ms");
        }
        int n = batch * Length;
        var run = plain.Result(n, flops);
        var cache = cached.Result(n, flops);
        double extraPct = 100 * (cache.Time.MedianMs / run.Time.MedianMs - 1);
        var limitStats = limit.Total;
        double limitGflops = flops / (limitStats.MedianMs * 1e6);
        double peak = peakGflops();
        double ratioLimit = run.Gflops / limitGflops, ratioPeak = run.Gflops / peak;

        // 3. The profile.
        List<ProfileRow>? profile = null;
        double? profilePlain = null, profileCache = null;
        if (o.Profile)
        {
            var (p, c, gemmOf) = new HookProfiler().Profile(model, tokens, o.ProfileReps);
            profile = p.Ms.Keys.Union(c.Ms.Keys)
                .Select(op => new ProfileRow(op, gemmOf[op] is not null, p.Ms.GetValueOrDefault(op), c.Ms.GetValueOrDefault(op),
                    gemmOf[op] is { } gemm ? limit.MedianMs(gemm) : null))
                .OrderByDescending(r => r.PlainMs).ThenByDescending(r => r.CacheMs).ToList();
            profilePlain = p.TotalMs;
            profileCache = c.TotalMs;
        }

        var result = new ForwardConfigResult(spec.Name, batch, Length, flops, run, cache, extraPct, limitStats, limitGflops, ratioLimit,
            peak, ratioPeak, profilePlain, profileCache, profile, "");
        return result with { Summary = Summarize(result) };
    }

    /// <summary>The README-ready line of one configuration.</summary>
    public static string Summarize(ForwardConfigResult f) =>
        $"{f.Model} b{f.Batch}×{f.Length}: {f.Run.Time.MedianMs:F1} ms/forward, {f.Run.TokensPerSecond:F0} tok/s, {f.Run.Gflops:F1} GFLOP/s "
        + $"= {100 * f.RatioToLimit:F0}% of the sgemm limit at its shapes ({f.LimitGflops:F1} GFLOP/s), {100 * f.RatioToPeak:F0}% of the square peak ({f.PeakGflops:F0} GFLOP/s); "
        + $"full cache {f.CacheExtraPct:+0;-0;0}% ({f.Cache.Time.MedianMs:F1} ms, holds {Mb(f.Cache.CachedBytes)} MB); "
        + $"allocates {Mb((long)f.Run.AllocatedBytes)} MB/forward ({Mb((long)f.Cache.AllocatedBytes)} MB with cache)";


    /// <summary>Seeded random token ids in [0, d_vocab).</summary>
    static TokenBatch Tokens(BenchModel spec, int batch)
    {
        var rng = new Random(1000 + batch);
        var ids = new int[batch * Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(spec.DVocab);
        return new TokenBatch(ids, batch, Length);
    }

    /// <summary>The FLOP formula uses the spec; make sure the loaded model has the same shapes.</summary>
    static void CheckConfig(BenchModel spec, ModelConfig c)
    {
        if (c.NLayers != spec.NLayers || c.DModel != spec.DModel || c.NHeads != spec.NHeads || c.DHead != spec.DHead
            || c.DMlp != spec.DMlp || c.VocabOut != spec.DVocab || c.KvHeads != spec.NHeads)
            throw new InvalidOperationException($"{spec.Name}: the loaded config ({c.NLayers} layers, d_model {c.DModel}, {c.NHeads} heads, d_mlp {c.DMlp}, d_vocab {c.VocabOut}) differs from the benchmark spec");
    }

    static string Mb(long bytes) => bytes < 0 ? "?" : $"{bytes / 1e6:F0}";

    /// <summary>Time, allocation and GC counts of repeated forwards of one mode.</summary>
    sealed class ModeSamples
    {
        public readonly List<double> Ms = [];
        readonly List<double> _alloc = [], _pause = [], _faults = [];
        long _gen0, _gen1, _gen2, _cachedBytes;
        int _cachedHooks;

        /// <summary>
        /// Times one forward. No forced GC first: a forced compacting collection returns memory to the
        /// OS and resets the GC's budgets, which makes the next forward page-fault and collect more
        /// than a forward in a user's loop does. Collections the forward triggers are in its time.
        /// </summary>
        [MethodImpl(MethodImplOptions.NoInlining)] // the result is dead once this returns
        public void Add(Func<Loupe.Models.Hooks.ForwardResult> forward)
        {
            int g0 = GC.CollectionCount(0), g1 = GC.CollectionCount(1), g2 = GC.CollectionCount(2);
            long bytes = GC.GetTotalAllocatedBytes(precise: true);
            var pause = GC.GetTotalPauseDuration();
            long faults = MinorFaults();
            long t0 = Stopwatch.GetTimestamp();
            var result = forward();
            double ms = Timing.ElapsedMs(t0);
            if (faults >= 0) _faults.Add(MinorFaults() - faults);
            _pause.Add((GC.GetTotalPauseDuration() - pause).TotalMilliseconds);
            _alloc.Add(GC.GetTotalAllocatedBytes(precise: true) - bytes);
            _gen0 += GC.CollectionCount(0) - g0;
            _gen1 += GC.CollectionCount(1) - g1;
            _gen2 += GC.CollectionCount(2) - g2;
            Ms.Add(ms);
            _cachedHooks = result.Cache.Count;
            _cachedBytes = result.Cache.Names.Sum(name => (long)result.Cache[name].Length * sizeof(float));
        }

        public ModeResult Result(int tokens, double flops)
        {
            var t = Stats.Of(Ms);
            int n = Ms.Count;
            return new ModeResult(t, tokens / (t.MedianMs / 1000), flops / (t.MedianMs * 1e6), Stats.Median(_alloc),
                (double)_gen0 / n, (double)_gen1 / n, (double)_gen2 / n, Stats.Median(_pause), _cachedBytes, _cachedHooks,
                _faults.Count == n ? Stats.Median(_faults) : -1);
        }

        /// <summary>The process's minor page faults so far (field 10 of /proc/self/stat), or −1 off Linux.</summary>
        static long MinorFaults()
        {
            try
            {
                string stat = File.ReadAllText("/proc/self/stat");
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' '); // the command name may hold spaces
                return long.Parse(fields[7], System.Globalization.CultureInfo.InvariantCulture); // field 10 = the 8th after ")"
            }
            catch (IOException) { return -1; }
            catch (UnauthorizedAccessException) { return -1; }
        }
    }
}

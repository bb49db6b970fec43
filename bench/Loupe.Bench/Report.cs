namespace Loupe.Bench;

/// <summary>The stdout tables. Every figure is explained in bench/README.md.</summary>
public static class Report
{
    public static void Environment(TextWriter w, EnvironmentInfo e, BenchOptions o)
    {
        w.WriteLine("== Environment ==");
        w.WriteLine($"CPU        {e.Cpu} ({e.LogicalCores} logical cores)");
        w.WriteLine($"SIMD       {e.Simd}");
        w.WriteLine($"GEMM       {e.Blas}{(e.BlasThreads > 0 ? $", {e.BlasThreads} threads" : "")}{(e.LoupeThreads is null ? "" : $" (LOUPE_THREADS={e.LoupeThreads})")}");
        if (e.BlasConfig is not null) w.WriteLine($"OpenBLAS   {e.BlasConfig}");
        w.WriteLine($".NET       {e.Runtime}, {(e.ServerGc ? "server" : "workstation")} GC ({e.GcLatency}), {e.Os}");
        if (o.Verb == "attribution")
            w.WriteLine($"run        attribution{(o.Quick ? " --quick" : "")}: model {AttributionBench.ModelFor(o.Quick).Name}; {string.Join(", ", o.Tokens)} tokens, one run each (no repetitions){(o.TimeoutSeconds is double s ? $"; timeout {s:F0} s per length" : "")}");
        else
            w.WriteLine($"run        {o.Verb}{(o.Quick ? " --quick" : "")}: {o.Warmup} warm-up (≥ {o.WarmupSeconds:0.#} s per forward configuration) + {o.Reps} timed repetitions, median reported; models {string.Join(", ", o.Models.Select(m => m.Name))}; batches {string.Join(", ", o.Batches)} × 128 tokens");
    }

    public static void Sgemm(TextWriter w, IEnumerable<SgemmResult> results, SgemmResult peak)
    {
        var t = new Table("product", "C[m,n] = A·op(B)", "op(B)", ">m", ">n", ">k", ">ms/call", ">±%", ">GFLOP/s", ">% of peak", "used by");
        foreach (var r in results)
            t.Add(r.Label, r.Shape, r.TransB ? "Bᵀ" : "B", r.M, r.N, r.K, Ms(r.MsPerCall.MedianMs), $"{r.MsPerCall.SpreadPct:F0}",
                $"{r.Gflops:F1}", $"{100 * r.Gflops / peak.Gflops:F0}", string.Join(", ", r.UsedBy));
        t.Write(w, "sgemm (Gemm.Sgemm, each product timed alone)");
    }

    public static void Loading(TextWriter w, IEnumerable<LoadResult> loads)
    {
        var t = new Table("model", ">file MB", ">params M", ">first load ms", ">reload ms", ">RSS before MB", ">after load", ">after forward",
            ">Δ anon MB", ">Δ file-backed MB");
        foreach (var l in loads)
            t.Add(l.Model, Mb(l.FileBytes), $"{l.Parameters / 1e6:F1}", $"{l.FirstLoadMs:F1}", $"{l.Reload.MedianMs:F1}", Mb(l.BeforeLoad.Rss),
                Mb(l.AfterLoad.Rss), Mb(l.AfterForward.Rss), Mb(l.AfterForward.Anon - l.BeforeLoad.Anon), Mb(l.AfterForward.File - l.BeforeLoad.File));
        t.Write(w, "Loading (ModelLoader.LoadFolder; RSS from /proc/self/status; Δ = after forward − before load)");
    }

    public static void Forward(TextWriter w, IEnumerable<ForwardConfigResult> results)
    {
        var t = new Table("model", ">batch×pos", ">GFLOP", "mode", ">median ms", ">±%", ">tokens/s", ">GFLOP/s", ">alloc MB/fwd", ">page faults/fwd", ">GCs g0/g1/g2", ">GC pause ms", ">cache MB", ">cache extra");
        foreach (var f in results)
        {
            Row(f, "Run", f.Run, "");
            Row(f, "RunWithCache(all)", f.Cache, $"{f.CacheExtraPct:+0;-0;0}%");
        }
        t.Write(w, "Forward (median per forward pass)");

        void Row(ForwardConfigResult f, string mode, ModeResult m, string extra) =>
            t.Add(f.Model, $"{f.Batch}×{f.Length}", $"{f.Flops / 1e9:F1}", mode, Ms(m.Time.MedianMs), $"{m.Time.SpreadPct:F0}", $"{m.TokensPerSecond:F0}",
                $"{m.Gflops:F1}", Mb((long)m.AllocatedBytes), m.PageFaults < 0 ? "?" : $"{m.PageFaults:F0}", $"{m.Gen0:F1}/{m.Gen1:F1}/{m.Gen2:F1}", Ms(m.GcPauseMs),
                m.CachedHooks == 0 ? "" : $"{Mb(m.CachedBytes)} ({m.CachedHooks} hooks)", extra);
    }

    public static void Roofline(TextWriter w, IEnumerable<ForwardConfigResult> results)
    {
        var t = new Table("model", ">batch×pos", ">forward GFLOP/s", ">sgemm-limit ms", ">limit GFLOP/s", ">forward ÷ limit", ">peak GFLOP/s", ">forward ÷ peak", ">non-GEMM + overhead ms");
        foreach (var f in results)
            t.Add(f.Model, $"{f.Batch}×{f.Length}", $"{f.Run.Gflops:F1}", Ms(f.Limit.MedianMs), $"{f.LimitGflops:F1}", $"{100 * f.RatioToLimit:F0}%",
                $"{f.PeakGflops:F1}", $"{100 * f.RatioToPeak:F0}%", Ms(f.Run.Time.MedianMs - f.Limit.MedianMs));
        t.Write(w, "Roofline (plain Run vs. the same products timed alone, and vs. the square-sgemm peak)");
    }

    public static void Profile(TextWriter w, ForwardConfigResult f)
    {
        var rows = f.Profile!;
        double total = rows.Sum(r => r.PlainMs), totalCache = rows.Sum(r => r.CacheMs);
        var t = new Table("operation (what runs before the hook)", ">plain ms", ">% of fwd", ">sgemm alone ms", ">beyond sgemm ms", ">cache-all ms", ">Δ cache ms");
        foreach (var r in rows)
            t.Add(r.Operation, Ms(r.PlainMs), $"{100 * r.PlainMs / total:F1}", r.SgemmAloneMs is double a ? Ms(a) : "",
                r.SgemmAloneMs is double b ? Ms(r.PlainMs - b) : "", Ms(r.CacheMs), Ms(r.CacheMs - r.PlainMs));
        double gemm = rows.Where(r => r.IsGemm).Sum(r => r.PlainMs);
        t.Add("total", Ms(total), "100.0", Ms(rows.Sum(r => r.SgemmAloneMs ?? 0)), "", Ms(totalCache), Ms(totalCache - total));
        t.Write(w, $"Profile {f.Model} b{f.Batch}×{f.Length} (hook timestamps, median of repetitions, summed over layers)");
        w.WriteLine($"matrix-product steps {Ms(gemm)} ms ({100 * gemm / total:F0}%), everything else {Ms(total - gemm)} ms ({100 * (total - gemm) / total:F0}%); "
            + $"profiled forward {Ms(f.ProfilePlainTotalMs ?? total)} ms vs. timed Run {Ms(f.Run.Time.MedianMs)} ms");
    }

    public static void Summary(TextWriter w, IEnumerable<ForwardConfigResult> results)
    {
        w.WriteLine();
        w.WriteLine("== Summary (README-ready) ==");
        foreach (var f in results) w.WriteLine("- " + f.Summary);
    }

    static string Ms(double ms) => ms >= 100 ? $"{ms:F0}" : ms >= 10 ? $"{ms:F1}" : ms >= 0.1 || ms <= -0.1 ? $"{ms:F2}" : $"{ms:F3}";

    static string Mb(long bytes) => bytes == -1 ? "?" : $"{bytes / 1e6:F0}";
}

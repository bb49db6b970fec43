using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace Loupe.Bench;

/// <summary>One forward configuration timed by this build and by the baseline build, alternately.</summary>
public sealed record BaselineRow(string Model, int Batch, string Mode, double[] ThisMs, double[] BaselineMs)
{
    public double ThisMedian => Median(ThisMs);
    public double BaselineMedian => Median(BaselineMs);
    /// <summary>Baseline time ÷ this build's time: above 1, this build is faster.</summary>
    public double Speedup => BaselineMedian / ThisMedian;

    static double Median(double[] xs)
    {
        var sorted = xs.Order().ToArray();
        return sorted.Length == 0 ? double.NaN : sorted[sorted.Length / 2];
    }
}

/// <summary>
/// "vs the previous commit" in the same run: the baseline build (another Loupe.Bench.dll) times the same
/// forwards in a child process, three rounds alternating with this build, so a noisy moment of a shared
/// machine falls on both.
/// </summary>
public static class Baseline
{
    const int Rounds = 3;

    public static List<BaselineRow> Compare(string dll, BenchOptions o, List<ForwardConfigResult> first, Func<BenchModel, IEnumerable<ForwardConfigResult>> runThis, TextWriter log)
    {
        if (!File.Exists(dll)) throw new ArgumentException($"--baseline: {dll} does not exist (give a Loupe.Bench.dll of another build)");
        var rows = new Dictionary<(string, int, string), (List<double> This, List<double> Base)>();
        void Add(string model, int batch, string mode, double? mine, double? theirs)
        {
            if (!rows.TryGetValue((model, batch, mode), out var r)) rows[(model, batch, mode)] = r = ([], []);
            if (mine is double m) r.This.Add(m);
            if (theirs is double t) r.Base.Add(t);
        }
        void AddThis(IEnumerable<ForwardConfigResult> results)
        {
            foreach (var f in results)
            {
                Add(f.Model, f.Batch, "Run", f.Run.Time.MedianMs, null);
                Add(f.Model, f.Batch, "RunWithCache(all)", f.Cache.Time.MedianMs, null);
            }
        }
        AddThis(first);
        for (int round = 0; round < Rounds; round++)
        {
            log.WriteLine($"baseline: round {round + 1}/{Rounds} with {dll} …");
            foreach (var (model, batch, mode, ms) in RunBaseline(dll, o)) Add(model, batch, mode, null, ms);
            if (round < Rounds - 1) AddThis(o.Models.SelectMany(runThis).ToList());
        }
        return rows.Select(kv => new BaselineRow(kv.Key.Item1, kv.Key.Item2, kv.Key.Item3, [.. kv.Value.This], [.. kv.Value.Base])).ToList();
    }

    static IEnumerable<(string Model, int Batch, string Mode, double Ms)> RunBaseline(string dll, BenchOptions o)
    {
        string json = Path.Combine(Path.GetTempPath(), $"loupe-baseline-{Environment.ProcessId}.json");
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true };
        foreach (var a in new[] { dll, "forward", "--no-profile", "--json", json, "--reps", o.Reps.ToString(CultureInfo.InvariantCulture),
                     "--models", string.Join(",", o.Models.Select(m => m.Name)), "--batches", string.Join(",", o.Batches), "--cache", o.CacheRoot })
            psi.ArgumentList.Add(a);
        if (o.Quick) psi.ArgumentList.Add("--quick");
        using var child = Process.Start(psi) ?? throw new InvalidOperationException("could not start the baseline build");
        child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        if (child.ExitCode != 0) throw new InvalidOperationException($"the baseline build exited with {child.ExitCode}");
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        File.Delete(json);
        var results = new List<(string, int, string, double)>();
        foreach (var f in doc.RootElement.GetProperty("forward").EnumerateArray())
        {
            string model = f.GetProperty("model").GetString()!;
            int batch = f.GetProperty("batch").GetInt32();
            results.Add((model, batch, "Run", f.GetProperty("run").GetProperty("time").GetProperty("median_ms").GetDouble()));
            results.Add((model, batch, "RunWithCache(all)", f.GetProperty("cache").GetProperty("time").GetProperty("median_ms").GetDouble()));
        }
        return results;
    }

    public static void Print(TextWriter w, string dll, List<BaselineRow> rows)
    {
        w.WriteLine();
        w.WriteLine($"== This build vs the baseline ({dll}), medians of {Rounds} alternating rounds ==");
        w.WriteLine($"{"model",-12} {"batch",5} {"mode",-18} {"this ms",9} {"baseline ms",12} {"speed-up",9}");
        foreach (var r in rows)
            w.WriteLine($"{r.Model,-12} {r.Batch,5} {r.Mode,-18} {r.ThisMedian,9:F1} {r.BaselineMedian,12:F1} {r.Speedup,8:F2}×");
    }
}

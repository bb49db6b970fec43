using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Loupe.Bench;
using Loupe.Tensors.Blas;
using Loupe.Tensors.Kernels;

// Loupe's benchmark harness. Tables go to stdout, progress to stderr; --json FILE writes every number.
// Steps: 1. environment; 2. sgemm peak (and, for `sgemm`/`all`, the forward shapes);
// 3. for `forward`/`all`: fixtures, loading, forward timings, limit, profile; 4. tables, summary, JSON.

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;

BenchOptions o;
try { o = BenchOptions.Parse(args); }
catch (ArgumentException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
if (o.Help)
{
    Console.WriteLine(BenchOptions.Usage);
    return 0;
}
var log = Console.Error;
if (o.Verb == "fixtures")
{
    Fixtures.WriteAll(o.CacheRoot, o.Models, log);
    return 0;
}
if (o.Managed) Gemm.ForceManaged = true;
if (o.Threads is int threads) OpenBlas.SetThreads(threads);

// 1. Environment.
var env = EnvironmentInfo.Capture();
var started = DateTime.UtcNow;
var clock = System.Diagnostics.Stopwatch.StartNew();
Report.Environment(Console.Out, env, o);

// 2. sgemm: the peak first (it also starts BLAS's threads), then the forward shapes.
var sgemm = new SgemmBench(o.Warmup, o.Reps, log);
log.WriteLine($"sgemm: square {o.PeakSize}³ peak …");
var peak = sgemm.Peak(o.PeakSize);
if (o.RunsSgemm)
    foreach (var m in o.Models)
        foreach (int b in o.Batches)
            foreach (var p in Flops.Products(m, b, 128)) sgemm.Get(p, $"{m.Name} b{b}");

// 3. Forward.
var loads = new List<LoadResult>();
var forwards = new List<ForwardConfigResult>();
if (o.RunsForward)
{
    Fixtures.Ensure(o.CacheRoot, o.Models, log);
    var bench = new ForwardBench(o, sgemm, log);
    foreach (var m in o.Models)
    {
        var (load, configs) = bench.Run(m, Fixtures.FolderOf(o.CacheRoot, m), peak);
        loads.Add(load);
        forwards.AddRange(configs);
    }
}

// 4. Report.
Report.Sgemm(Console.Out, sgemm.Results, peak);
if (o.RunsForward)
{
    Report.Loading(Console.Out, loads);
    Report.Forward(Console.Out, forwards);
    Report.Roofline(Console.Out, forwards);
    foreach (var f in forwards.Where(f => f.Profile is not null)) Report.Profile(Console.Out, f);
    Report.Summary(Console.Out, forwards);
}
Console.WriteLine();
Console.WriteLine($"total {clock.Elapsed.TotalSeconds:F1} s");

if (o.JsonPath is { } path)
{
    var doc = new
    {
        tool = "Loupe.Bench",
        started_utc = started,
        seconds = clock.Elapsed.TotalSeconds,
        verb = o.Verb,
        quick = o.Quick,
        reps = o.Reps,
        warmup = o.Warmup,
        environment = env,
        sgemm_peak = peak,
        sgemm = sgemm.Results,
        loading = loads,
        forward = forwards,
        summary = forwards.Select(f => f.Summary),
    };
    var json = new JsonSerializerOptions
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
    string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
    if (dir is not null) Directory.CreateDirectory(dir);
    File.WriteAllText(path, JsonSerializer.Serialize(doc, json) + "\n");
    log.WriteLine($"wrote {path}");
}
return 0;

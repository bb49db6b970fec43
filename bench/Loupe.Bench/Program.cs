using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Loupe.Bench;
using Loupe.Tensors.Blas;
using Loupe.Tensors.Kernels;

// Loupe's benchmark harness. Tables go to stdout, progress to stderr; --json FILE writes every number.
// Steps: 1. environment; 2. fixtures and loading (forward/all); 3. sgemm peak and, for sgemm/all,
// the forward shapes; 4. forward timings, limit, profile (forward/all), the peak again;
// 5. tables, summary, JSON.

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
if (o.Verb == "sae")
{
    Report.Environment(Console.Out, EnvironmentInfo.Capture(), o);
    var saeSgemm = new SgemmBench(o.Warmup, o.Reps, log);
    var steps = SaeBench.Steps(saeSgemm, o.Quick, o.Reps, log);
    Fixtures.Ensure(o.CacheRoot, o.Models, log);
    var harvests = o.Models.Select(m => SaeBench.Harvest(m, Fixtures.FolderOf(o.CacheRoot, m), o.Quick, o.Reps, log)).ToList();
    SaeBench.Print(Console.Out, steps, harvests);
    if (o.JsonPath is { } saeJson) Loupe.Reports.AtomicFile.WriteJson(saeJson, new { sae_steps = steps, harvest = harvests });
    return 0;
}
if (o.Verb == "attribution-run") return AttributionBench.RunOne(o, log);
if (o.Verb == "attribution")
{
    var attributionStarted = DateTime.UtcNow;
    Report.Environment(Console.Out, EnvironmentInfo.Capture(), o);
    var runs = AttributionBench.Run(o, log);
    AttributionBench.Print(Console.Out, o, runs);
    if (o.JsonPath is { } attributionJson)
        Loupe.Reports.AtomicFile.WriteJson(attributionJson, new
        {
            tool = "Loupe.Bench",
            verb = o.Verb,
            started_utc = attributionStarted,
            quick = o.Quick,
            environment = EnvironmentInfo.Capture(),
            model = AttributionBench.ModelFor(o.Quick),
            transcoder = new { features_per_layer = AttributionBench.FeaturesPerLayer(o.Quick), top_k = AttributionBench.TopK, kind = "random cross-layer transcoder" },
            settings = AttributionBench.Settings(null).Describe(),
            gc_heap_hard_limit_gib = o.GcHeapLimitGib,
            runs,
        });
    return runs.All(r => r.Status == "ok") ? 0 : 1;
}
if (o.Verb == "probes")
{
    Report.Environment(Console.Out, EnvironmentInfo.Capture(), o);
    var probeResults = ProbeBench.Shapes(o.Quick).Select(s => ProbeBench.Run(s.N, s.D, s.K, o.Quick ? 2 : Math.Max(3, o.Reps / 3), o.Quick ? 30 : 100, log)).ToList();
    var (trainerN, trainerD, trainerHooks) = o.Quick ? (4_000, 32, 2) : (160_000, 64, 6);
    var (hostSeconds, backendSeconds) = ProbeBench.Trainer(trainerN, trainerD, 12, trainerHooks, o.Quick ? 30 : 100, log);
    ProbeBench.Print(Console.Out, probeResults, (trainerN, trainerD, trainerHooks, hostSeconds, backendSeconds));
    if (o.JsonPath is { } probeJson)
        Loupe.Reports.AtomicFile.WriteJson(probeJson, new { probes = probeResults, trainer = new { rows = trainerN, width = trainerD, hooks = trainerHooks, host_seconds = hostSeconds, backend_seconds = backendSeconds } });
    return 0;
}
if (o.Verb == "monitors")
{
    Report.Environment(Console.Out, EnvironmentInfo.Capture(), o);
    Fixtures.Ensure(o.CacheRoot, o.Models, log);
    var monitorModel = o.Models[0];
    var monitorResult = MonitorBench.Run(monitorModel.Name, Fixtures.FolderOf(o.CacheRoot, monitorModel), o.Quick ? 32 : 100, o.Quick ? 2 : 5, log);
    MonitorBench.Print(Console.Out, monitorResult);
    if (o.JsonPath is { } monitorJson) Loupe.Reports.AtomicFile.WriteJson(monitorJson, new { result = monitorResult, overhead = monitorResult.Overhead });
    return 0;
}
if (o.Verb == "eap")
{
    Report.Environment(Console.Out, EnvironmentInfo.Capture(), o);
    Fixtures.Ensure(o.CacheRoot, o.Models, log);
    var eapModel = o.Models[0];
    var eap = EapBench.Run(eapModel.Name, Fixtures.FolderOf(o.CacheRoot, eapModel), o.Quick, log);
    EapBench.Print(Console.Out, eap);
    if (o.JsonPath is { } eapJson) Loupe.Reports.AtomicFile.WriteJson(eapJson, new { result = eap, edges_per_second = eap.BatchedEdgesPerSecond, one_edge_edges_per_second = eap.OneEdgeEdgesPerSecond, speedup = eap.Speedup });
    return 0;
}
if (o.Verb == "causal")
{
    Report.Environment(Console.Out, EnvironmentInfo.Capture(), o);
    Fixtures.Ensure(o.CacheRoot, o.Models, log);
    var model = o.Models[0];
    var causal = CausalBench.Run(model.Name, Fixtures.FolderOf(o.CacheRoot, model), o.Reps, log);
    CausalBench.Print(Console.Out, causal);
    // The peer table: forward and forward + backward to every resid_pre, minimum of the repetitions, for every
    // model and batch size asked for (batch 1 included), so each row compares with the peers' minimum-of-9 figures.
    var peerRows = new List<object>();
    foreach (var peerModel in o.Models)
        foreach (int batch in o.Batches)
        {
            log.WriteLine($"causal [{peerModel.Name}]: batch {batch} × 128, forward and forward + backward to every resid_pre …");
            var (fMin, fMed, bMin, bMed) = CausalBench.ForwardBackward(Fixtures.FolderOf(o.CacheRoot, peerModel), batch, o.Reps);
            Console.Out.WriteLine($"{peerModel.Name} batch {batch} × 128: forward min {fMin:F0} ms (median {fMed:F0}), forward + backward to every resid_pre min {bMin:F0} ms (median {bMed:F0}) = {bMin / fMin:F2} forwards");
            peerRows.Add(new { model = peerModel.Name, batch, length = 128, forward_min_ms = fMin, forward_median_ms = fMed, forward_backward_min_ms = bMin, forward_backward_median_ms = bMed });
        }
    if (o.JsonPath is { } causalJson) Loupe.Reports.AtomicFile.WriteJson(causalJson, new { toolkit = causal, forward_backward = peerRows });
    return 0;
}

// 1. Environment.
var env = EnvironmentInfo.Capture();
var started = DateTime.UtcNow;
var loadAverageStart = EnvironmentInfo.LoadAverage();
var clock = System.Diagnostics.Stopwatch.StartNew();
Report.Environment(Console.Out, env, o);

// 2. Loading, first, while this process's heap is still small.
var loads = new List<LoadResult>();
var sgemm = new SgemmBench(o.Warmup, o.Reps, log);
var bench = new ForwardBench(o, sgemm, log);
if (o.RunsForward)
{
    Fixtures.Ensure(o.CacheRoot, o.Models, log);
    foreach (var m in o.Models) loads.Add(bench.MeasureLoad(m, Fixtures.FolderOf(o.CacheRoot, m)));
}

// 3. sgemm: the peak (it also starts BLAS's threads), then the forward shapes.
log.WriteLine($"sgemm: square {o.PeakSize}³ peak …");
var peakStart = sgemm.Peak(o.PeakSize);
if (o.RunsSgemm)
    foreach (var m in o.Models)
        foreach (int b in o.Batches)
            foreach (var p in Flops.Products(m, b, BenchOptions.SequenceLength)) sgemm.Get(p, $"{m.Name} b{b}");

// 4. Forward. The peak is timed again at the end and the better median kept: on a shared
//    machine a slow moment should not pass for the hardware's limit.
var forwards = new List<ForwardConfigResult>();
SgemmResult? peakEnd = null;
double Peak() => Math.Max(peakStart.Gflops, peakEnd?.Gflops ?? 0);
if (o.RunsForward)
    foreach (var m in o.Models)
        forwards.AddRange(bench.Run(m, Fixtures.FolderOf(o.CacheRoot, m), Peak));
peakEnd = sgemm.Repeat(peakStart);
var peak = peakEnd.Gflops > peakStart.Gflops ? peakEnd : peakStart;
if (o.RunsForward)
    for (int i = 0; i < forwards.Count; i++)
    {
        var f = forwards[i] with { PeakGflops = peak.Gflops, RatioToPeak = forwards[i].Run.Gflops / peak.Gflops };
        forwards[i] = f with { Summary = ForwardBench.Summarize(f) };
    }
// 4b. The same forwards by a baseline build, in a child process, between this build's runs.
List<BaselineRow>? baseline = null;
if (o.Baseline is { } baselineDll && o.RunsForward)
    baseline = Baseline.Compare(baselineDll, o, forwards, m => bench.Run(m, Fixtures.FolderOf(o.CacheRoot, m), Peak), log);
var loadAverageEnd = EnvironmentInfo.LoadAverage();

// 5. Report.
Report.Sgemm(Console.Out, sgemm.Results, peak);
if (o.RunsForward)
{
    Report.Loading(Console.Out, loads);
    Report.Forward(Console.Out, forwards);
    Report.Roofline(Console.Out, forwards);
    foreach (var f in forwards.Where(f => f.Profile is not null)) Report.Profile(Console.Out, f);
    Report.Summary(Console.Out, forwards);
    if (baseline is not null) Baseline.Print(Console.Out, o.Baseline!, baseline);
}
Console.WriteLine();
bool busy = new[] { loadAverageStart, loadAverageEnd }.Any(l => double.TryParse(l, CultureInfo.InvariantCulture, out double v) && v > env.LogicalCores);
Console.WriteLine($"total {clock.Elapsed.TotalSeconds:F1} s; load average (1 min) {loadAverageStart} at start, {loadAverageEnd} at end on {env.LogicalCores} cores"
    + (busy ? " — above the core count: other processes competed for the CPU, so figures are slower and noisier than the machine can do" : ""));

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
        load_average_start = loadAverageStart,
        load_average_end = loadAverageEnd,
        sgemm_peak = peak,
        sgemm_peak_start_end_gflops = new[] { peakStart.Gflops, peakEnd.Gflops },
        sgemm = sgemm.Results,
        loading = loads,
        forward = forwards,
        summary = forwards.Select(f => f.Summary),
        baseline,
    };
    var json = new JsonSerializerOptions
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping, // keep ×, ³, ᵀ readable
    };
    string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
    if (dir is not null) Directory.CreateDirectory(dir);
    File.WriteAllText(path, JsonSerializer.Serialize(doc, json) + "\n");
    log.WriteLine($"wrote {path}");
}
return 0;

using System.Diagnostics;
using System.Text.Json;
using Loupe.Attribution;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models;

namespace Loupe.Bench;

// Attribution graphs at growing prompt lengths. Each length runs in a fresh child process of this
// bench (`Loupe.Bench attribution-run --tokens T --json FILE`), so its peak memory is that process's
// peak RSS (VmHWM) and nothing an earlier, shorter run left in the heap counts. The child:
// 1. loads the Llama fixture; 2. a calibration forward on the first ≤ 64 tokens checks the logits
// (finite, softmax not degenerate) and scales the random CLT's decoders; 3. attributes the prompt;
// 4. writes its numbers. The parent also polls the child's VmHWM, so a run killed for memory or time
// still reports the peak it reached.

/// <summary>One attribution run (one prompt length, one child process).</summary>
/// <param name="Tokens">Prompt length.</param>
/// <param name="Model">Fixture name.</param>
/// <param name="Status">"ok", or what stopped it (exception, out of memory, timeout, exit code).</param>
/// <param name="ActiveFeatures">Active features on the prompt (outside position 0).</param>
/// <param name="FeatureNodes">Feature nodes in the graph (rows attributed).</param>
/// <param name="Batches">Batched backward passes.</param>
/// <param name="EstimatedBytes">The engine's up-front estimate of the attribution's memory.</param>
/// <param name="PeakRssBytes">The child's peak resident memory (VmHWM), model and transcoder included.</param>
/// <param name="RssBeforeBytes">The child's resident memory just before attributing (model, transcoder encoders, runtime).</param>
/// <param name="AttributionSeconds">Wall time of the attribution, its forward pass included.</param>
/// <param name="ForwardSeconds">Wall time of the engine's one forward pass on the prompt.</param>
/// <param name="PassEquivalents">Attribution time in forward-pass equivalents.</param>
/// <param name="Top1Probability">Softmax top-1 probability at the last position of the calibration prompt (the logits' sanity check).</param>
/// <param name="EntropyNats">Softmax entropy there, against ln(d_vocab) for a uniform one.</param>
/// <param name="TranscoderHeldBytes">What the random CLT holds (encoders + decoder pool).</param>
/// <param name="TranscoderDenseBytes">What a stored CLT of the same shape would hold (not in the peak).</param>
/// <param name="WallSeconds">Wall time of the child process, start to exit.</param>
/// <param name="ForwardMedianSeconds">Median of 3 plain forwards on the prompt after the attribution (the engine's one
/// capture forward is a single sample and, on a shared machine, noisy).</param>
/// <param name="LiveAfterBytes">Managed bytes still live after a full collection once the graph is made (graph, model, CLT
/// held): against the peak, how much of it was garbage awaiting collection rather than data the engine kept.</param>
/// <param name="Transcoders">"random" (generated, decoders never stored), or the stored CLT with its decoders "memory" or "mapped".</param>
/// <param name="LoadSeconds">Loading the stored CLT (NaN for the random one).</param>
public sealed record AttributionRun(
    int Tokens, string Model, string Status,
    int ActiveFeatures, int FeatureNodes, int Batches, long EstimatedBytes, long PeakRssBytes, long RssBeforeBytes,
    double AttributionSeconds, double ForwardSeconds, double PassEquivalents,
    double Top1Probability, double EntropyNats, long TranscoderHeldBytes, long TranscoderDenseBytes, double WallSeconds,
    long LiveAfterBytes = -1, double ForwardMedianSeconds = double.NaN, string Transcoders = "random", double LoadSeconds = double.NaN)
{
    /// <summary>Attribution time over the median forward.</summary>
    public double PassEquivalentsMedian => AttributionSeconds / ForwardMedianSeconds;
}

public static partial class AttributionBench
{
    [System.Text.RegularExpressions.GeneratedRegex(@"memory ≈ ([0-9.]+) (GiB|MiB)")]
    private static partial System.Text.RegularExpressions.Regex EstimateLine();

    /// <summary>The settings of every run (circuit-tracer's defaults except the batch and the node budget).</summary>
    public static AttributionSettings Settings(Action<string>? log) => new()
    {
        MaxLogits = 10,
        LogitProbability = 0.95,
        BatchSize = 64,
        MaxFeatureNodes = 4096,
        Log = log,
    };

    /// <summary>Features per layer of the random CLT, and active features per position and layer.</summary>
    public static int FeaturesPerLayer(bool quick) => quick ? 256 : 8192;

    public const int TopK = 16;
    const int TranscoderSeed = 20250601;
    const int CalibrationTokens = 64;

    public static BenchModel ModelFor(bool quick) => quick ? BenchModel.LlamaTiny : BenchModel.LlamaSmall;

    /// <summary>Random token ids for a prompt of <paramref name="length"/>: token 0 first, as a BOS.</summary>
    public static int[] Prompt(int length, int vocab)
    {
        var rng = new Random(4242);
        var t = new int[length];
        for (int i = 1; i < length; i++) t[i] = rng.Next(2, vocab);
        return t;
    }

    /// <summary>The parent: one child per length, in order; a failed length is reported and the next one still runs.</summary>
    public static List<AttributionRun> Run(BenchOptions o, TextWriter log)
    {
        var model = ModelFor(o.Quick);
        Fixtures.Ensure(o.CacheRoot, [model], log);
        var runs = new List<AttributionRun>();
        // The machine is shared: a child is stopped before it can push others into the OOM killer's way.
        long available = MemAvailable();
        long maxRss = o.MaxRssGib is double cap ? (long)(cap * (1L << 30)) : available > 0 ? Math.Max(1L << 30, available - (2L << 30)) : long.MaxValue;
        log.WriteLine($"attribution: each child is stopped above {Gib(maxRss)} RSS ({(o.MaxRssGib is null ? "MemAvailable − 2 GiB; --max-rss GIB to change" : "--max-rss")})");
        if (o.StoredClt.Any(s => !IsPerLayer(s))) EnsureStoredClt(o, model, log);
        if (o.StoredClt.Any(IsPerLayer)) EnsureStoredPerLayer(o, model, log);
        foreach (int T in o.Tokens)
        {
            if (T > model.NCtx)
            {
                log.WriteLine($"attribution: {T} tokens is longer than {model.Name}'s context ({model.NCtx}); skipped");
                continue;
            }
            foreach (string? storage in new string?[] { null }.Concat(o.StoredClt))
            {
                string what = storage is null ? "random CLT" : IsPerLayer(storage) ? $"stored per-layer transcoders, decoders {storage[4..]}" : $"stored CLT, decoders {storage}";
                log.WriteLine($"attribution [{model.Name}]: {T} tokens, {what}, in a child process …");
                runs.Add(RunChild(o, model, T, maxRss, log, storage));
                var r = runs[^1];
                log.WriteLine($"attribution [{model.Name}]: {T} tokens, {what}: {r.Status}, {r.AttributionSeconds:F1} s, peak {Gib(r.PeakRssBytes)}");
            }
        }
        return runs;
    }

    static AttributionRun RunChild(BenchOptions o, BenchModel model, int tokens, long maxRss, TextWriter log, string? storage)
    {
        string result = Path.Combine(Path.GetTempPath(), $"loupe-attribution-{Environment.ProcessId}-{tokens}-{storage ?? "random"}.json");
        File.Delete(result);
        string host = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find this process's executable to start a child");
        var psi = new ProcessStartInfo(host) { UseShellExecute = false };
        // Under `dotnet Loupe.Bench.dll` the host is dotnet and needs the dll; an apphost needs nothing.
        if (Path.GetFileNameWithoutExtension(host).Equals("dotnet", StringComparison.OrdinalIgnoreCase)) psi.ArgumentList.Add(typeof(AttributionBench).Assembly.Location);
        foreach (var a in new[] { "attribution-run", "--tokens", tokens.ToString(System.Globalization.CultureInfo.InvariantCulture), "--cache", o.CacheRoot, "--json", result })
            psi.ArgumentList.Add(a);
        if (o.Quick) psi.ArgumentList.Add("--quick");
        if (storage is not null) { psi.ArgumentList.Add("--stored-clt"); psi.ArgumentList.Add(storage); }
        // The GC sizes its heap by the machine's memory load, so without a limit garbage fills most of the RAM before
        // a full collection and the peak says more about the GC than about the engine; a hard limit makes it collect.
        if (o.GcHeapLimitGib is double gib) psi.Environment["DOTNET_GCHeapHardLimit"] = "0x" + ((long)(gib * (1L << 30))).ToString("X", System.Globalization.CultureInfo.InvariantCulture);
        if (o.Managed) psi.ArgumentList.Add("--managed");
        if (o.Threads is int n) { psi.ArgumentList.Add("--threads"); psi.ArgumentList.Add(n.ToString(System.Globalization.CultureInfo.InvariantCulture)); }

        var clock = Stopwatch.StartNew();
        using var child = Process.Start(psi) ?? throw new InvalidOperationException("could not start the attribution child process");
        long polledPeak = -1;
        string? stopped = null;
        // Poll the child's VmHWM: if the kernel, the timeout or the RSS cap stops it, this is the only record of its peak.
        while (!child.WaitForExit(200))
        {
            long hwm = HighWaterMark(child.Id);
            polledPeak = Math.Max(polledPeak, hwm);
            if (o.TimeoutSeconds is double limit && clock.Elapsed.TotalSeconds > limit)
                stopped = $"stopped after {limit:F0} s (--timeout)";
            else if (hwm > maxRss)
                stopped = $"stopped at {Gib(hwm)} RSS (cap {Gib(maxRss)}, --max-rss)";
            if (stopped is not null)
            {
                log.WriteLine($"attribution: {tokens} tokens: {stopped}");
                child.Kill(entireProcessTree: true);
                child.WaitForExit();
                break;
            }
        }
        double wall = clock.Elapsed.TotalSeconds;
        // The child writes its record on success and on the failures it can catch (out of memory, bad input).
        if (stopped is null && File.Exists(result))
        {
            var run = JsonSerializer.Deserialize<AttributionRun>(File.ReadAllText(result), Json)
                ?? throw new InvalidDataException($"{result}: empty result");
            File.Delete(result);
            return run with { WallSeconds = wall, PeakRssBytes = Math.Max(run.PeakRssBytes, polledPeak) };
        }
        string status = stopped ?? (child.ExitCode == 137 ? "killed (SIGKILL: out of memory?)" : $"exit {child.ExitCode}");
        if (File.Exists(result)) File.Delete(result);
        return new AttributionRun(tokens, model.Name, status, 0, 0, 0, 0, polledPeak, -1, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, 0, 0, wall,
            Transcoders: storage ?? "random");
    }

    static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>The child: one attribution, its numbers written to <c>--json</c>. Returns the exit code.</summary>
    public static int RunOne(BenchOptions o, TextWriter log)
    {
        var spec = ModelFor(o.Quick);
        int T = o.Tokens.Count == 1 ? o.Tokens[0] : throw new ArgumentException("attribution-run takes one --tokens length");
        string path = o.JsonPath ?? throw new ArgumentException("attribution-run needs --json FILE");
        var random = new RandomCrossLayerTranscoder(spec.NLayers, spec.DModel, FeaturesPerLayer(o.Quick), TopK, TranscoderSeed);
        string? storage = o.StoredClt.Count switch { 0 => null, 1 => o.StoredClt[0], _ => throw new ArgumentException("attribution-run takes one --stored-clt") };
        IMlpReplacement tc = random;
        long held = random.HeldBytes, dense = random.DenseBytes;
        double loadSeconds = double.NaN;
        long before = -1, estimate = 0;
        double top1 = double.NaN, entropy = double.NaN;
        Stopwatch? attributing = null;
        // On failure the engine's stats are gone; its up-front estimate survives in its log line.
        void EngineLog(string line)
        {
            log.WriteLine(line);
            if (EstimateLine().Match(line) is { Success: true } m)
                estimate = (long)(double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) * (m.Groups[2].Value == "GiB" ? 1L << 30 : 1L << 20));
        }
        AttributionRun Failed(string what, Exception e) => new(T, spec.Name,
            $"{what}{(attributing is null ? " before attributing" : $" after {attributing.Elapsed.TotalSeconds:F0} s of attribution")}, in {e.TargetSite?.DeclaringType?.Name}.{e.TargetSite?.Name}",
            0, 0, 0, estimate, Peak(), before, double.NaN, double.NaN, double.NaN, top1, entropy, held, dense, 0, Transcoders: storage ?? "random", LoadSeconds: loadSeconds);
        try
        {
            using var model = ModelLoader.LoadFolder(Fixtures.FolderOf(o.CacheRoot, spec));
            var tokens = Prompt(T, model.Config.DVocab);
            var calibration = tokens[..Math.Min(T, CalibrationTokens)];
            (top1, entropy) = SoftmaxCheck(model, calibration);
            log.WriteLine($"attribution-run: softmax at the last calibration position: top-1 {top1:0.###}, entropy {entropy:0.##} nats (uniform: {Math.Log(model.Config.DVocab):0.##})");
            if (storage is null)
            {
                random.Calibrate(model, calibration);
                log.WriteLine($"attribution-run: {random.Source}; decoder scales {string.Join(" ", random.DecoderScales.Select(s => s.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)))}");
            }
            else
            {
                // The same CLT (calibrated on the same first 64 tokens), or its diagonal as per-layer transcoders, read from its files.
                bool perLayer = IsPerLayer(storage);
                bool mapped = storage.EndsWith("mapped", StringComparison.Ordinal);
                var loading = Stopwatch.StartNew();
                tc = MlpReplacements.Load(perLayer ? StoredPerLayerFolder(o, spec) : StoredCltFolder(o, spec), model,
                    decoders: mapped ? DecoderStorage.Mapped : DecoderStorage.Memory, log: log.WriteLine);
                loadSeconds = loading.Elapsed.TotalSeconds;
                long encoders = 4L * spec.NLayers * FeaturesPerLayer(o.Quick) * spec.DModel;
                long decoderBytes = perLayer ? encoders : 4 * CltShapeOf(spec, o.Quick).DecoderElements;
                dense = encoders + decoderBytes;
                held = mapped ? encoders : dense;
                log.WriteLine($"attribution-run: {tc.Source} loaded in {loadSeconds:F2} s, decoders {storage}");
            }
            before = MemorySnapshot.Read().Rss;

            var attributor = new Attributor(model, tc, Settings(EngineLog));
            attributing = Stopwatch.StartNew();
            var graph = attributor.Attribute(tokens);
            var s = attributor.Stats ?? throw new InvalidOperationException("the attributor returned no stats");
            long peak = Peak();
            long live = GC.GetTotalMemory(forceFullCollection: true);
            GC.KeepAlive(graph);
            var forwards = new double[3];
            for (int i = 0; i < forwards.Length; i++)
            {
                var fc = Stopwatch.StartNew();
                model.Run(TokenBatch.Single(tokens));
                forwards[i] = fc.Elapsed.TotalSeconds;
            }
            Array.Sort(forwards);
            var run = new AttributionRun(T, spec.Name, "ok", s.ActiveFeatures, s.FeatureNodes, s.Batches, s.EstimatedBytes, peak, before,
                s.Elapsed.TotalSeconds, s.ForwardTime.TotalSeconds, s.PassEquivalents, top1, entropy, held, dense, 0, live, forwards[1],
                storage ?? "random", loadSeconds);
            (tc as IDisposable)?.Dispose();
            Loupe.Reports.AtomicFile.WriteJson(path, run);
            return 0;
        }
        catch (OutOfMemoryException e)
        {
            log.WriteLine($"attribution-run: {T} tokens: out of memory ({e.Message})");
            Loupe.Reports.AtomicFile.WriteJson(path, Failed("out of memory", e));
            return 3;
        }
        catch (Exception e) when (e is InputError or InvalidOperationException or ArgumentException or OverflowException)
        {
            log.WriteLine($"attribution-run: {T} tokens: {e.GetType().Name}: {e.Message}");
            Loupe.Reports.AtomicFile.WriteJson(path, Failed($"{e.GetType().Name}: {e.Message}", e));
            return 3;
        }
    }

    static bool IsPerLayer(string storage) => storage.StartsWith("plt-", StringComparison.Ordinal);

    /// <summary>Where the per-layer copy (the random CLT's diagonal) is kept (in the fixture cache).</summary>
    static string StoredPerLayerFolder(BenchOptions o, BenchModel spec) =>
        Path.Combine(o.CacheRoot, $"plt-{spec.Name}-{FeaturesPerLayer(o.Quick)}x{TopK}-seed{TranscoderSeed}");

    /// <summary>
    /// Writes the random CLT's diagonal — each layer's encoders and each feature's decoder row to its own layer, calibrated as
    /// the CLT — as circuit-tracer's per-layer files (<c>layer_ℓ.safetensors</c>: W_enc [F, d], W_dec [F, d] streamed, zero
    /// biases, k; a config.yaml with the hooks), unless it is there already.
    /// </summary>
    static void EnsureStoredPerLayer(BenchOptions o, BenchModel spec, TextWriter log)
    {
        string folder = StoredPerLayerFolder(o, spec);
        if (File.Exists(Path.Combine(folder, CltFiles.CircuitTracerConfig))) return;
        int L = spec.NLayers, d = spec.DModel, F = FeaturesPerLayer(o.Quick);
        log.WriteLine($"attribution: writing the random CLT's diagonal as per-layer transcoders to {folder} ({8.0 * L * F * d / (1L << 30):F2} GiB) …");
        var random = CalibratedRandom(o, spec, L, d, F);
        string partial = EmptyPartial(folder);
        for (int l = 0; l < L; l++)
        {
            int layer = l;
            var wEnc = new float[F * d];
            for (int f = 0; f < F; f++) random.EncoderDirection(l, f, wEnc.AsSpan(f * d, d));
            Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(partial, $"layer_{l}.safetensors"), new List<Loupe.Models.Loading.SafeTensorEntry>
            {
                Loupe.Models.Loading.SafeTensorEntry.F32("W_enc", [F, d], wEnc),
                Loupe.Models.Loading.SafeTensorEntry.F32Streamed("W_dec", [F, d], stream =>
                {
                    var row = new float[d];
                    for (int f = 0; f < F; f++)
                    {
                        random.DecoderDirection(layer, f, layer, row);
                        stream.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(row.AsSpan()));
                    }
                }),
                Loupe.Models.Loading.SafeTensorEntry.F32("b_enc", [F], new float[F]),
                Loupe.Models.Loading.SafeTensorEntry.F32("b_dec", [d], new float[d]),
                Loupe.Models.Loading.SafeTensorEntry.I64("k", [], new long[] { TopK }),
            });
        }
        File.WriteAllText(Path.Combine(partial, CltFiles.CircuitTracerConfig),
            $"model_kind: transcoder_set\nfeature_input_hook: \"mlp.hook_in\"\nfeature_output_hook: \"hook_mlp_out\"\nactivation: topk\nk: {TopK}\n");
        Directory.Move(partial, folder);
    }

    // The bench's random CLT, calibrated on the runs' first 64 tokens (what the stored copies hold).
    static RandomCrossLayerTranscoder CalibratedRandom(BenchOptions o, BenchModel spec, int layers, int d, int features)
    {
        var random = new RandomCrossLayerTranscoder(layers, d, features, TopK, TranscoderSeed);
        using var model = ModelLoader.LoadFolder(Fixtures.FolderOf(o.CacheRoot, spec));
        random.Calibrate(model, Prompt(CalibrationTokens, model.Config.DVocab));
        return random;
    }

    // folder.partial, empty: written there, then moved into place, so a killed write is never taken for a stored copy.
    static string EmptyPartial(string folder)
    {
        string partial = folder + ".partial";
        if (Directory.Exists(partial)) Directory.Delete(partial, recursive: true);
        Directory.CreateDirectory(partial);
        return partial;
    }

    static CltShape CltShapeOf(BenchModel spec, bool quick) => new(spec.NLayers, spec.DModel, FeaturesPerLayer(quick), spec.DModel);

    /// <summary>Where the stored copy of the bench's random CLT is kept (in the fixture cache).</summary>
    static string StoredCltFolder(BenchOptions o, BenchModel spec) =>
        Path.Combine(o.CacheRoot, $"clt-{spec.Name}-{FeaturesPerLayer(o.Quick)}x{TopK}-seed{TranscoderSeed}");

    /// <summary>
    /// Writes the random CLT, calibrated on the runs' first 64 tokens, as a real file in Loupe's layout (TopK,
    /// W_enc.ℓ [d, F], W_dec.ℓ [F, L−ℓ, d] streamed row by row, zero biases) unless it is there already.
    /// </summary>
    static void EnsureStoredClt(BenchOptions o, BenchModel spec, TextWriter log)
    {
        string folder = StoredCltFolder(o, spec);
        if (File.Exists(Path.Combine(folder, CltFiles.ConfigFile))) return;
        var shape = CltShapeOf(spec, o.Quick);
        int L = shape.Layers, d = shape.DIn, F = shape.DSae;
        log.WriteLine($"attribution: writing the random CLT to {folder} ({4 * (shape.DecoderElements + (long)L * F * d) / (double)(1L << 30):F2} GiB) …");
        var random = CalibratedRandom(o, spec, L, d, F);
        string partial = EmptyPartial(folder);
        var tensors = new List<Loupe.Models.Loading.SafeTensorEntry>();
        for (int l = 0; l < L; l++)
        {
            int layer = l;
            var wEnc = new float[d * F];
            var row = new float[d];
            for (int f = 0; f < F; f++)
            {
                random.EncoderDirection(l, f, row);
                for (int j = 0; j < d; j++) wEnc[j * F + f] = row[j];
            }
            tensors.Add(Loupe.Models.Loading.SafeTensorEntry.F32($"W_enc.{l}", [d, F], wEnc));
            tensors.Add(Loupe.Models.Loading.SafeTensorEntry.F32($"b_enc.{l}", [F], new float[F]));
            tensors.Add(Loupe.Models.Loading.SafeTensorEntry.F32Streamed($"W_dec.{l}", [F, L - l, d], stream =>
            {
                var buffer = new float[d];
                for (int f = 0; f < F; f++)
                    for (int t = layer; t < L; t++)
                    {
                        random.DecoderDirection(layer, f, t, buffer);
                        stream.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(buffer.AsSpan()));
                    }
            }));
            tensors.Add(Loupe.Models.Loading.SafeTensorEntry.F32($"b_dec.{l}", [d], new float[d]));
        }
        Loupe.Models.Loading.SafeTensorsWriter.Write(Path.Combine(partial, CltFiles.WeightsFile), tensors);
        File.WriteAllText(Path.Combine(partial, CltFiles.ConfigFile), new System.Text.Json.Nodes.JsonObject
        {
            ["format"] = "loupe-clt", ["format_version"] = 2, ["architecture"] = "topk", ["n_layers"] = L, ["d_in"] = d, ["d_sae"] = F, ["d_out"] = d, ["k"] = TopK,
            ["input_hook"] = "blocks.{layer}.mlp.hook_in", ["output_hook"] = "blocks.{layer}.hook_mlp_out",
            ["provenance"] = new System.Text.Json.Nodes.JsonObject { ["source"] = random.Source },
        }.ToJsonString());
        Directory.Move(partial, folder);
    }

    /// <summary>Top-1 probability and entropy of the softmax at the last position; throws on non-finite logits.</summary>
    static (double Top1, double Entropy) SoftmaxCheck(HookedTransformer model, int[] tokens)
    {
        var logits = model.Run(TokenBatch.Single(tokens)).Logits;
        int T = logits.Dim(1), V = logits.Dim(2);
        var last = logits.ToCpu().Span.Slice((T - 1) * V, V).ToArray();
        int bad = Array.FindIndex(last, v => !float.IsFinite(v));
        if (bad >= 0) throw new InvalidOperationException($"the fixture's logit {bad} is {last[bad]}: the random model is numerically broken");
        double max = last.Max(), sum = 0;
        foreach (float v in last) sum += Math.Exp(v - max);
        double top1 = 1 / sum, entropy = 0;
        foreach (float v in last)
        {
            double p = Math.Exp(v - max) / sum;
            if (p > 0) entropy -= p * Math.Log(p);
        }
        if (top1 > 0.99 || entropy < 0.05 * Math.Log(V) || entropy > 0.999 * Math.Log(V))
            throw new InvalidOperationException($"the fixture's softmax is degenerate (top-1 {top1:0.####}, entropy {entropy:0.###} of {Math.Log(V):0.###} nats)");
        return (top1, entropy);
    }

    /// <summary>"Name:\t 123 kB" → bytes. The separator is a tab and alignment spaces; eight-digit values have no space.</summary>
    static long Kib(string line)
    {
        var parts = line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
        return parts.Length >= 2 && long.TryParse(parts[1], out long kb) ? kb * 1024 : -1;
    }

    /// <summary>MemAvailable from /proc/meminfo in bytes (−1 where unavailable).</summary>
    static long MemAvailable()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                {
                    return Kib(line);
                }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return -1;
    }

    /// <summary>This process's peak resident memory (VmHWM) in bytes.</summary>
    static long Peak() => HighWaterMark(Environment.ProcessId);

    static long HighWaterMark(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                {
                    return Kib(line);
                }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return OperatingSystem.IsLinux() ? -1 : Process.GetCurrentProcess().PeakWorkingSet64;
    }

    static string Gib(long bytes) => bytes < 0 ? "?" : bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1L << 20):F0} MiB";

    public static void Print(TextWriter w, BenchOptions o, IReadOnlyList<AttributionRun> runs)
    {
        var spec = ModelFor(o.Quick);
        var s = Settings(null);
        w.WriteLine();
        w.WriteLine($"## Attribution — {spec.Name} (Llama: {spec.NLayers} layers, d_model {spec.DModel}, {spec.NHeads} heads / {spec.KvHeads} kv, "
            + $"d_mlp {spec.DMlp}, vocab {spec.DVocab}, n_ctx {spec.NCtx}); random CLT {FeaturesPerLayer(o.Quick)} features/layer, TopK {TopK}");
        w.WriteLine($"settings: max logits {s.MaxLogits}, logit probability {s.LogitProbability}, batch {s.BatchSize} rows, max feature nodes {s.MaxFeatureNodes}; one child process per length"
            + (o.GcHeapLimitGib is double gib ? $", GC heap hard limit {gib:0.##} GiB" : ", default GC (heap sized by the machine's memory)"));
        var t = new Table("tokens", "CLT", ">load s", ">active", ">nodes", ">batches", ">estimated", ">peak RSS", ">RSS before", ">live after", ">attribution s", ">forward s", ">pass equiv.", ">median fwd s", ">pass equiv. (median)", "status");
        foreach (var r in runs)
            t.Add(r.Tokens, r.Transcoders == "random" ? "random" : IsPerLayer(r.Transcoders) ? "per-layer, decoders " + r.Transcoders[4..] : "stored, decoders " + r.Transcoders, F(r.LoadSeconds, "F2"), r.ActiveFeatures, r.FeatureNodes, r.Batches, r.EstimatedBytes > 0 ? Gib(r.EstimatedBytes) : "-", Gib(r.PeakRssBytes), Gib(r.RssBeforeBytes), Gib(r.LiveAfterBytes),
                F(r.AttributionSeconds, "F1"), F(r.ForwardSeconds, "F3"), F(r.PassEquivalents, "F0"),
                F(r.ForwardMedianSeconds, "F3"), F(r.PassEquivalentsMedian, "F0"), r.Status);
        t.Write(w, "attribution: cost and memory by prompt length");
        if (runs.FirstOrDefault(r => r.Status == "ok") is { } any)
            w.WriteLine($"peak RSS includes the model, the runtime and the random CLT's {Gib(any.TranscoderHeldBytes)} (encoders + decoder pool); "
                + $"a stored CLT of this shape would add {Gib(any.TranscoderDenseBytes)}. Logits: top-1 {any.Top1Probability:0.###}, entropy {any.EntropyNats:0.##} nats.");
    }

    static string F(double v, string format) => double.IsFinite(v) ? v.ToString(format, System.Globalization.CultureInfo.InvariantCulture) : "-";
}

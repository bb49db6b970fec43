using System.Diagnostics;
using System.Globalization;
using Loupe;
using Loupe.Dictionaries.Sae;
using Loupe.GpuBench;
using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;
using Loupe.Tensors.Gpu;

// The GPU bench: (a) parity of logits and gradients between the CPU backend and a device backend on the
// reference fixtures (fp32 weights; bf16 weights with split and with rounded activations); (b) forward and forward+backward tokens/s on real shapes
// with random weights; (c) with --sae, one TopK SAE training step (forward, backward, Adam) on the device;
// (d) with --attribution DIR (tests/data/attribution), an attribution graph on the device against the CPU's, and a random
// cross-layer transcoder's graph with its decoders uploaded whole and left on the host (active rows per pass); (e) with
// --probe, a logistic probe's objective (100,000 × 2,048, 12 classes) on the device and on the CPU backend.
// bench/gpu/run.sh runs it beside bench/gpu/torch_peer.py (the same shapes in
// PyTorch eager) and bench/gpu/compare.py prints the side-by-side table. --ptx-check only compiles every kernel to PTX
// (no GPU needed; a pre-flight check of the published file, which bench/gpu/publish.sh runs) and exits.

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;

var opts = GpuBenchOptions.Parse(args);
if (opts.PtxCheck) return PtxPreflight.Run(Console.Out);
var log = Console.Error;
var report = new Dictionary<string, object?>();
var device = Device.Parse(opts.Device);
using var fp32 = ComputeBackends.Create(device);
using var bf16 = ComputeBackends.Create(device, ElementType.BF16);
using var fp16 = ComputeBackends.Create(device, ElementType.F16);
// "bf16": bf16 weights, activations split into two bf16 parts (the default); "bf16r": activations rounded to bf16, one
// tensor-core product each (torch's bf16 arithmetic, faster). One backend, the mode set before each use. "fp16": fp16
// weights, each activation row scaled by a power of two into fp16's range and split.
GpuBackend Backend(string dtype)
{
    if (dtype == "fp32") return fp32;
    if (dtype == "fp16") return fp16;
    bf16.HalfActivations = dtype == "bf16r" ? HalfActivations.Rounded : HalfActivations.Split;
    return bf16;
}
static ElementType WeightType(string dtype) => dtype == "fp16" ? ElementType.F16 : ElementType.BF16;
Console.WriteLine($"device: {fp32.Name}");
report["device"] = fp32.Name;
report["device_info"] = ComputeBackends.Describe(fp32);

// (a) Parity with the CPU backend on the reference fixtures.
var parity = new List<Dictionary<string, object>>();
if (!opts.NoParity && opts.Fixtures is { } fixtures && Directory.Exists(fixtures))
{
    Console.WriteLine();
    Console.WriteLine("parity with the CPU backend (max |Δ| / max |cpu|), metric logit_diff(17,42)@-1, gradients at every resid_pre");
    Console.WriteLine($"{"fixture",-10} {"weights",-7} {"logits",10} {"gradients",10} {"metric",10}");
    foreach (var folder in Directory.GetDirectories(fixtures).Order())
    {
        if (!File.Exists(Path.Combine(folder, "config.json"))) continue;
        // Fixtures kept in another format (minilm is an ONNX export) are not safetensors models.
        if (!File.Exists(Path.Combine(folder, "model.safetensors")) && !File.Exists(Path.Combine(folder, "model.safetensors.index.json"))) continue;
        int[] ids = [82, 87, 74, 39, 184, 175, 214, 409, 305, 33, 71, 171, 84, 200, 158, 186, 380, 257, 94, 24, 110, 113, 240, 83];
        var batch = new TokenBatch(ids, 2, 12);
        using var cpuModel = ModelLoader.LoadFolder(folder);
        var cpu = cpuModel.RunWithGradients(batch, new LogitDiff(17, 42), "blocks.*.hook_resid_pre");
        foreach (var label in new[] { "fp32", "bf16", "bf16r", "fp16" })
        try
        {
            var backend = Backend(label);
            using var model = ModelLoader.LoadFolder(folder, backend);
            var dev = model.RunWithGradients(batch, new LogitDiff(17, 42), "blocks.*.hook_resid_pre");
            double logits = Compare.RelativeMax(cpu.Logits.ToCpu().Span, dev.Logits.ToCpu().Span);
            double grads = cpu.Gradients.Names.Max(n => Compare.RelativeMax(cpu.Gradients[n].ToCpu().Span, dev.Gradients[n].ToCpu().Span));
            double metric = Math.Abs(cpu.Metric - dev.Metric) / Math.Max(1e-12, Math.Abs(cpu.Metric));
            var row = new Dictionary<string, object> { ["fixture"] = Path.GetFileName(folder), ["weights"] = label, ["logits_rel"] = logits, ["gradients_rel"] = grads, ["metric_rel"] = metric };
            // The norm-wise relative error ‖Δ‖/‖cpu‖ beside the element-wise max: one outlying logit moves the max only.
            double logitsL2 = Compare.RelativeL2(cpu.Logits.ToCpu().Span, dev.Logits.ToCpu().Span);
            double gradsL2 = cpu.Gradients.Names.Max(n => Compare.RelativeL2(cpu.Gradients[n].ToCpu().Span, dev.Gradients[n].ToCpu().Span));
            row["logits_rel_l2"] = logitsL2;
            row["gradients_rel_l2"] = gradsL2;
            string same = "";
            if (label != "fp32")
            {
                // Against the CPU computing in fp32 with the same 16-bit-rounded weights: the device's own arithmetic error.
                using var roundedModel = ModelLoader.LoadFolder(folder, CpuBackend.WithRoundedWeights(WeightType(label)));
                var rounded = roundedModel.RunWithGradients(batch, new LogitDiff(17, 42), "blocks.*.hook_resid_pre");
                double sameLogits = Compare.RelativeMax(rounded.Logits.ToCpu().Span, dev.Logits.ToCpu().Span);
                double sameGrads = rounded.Gradients.Names.Max(n => Compare.RelativeMax(rounded.Gradients[n].ToCpu().Span, dev.Gradients[n].ToCpu().Span));
                row["logits_rel_same_weights"] = sameLogits;
                row["gradients_rel_same_weights"] = sameGrads;
                // What rounding the weights alone costs, on the CPU: a floor for any run with bf16 weights.
                double formatLogits = Compare.RelativeMax(cpu.Logits.ToCpu().Span, rounded.Logits.ToCpu().Span);
                double formatGrads = cpu.Gradients.Names.Max(n => Compare.RelativeMax(cpu.Gradients[n].ToCpu().Span, rounded.Gradients[n].ToCpu().Span));
                row["logits_rel_weight_rounding"] = formatLogits;
                row["gradients_rel_weight_rounding"] = formatGrads;
                same = $"   same 16-bit weights on the CPU: {sameLogits:E2} {sameGrads:E2}   16-bit weights alone (CPU): {formatLogits:E2} {formatGrads:E2}";
            }
            Console.WriteLine($"{Path.GetFileName(folder),-10} {label,-7} {logits,10:E2} {grads,10:E2} {metric,10:E2}   ‖Δ‖/‖cpu‖ {logitsL2:E2} {gradsL2:E2}{same}");
            parity.Add(row);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // One fixture failing on the device must not cost the rest of a run that has minutes of device time.
            Console.WriteLine($"{Path.GetFileName(folder),-10} {label,-7} FAILED: {e.GetType().Name}: {e.Message}");
            parity.Add(new() { ["fixture"] = Path.GetFileName(folder), ["weights"] = label, ["error"] = $"{e.GetType().Name}: {e.Message}" });
        }
    }
}
report["parity"] = parity;
Save();

// (b) Speed on real shapes.
var speed = new List<Dictionary<string, object>>();
Console.WriteLine();
Console.WriteLine($"speed: batch {opts.Batch} × {opts.Seq} tokens, min of {opts.Reps} after {opts.Warmup} warm-up runs");
Console.WriteLine($"{"model",-14} {"weights",-7} {"forward ms",11} {"tok/s",10} {"fwd+bwd ms",11} {"tok/s",10}  transfers (fwd; fwd+bwd)");
foreach (var shape in opts.Models)
{
    string folder = RandomModels.Ensure(opts.Work, shape, log);
    foreach (var dtype in opts.DTypes)
    {
        var backend = Backend(dtype);
        using var model = ModelLoader.LoadFolder(folder, backend);
        var rng = new Random(1);
        var ids = Enumerable.Range(0, opts.Batch * opts.Seq).Select(_ => rng.Next(shape.Vocab)).ToArray();
        var batch = new TokenBatch(ids, opts.Batch, opts.Seq);
        var metric = new LogitDiff(17, 42);
        double forward = Timing.Min(opts.Warmup, opts.Reps, () => model.Run(batch));
        var before = backend.Transfers.Snapshot();
        model.Run(batch);
        var forwardCopies = backend.Transfers.Snapshot() - before;
        double backward = Timing.Min(opts.Warmup, opts.Reps, () =>
        {
            var g = model.RunWithGradients(batch, metric, "blocks.*.hook_resid_pre");
            backend.IndexOfNonFinite(g.Gradients[g.Gradients.Names.Last()]); // waits for the last kernel
        });
        before = backend.Transfers.Snapshot();
        model.RunWithGradients(batch, metric, "blocks.*.hook_resid_pre");
        var backwardCopies = backend.Transfers.Snapshot() - before;
        int tokens = opts.Batch * opts.Seq;
        Console.WriteLine($"{shape.Name,-14} {dtype,-7} {forward,11:F2} {tokens / forward * 1000,10:F0} {backward,11:F2} {tokens / backward * 1000,10:F0}  {Compare.Copies(forwardCopies)}; {Compare.Copies(backwardCopies)}");
        speed.Add(new()
        {
            ["model"] = shape.Name, ["dtype"] = dtype, ["batch"] = opts.Batch, ["seq"] = opts.Seq,
            ["forward_ms"] = forward, ["forward_tok_s"] = tokens / forward * 1000,
            ["fwd_bwd_ms"] = backward, ["fwd_bwd_tok_s"] = tokens / backward * 1000,
            ["forward_transfers"] = forwardCopies.ToString(), ["fwd_bwd_transfers"] = backwardCopies.ToString(),
        });
    }
}
report["speed"] = speed;
Save();

// (c) A TopK SAE training step through SaeTrainer's device path: the batch drawn on the host and uploaded, forward,
// backward (aux-k once features die), decoder projection, clipping, Adam, renormalisation, one metric vector read back.
if (opts.Sae is { } sae)
{
    var (dIn, dSae, k, rows) = sae;
    Console.WriteLine();
    Console.WriteLine($"SAE TopK step (SaeTrainer on the device: upload, forward, backward, Adam, renorm; fp32): d_in {dIn}, d_sae {dSae}, k {k}, batch {rows}, min of {opts.Reps} after {opts.Warmup} warm-up runs");
    var rng = new Random(2);
    var data = new float[rows * dIn];
    for (int i = 0; i < data.Length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
    // Two regimes: no feature dead yet (the step torch_peer's sae_step times), and features dead so aux-k runs
    // (k_aux = d_in/2, as SAELens's TopK training once features die; torch_peer's sae_step_aux): a window of one
    // batch makes every feature silent for one batch dead from the second step on.
    foreach (var (key, deadWindow) in new[] { ("sae_step", int.MaxValue), ("sae_step_aux", rows) })
    {
        var options = new SaeTrainingOptions
        {
            Steps = opts.Warmup + opts.Reps + 8, BatchSize = rows, LearningRate = 1e-4f, BDecInit = BDecInit.Mean, DeadWindowTokens = deadWindow,
        };
        SaeTrainer NewTrainer(IComputeBackend backend)
        {
            var dictionary = new SparseDictionary(SaeShape.Sae(dIn, dSae), new TopKActivation(k));
            dictionary.Initialize(seed: 1);
            var t = new SaeTrainer(dictionary, options, backend);
            t.Begin(new InMemoryRows(data, dIn));
            t.Step(); // the first step sees no dead feature in either regime
            return t;
        }
        var trainer = NewTrainer(fp32);
        SaeStepMetrics last = null!;
        double ms = Timing.Min(opts.Warmup, opts.Reps, () => last = trainer.Step()); // a step ends by reading its metrics: a device sync
        var before = fp32.Transfers.Snapshot();
        trainer.Step();
        var copies = fp32.Transfers.Snapshot() - before;
        Console.WriteLine($"{key,-12} {ms,10:F2} ms {rows / ms * 1000,12:F0} tok/s   loss {last.Loss:G5}   dead {last.DeadFraction:P1}   transfers per step: {Compare.Copies(copies)}");
        var profile = new List<Dictionary<string, object>>();
        if (opts.Profile)
        try
        {
            // The same step again through a timing proxy: each backend call between two syncs (an upper bound per op).
            var (timed, timer) = OpTimer.Wrap(fp32, fp32.Synchronize);
            var profiled = NewTrainer(timed);
            profiled.Step();
            timer.On = true;
            var sw = Stopwatch.StartNew();
            profiled.Step();
            double total = sw.Elapsed.TotalMilliseconds;
            timer.On = false;
            var ops = timer.Totals();
            Console.WriteLine($"  one step through the op timer: {total:F1} ms, {ops.Sum(o => o.Ms):F1} ms in backend calls (each between two syncs)");
            foreach (var (op, calls, opMs) in ops.Take(14))
            {
                Console.WriteLine($"  {op,-26} {calls,4}× {opMs,9:F2} ms");
                profile.Add(new() { ["op"] = op, ["calls"] = calls, ["ms"] = opMs });
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // The profile is a diagnosis: losing it must not cost the timings of a run with minutes of device time.
            Console.WriteLine($"  profile FAILED: {e.GetType().Name}: {e.Message}");
        }
        report[key] = new Dictionary<string, object>
        {
            ["d_in"] = dIn, ["d_sae"] = dSae, ["k"] = k, ["batch"] = rows, ["dead_window_tokens"] = deadWindow, ["dead_fraction"] = last.DeadFraction,
            ["ms"] = ms, ["tok_s"] = rows / ms * 1000, ["loss"] = last.Loss, ["transfers"] = copies.ToString(), ["profile"] = profile,
        };
        Save();
    }
}
// (d) Matryoshka BatchTopK on the device: its step against the host trainer's (parity, a small SAE, every step's loss and the
// final decoder), then its time at the SAE shape beside a plain BatchTopK step (the levels' extra decoder GEMMs: the ratio).
if (opts.Sae is { } msae)
try
{
    var (dIn, dSae, k, rows) = msae;
    Console.WriteLine();
    var rng = new Random(5);
    float[] Rows(int n, int d) { var a = new float[n * d]; for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1); return a; }
    var small = Rows(1024, 64);
    SaeTrainer Small(IComputeBackend? backend)
    {
        var d = new SparseDictionary(SaeShape.Sae(64, 512), new MatryoshkaBatchTopKActivation(8, [32, 128, 512]));
        d.Initialize(seed: 3);
        var t = new SaeTrainer(d, new SaeTrainingOptions { Steps = 6, BatchSize = 256, LearningRate = 1e-3f, DeadWindowTokens = 512, Seed = 2 }, backend);
        t.Begin(new InMemoryRows(small, 64));
        return t;
    }
    var host = Small(null);
    var onDevice = Small(fp32);
    double worstLoss = 0;
    while (!host.IsComplete)
    {
        var (h, g) = (host.Step(), onDevice.Step());
        worstLoss = Math.Max(worstLoss, Math.Abs(h.Loss - g.Loss) / Math.Max(1e-6, Math.Abs(h.Loss)));
    }
    host.Finish();
    onDevice.Finish();
    double worstDec = 0, scale = host.Dictionary.P.WDec.Max(MathF.Abs);
    for (int i = 0; i < host.Dictionary.P.WDec.Length; i++) worstDec = Math.Max(worstDec, Math.Abs(host.Dictionary.P.WDec[i] - onDevice.Dictionary.P.WDec[i]) / scale);
    Console.WriteLine($"Matryoshka BatchTopK parity (64 → 512, levels 32/128/512, 6 steps): loss rel. diff ≤ {worstLoss:E2}, W_dec ≤ {worstDec:E2} of its largest");

    int[] levels = [.. new[] { dSae / 64, dSae / 16, dSae / 4 }.Where(w => w >= 1).Distinct(), dSae];
    var data = Rows(rows, dIn);
    double Time(SaeActivation act)
    {
        var d = new SparseDictionary(SaeShape.Sae(dIn, dSae), act);
        d.Initialize(seed: 1);
        var t = new SaeTrainer(d, new SaeTrainingOptions { Steps = opts.Warmup + opts.Reps + 2, BatchSize = rows, LearningRate = 1e-4f, BDecInit = BDecInit.Mean }, fp32);
        t.Begin(new InMemoryRows(data, dIn));
        t.Step();
        return Timing.Min(opts.Warmup, opts.Reps, () => t.Step());
    }
    double plain = Time(new BatchTopKActivation(k)), nested = Time(new MatryoshkaBatchTopKActivation(k, levels));
    Console.WriteLine($"BatchTopK step {plain:F2} ms, Matryoshka (levels {string.Join("/", levels)}) {nested:F2} ms: {nested / plain:F2}× (d_in {dIn}, d_sae {dSae}, k {k}, batch {rows})");
    report["matryoshka"] = new Dictionary<string, object>
    {
        ["parity_loss_rel"] = worstLoss, ["parity_w_dec_rel"] = worstDec, ["levels"] = levels,
        ["batchtopk_ms"] = plain, ["matryoshka_ms"] = nested, ["ratio"] = nested / plain,
    };
    Save();
}
catch (Exception e) when (e is not OutOfMemoryException)
{
    Console.WriteLine($"matryoshka FAILED: {e.GetType().Name}: {e.Message}");
}
// (d2) A BatchTopK crosscoder step (two sources of d_in each, d_sae / 2 latents, k per row on average: Minder et al.'s
// model-diffing crosscoder) through SaeTrainer's device path, against torch_peer's crosscoder_step (the same math in torch).
if (opts.Sae is { } csae)
try
{
    var (d, dSae, k, rows) = csae;
    int latents = Math.Max(2, dSae / 2);
    Console.WriteLine();
    var rng = new Random(6);
    var data = new float[(long)rows * 2 * d];
    for (long i = 0; i < data.Length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
    var dictionary = new SparseDictionary(SaeShape.Sae(2 * d, latents, applyBDecToInput: false), new Loupe.Dictionaries.Crosscoders.CrosscoderBatchTopKActivation(k, 2));
    dictionary.Initialize(seed: 1);
    var trainer = new SaeTrainer(dictionary, new SaeTrainingOptions { Steps = opts.Warmup + opts.Reps + 2, BatchSize = rows, LearningRate = 1e-4f, BDecInit = BDecInit.Zeros }, fp32);
    trainer.Begin(new InMemoryRows(data, 2 * d));
    trainer.Step();
    double ms = Timing.Min(opts.Warmup, opts.Reps, () => trainer.Step());
    Console.WriteLine($"crosscoder BatchTopK step (2 sources × d {d}, {latents} latents, k {k}, batch {rows}; upload, forward with code norms, backward, Adam; fp32): {ms:F2} ms");
    report["crosscoder_step"] = new Dictionary<string, object> { ["d"] = d, ["sources"] = 2, ["d_sae"] = latents, ["k"] = k, ["batch"] = rows, ["ms"] = ms };
    Save();
}
catch (Exception e) when (e is not OutOfMemoryException)
{
    Console.WriteLine($"crosscoder_step FAILED: {e.GetType().Name}: {e.Message}");
}
// (e) A logistic probe's objective (LogisticObjective: loss and gradient over every row) on the device against the CPU
// backend in the same run, and torch_peer's probe_eval (the same products in torch, gradients left on the device).
if (opts.Probe is var (probeRows, probeWidth, probeClasses))
try
{
    Console.WriteLine();
    Console.WriteLine($"logistic probe objective (loss + gradient over every row; W, b in, ∂W, ∂b and one scalar out): {probeRows} rows × {probeWidth}, {probeClasses} classes, min of {opts.Reps}");
    var rng = new Random(4);
    var x = new float[(long)probeRows * probeWidth];
    for (long i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
    var y = new int[probeRows];
    for (int i = 0; i < y.Length; i++) y[i] = rng.Next(probeClasses);
    var standardizer = Loupe.Probes.Classifiers.Standardizer.Fit(x, probeWidth);
    var theta = new double[probeClasses * probeWidth + probeClasses];
    for (int i = 0; i < theta.Length; i++) theta[i] = 0.01 * (rng.NextDouble() - 0.5);
    double[] Evaluate(IComputeBackend backend, out double ms)
    {
        var objective = new Loupe.Probes.Classifiers.LogisticObjective(Loupe.Probes.Classifiers.ProbeRows.Upload(backend, standardizer, x), y, probeClasses, 1e-3);
        var g = new double[theta.Length];
        ms = Timing.Min(opts.Warmup, opts.Reps, () => objective.Evaluate(theta, g)); // each evaluation ends reading ∂W back: a sync
        return g;
    }
    var deviceGrad = Evaluate(fp32, out double deviceMs);
    var cpuGrad = Evaluate(CpuBackend.Instance, out double cpuMs);
    double scale = cpuGrad.Max(Math.Abs), worst = cpuGrad.Zip(deviceGrad, (a, b) => Math.Abs(a - b)).Max() / scale;
    Console.WriteLine($"probe_eval   {deviceMs,10:F2} ms on the device, {cpuMs,10:F1} ms on the CPU backend ({cpuMs / deviceMs:F0}×); gradient device vs CPU {worst:E2} of its largest entry");
    report["probe_eval"] = new Dictionary<string, object>
    {
        ["rows"] = probeRows, ["width"] = probeWidth, ["classes"] = probeClasses, ["ms"] = deviceMs, ["cpu_ms"] = cpuMs, ["gradient_rel_diff"] = worst,
    };
    Save();
}
catch (Exception e) when (e is not OutOfMemoryException)
{
    Console.WriteLine($"probe FAILED: {e.GetType().Name}: {e.Message}");
}
// (d) An attribution graph on the device: circuit-tracer's fixture (tiny GPT-2, three SAELens transcoders),
// the CPU backend's adjacency against the device's, and the time of both.
if (opts.Attribution is { } attributionData && opts.Fixtures is { } fixtureRoot)
{
    Console.WriteLine();
    string gpt2 = Path.Combine(fixtureRoot, "gpt2"), transcoders = Path.Combine(attributionData, "transcoders");
    int[] prompt = [0, 360, 480, 161, 89, 311, 293, 431];
    Loupe.Attribution.AttributionGraph Attribute(Loupe.Tensors.Backends.IComputeBackend? backend, out double ms)
    {
        using var model = ModelLoader.LoadFolder(gpt2, backend);
        var tc = Loupe.Dictionaries.Transcoders.PerLayerTranscoders.LoadSaeLens(transcoders, model.Config.NLayers);
        Loupe.Attribution.AttributionGraph? graph = null;
        ms = Timing.Min(1, Math.Max(1, opts.Reps / 4), () => graph = new Loupe.Attribution.Attributor(model, tc).Attribute(prompt));
        return graph!;
    }
    var cpuGraph = Attribute(null, out double cpuMs);
    var deviceGraph = Attribute(fp32, out double deviceMs);
    double diff = Compare.RelativeMax(cpuGraph.DenseAdjacency(), deviceGraph.DenseAdjacency());
    Console.WriteLine($"attribution graph (circuit-tracer fixture, 197 nodes): device vs CPU adjacency {diff:E2} (max |Δ| / max |A|), {deviceMs:F1} ms on the device, {cpuMs:F1} ms on the CPU");
    report["attribution"] = new Dictionary<string, object> { ["adjacency_rel_diff"] = diff, ["device_ms"] = deviceMs, ["cpu_ms"] = cpuMs };
    Save();

    // (d') A cross-layer transcoder's graph on the device with its decoders uploaded whole and left on the host (each pass
    // uploading its active features' rows): time, weight bytes each graph uploads, and the two adjacencies against each other.
    try
    {
        var shape = opts.Models.FirstOrDefault(m => m.ModelType == "gpt2") ?? ModelShape.Gpt2Tiny;
        using var model = ModelLoader.LoadFolder(RandomModels.Ensure(opts.Work, shape, log), fp32);
        int L = model.Config.NLayers, D = model.Config.DModel, features = shape.Layers <= 2 ? 256 : 4096, tokens = Math.Min(opts.Seq, 64);
        var clt = new Loupe.Dictionaries.Transcoders.CrossLayerTranscoder(new Loupe.Dictionaries.Transcoders.CltShape(L, D, features, D), new TopKActivation(16));
        clt.Initialize(7, decoderNorm: 0.5f);
        var rng = new Random(5);
        int[] ids = [.. Enumerable.Range(0, tokens).Select(_ => rng.Next(model.Config.DVocab))];
        var rows = new List<Dictionary<string, object>>();
        var graphs = new Dictionary<string, float[]>();
        foreach (var mode in new[] { Loupe.Dictionaries.Transcoders.DeviceDecoders.Whole, Loupe.Dictionaries.Transcoders.DeviceDecoders.ActiveRows })
        {
            long before = fp32.Transfers.BytesToDevice(TransferKind.Weights);
            var onDevice = Loupe.Dictionaries.Transcoders.DeviceMlpReplacement.Upload(clt, fp32, mode);
            long upload = fp32.Transfers.BytesToDevice(TransferKind.Weights) - before;
            var attributor = new Loupe.Attribution.Attributor(model, onDevice);
            Loupe.Attribution.AttributionGraph? graph = null;
            long perGraph = 0;
            double ms = Timing.Min(1, Math.Max(1, opts.Reps / 8), () =>
            {
                long b = fp32.Transfers.BytesToDevice(TransferKind.Weights);
                graph = attributor.Attribute(ids);
                perGraph = fp32.Transfers.BytesToDevice(TransferKind.Weights) - b;
            });
            graphs[mode.ToString()] = graph!.DenseAdjacency();
            Console.WriteLine($"CLT graph ({shape.Name}, {features} features/layer, TopK 16, {tokens} tokens, {graph.ActiveFeatures.Length} active), decoders {mode}: " +
                              $"{ms:F0} ms; upload {upload / 1048576.0:F1} MiB once, {perGraph / 1048576.0:F1} MiB of weights per graph");
            rows.Add(new Dictionary<string, object> { ["decoders"] = mode.ToString(), ["ms"] = ms, ["upload_bytes"] = upload, ["weight_bytes_per_graph"] = perGraph, ["active"] = graph.ActiveFeatures.Length });
        }
        double same = Compare.RelativeMax(graphs["Whole"], graphs["ActiveRows"]);
        Console.WriteLine($"CLT graph, decoders on the host vs whole: adjacency {same:E2} (max |Δ| / max |A|)");
        report["clt_attribution"] = new Dictionary<string, object> { ["model"] = shape.Name, ["features"] = features, ["tokens"] = tokens, ["rows"] = rows, ["adjacency_rel_diff"] = same };
    }
    catch (Exception e) when (e is not OutOfMemoryException)
    {
        Console.WriteLine($"CLT attribution FAILED: {e.GetType().Name}: {e.Message}");
    }
}
Save();
return 0;

// The JSON after every section (atomically replaced): a run cut by its time limit still brings back what it measured.
void Save()
{
    if (opts.Json is { } json) Loupe.Reports.AtomicFile.WriteJson(json, report);
}

static class Timing
{
    /// <summary>The minimum wall time in ms of <paramref name="reps"/> runs after <paramref name="warmup"/> (each run ends with a device sync).</summary>
    public static double Min(int warmup, int reps, Action run)
    {
        for (int i = 0; i < warmup; i++) run();
        double best = double.MaxValue;
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            run();
            best = Math.Min(best, sw.Elapsed.TotalMilliseconds);
        }
        return best;
    }
}

static class Compare
{
    public static double RelativeL2(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        double norm = 0, diff = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            norm += (double)expected[i] * expected[i];
            double d = (double)expected[i] - actual[i];
            diff += d * d;
        }
        return Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
    }

    public static double RelativeMax(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        double scale = 0, diff = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            scale = Math.Max(scale, Math.Abs(expected[i]));
            diff = Math.Max(diff, Math.Abs(expected[i] - actual[i]));
        }
        return diff / Math.Max(scale, 1e-30);
    }

    public static string Copies(TransferSnapshot s) =>
        $"data {s.In(TransferKind.Data)}↓{s.Out(TransferKind.Data)}↑ inputs {s.In(TransferKind.Inputs)} scalars {s.Out(TransferKind.Scalars)} weights {s.In(TransferKind.Weights)}";
}

sealed record GpuBenchOptions(string Device, string? Fixtures, IReadOnlyList<ModelShape> Models, IReadOnlyList<string> DTypes,
    int Batch, int Seq, int Reps, int Warmup, string Work, string? Json, (int DIn, int DSae, int K, int Batch)? Sae, string? Attribution, bool Profile, bool NoParity, bool PtxCheck,
    (int Rows, int Width, int Classes)? Probe)
{
    public static GpuBenchOptions Parse(string[] args)
    {
        string device = Environment.GetEnvironmentVariable("LOUPE_DEVICE") ?? "cuda:0";
        string? fixtures = null, json = null, attribution = null;
        string work = Path.Combine(Path.GetTempPath(), "loupe-gpubench");
        var models = new List<ModelShape> { ModelShape.Gpt2Small, ModelShape.Llama1B };
        var dtypes = new List<string> { "fp32", "bf16", "bf16r", "fp16" };
        int batch = 1, seq = 128, reps = 20, warmup = 3;
        bool sae = false, quick = false, profile = false, noParity = false, ptxCheck = false;
        var saeShape = (DIn: 2048, DSae: 65536, K: 64, Batch: 4096);
        bool probe = false;
        var probeShape = (Rows: 100_000, Width: 2048, Classes: 12);
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--device": device = Next(); break;
                case "--fixtures": fixtures = Next(); break;
                case "--no-parity": noParity = true; break;
                case "--models": models = Next() is "none" ? [] : args[i].Split(',').Select(ModelShape.Parse).ToList(); break;
                case "--dtypes":
                    dtypes = Next().Split(',').ToList();
                    if (dtypes.FirstOrDefault(d => d is not ("fp32" or "bf16" or "bf16r" or "fp16")) is { } bad)
                        throw new ArgumentException($"--dtypes: '{bad}' is not fp32, bf16 (split activations), bf16r (rounded activations) or fp16 (scaled, split activations)");
                    break;
                case "--batch": batch = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--seq": seq = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--reps": reps = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--warmup": warmup = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--work": work = Next(); break;
                case "--json": json = Next(); break;
                case "--sae": sae = true; break;
                case "--profile": profile = true; break;
                case "--ptx-check": ptxCheck = true; break;
                case "--attribution": attribution = Next(); break;
                case "--probe": probe = true; break;
                case "--sae-shape":
                    var d = Next().Split(',').Select(v => int.Parse(v, CultureInfo.InvariantCulture)).ToArray();
                    if (d.Length != 4) throw new ArgumentException("--sae-shape needs d_in,d_sae,k,batch");
                    saeShape = (d[0], d[1], d[2], d[3]);
                    sae = true;
                    break;
                case "--quick":
                    models = [ModelShape.Gpt2Tiny, ModelShape.LlamaTiny];
                    reps = 2; warmup = 1; seq = 16; quick = true; break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        if (quick && !args.Contains("--sae-shape")) saeShape = (64, 512, 8, 128);
        if (quick) probeShape = (2_000, 64, 12);
        return new(device, fixtures, models, dtypes, batch, seq, reps, warmup, work, json, sae ? saeShape : null, attribution, profile, noParity, ptxCheck,
            probe ? probeShape : null);
    }
}

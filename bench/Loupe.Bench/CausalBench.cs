using System.Diagnostics;
using Loupe.Causal.Attribution;
using Loupe.Causal.Patching;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;

namespace Loupe.Bench;

// The causal toolkit's costs, in forward-pass equivalents measured in the same run:
// 1. a plain forward (the unit);
// 2. forward + backward to every residual-stream gradient;
// 3. a full head × position attribution-patching sweep (2 forwards + 1 backward);
// 4. exhaustive activation patching of the same sweep — timed on a few batched passes of its cells
//    and extrapolated to all of them (running every cell would take over an hour on two cores).

/// <summary>Timings of gradients and patching sweeps on one model.</summary>
public sealed record CausalResult(
    string Model, int Batch, int Length,
    double ForwardMs, double ForwardBackwardMs, double AttributionSweepMs, int SweepCells,
    double ActivationPatchingMsPerCell, int ActivationCellsTimed, double ActivationSweepMsExtrapolated,
    double SplitForwardMs = double.NaN, double SplitBackwardMs = double.NaN)
{
    /// <summary>A forward with every block's attention inputs split per head (a hook at each hook_q_input), in forwards.</summary>
    public double SplitForwardRatio => SplitForwardMs / ForwardMs;
    /// <summary>Forward + backward to every block's hook_q/k/v_input, in forwards.</summary>
    public double SplitBackwardRatio => SplitBackwardMs / ForwardMs;
    public double BackwardRatio => ForwardBackwardMs / ForwardMs;
    public double AttributionForwardEquivalents => AttributionSweepMs / ForwardMs;
    public double SpeedupOverActivationPatching => ActivationSweepMsExtrapolated / AttributionSweepMs;
}

public static class CausalBench
{
    public static CausalResult Run(string name, string folder, int reps, TextWriter log, int activationPasses = 2)
    {
        using var model = ModelLoader.LoadFolder(folder);
        const int T = 128;
        var random = new Random(7);
        int V = model.Config.DVocab;
        var clean = TokenBatch.Single(Enumerable.Range(0, T).Select(_ => random.Next(V)).ToArray());
        var corruptIds = clean.Ids.ToArray();
        for (int p = T / 2; p < T; p += 7) corruptIds[p] = random.Next(V);
        var corrupt = TokenBatch.Single(corruptIds);
        var metric = new LogitDiff(17, 42);

        log.WriteLine($"causal [{name}]: forward …");
        double forward = Median(reps, () => model.Run(clean));
        log.WriteLine($"causal [{name}]: forward + backward to every resid_pre/resid_post gradient …");
        double backward = Median(reps, () => model.RunWithGradients(clean, metric, "blocks.*.hook_resid_pre,blocks.*.hook_resid_post"));
        log.WriteLine($"causal [{name}]: per-head attention inputs (TransformerLens's split q/k/v inputs) …");
        var split = new RunOptions();
        for (int l = 0; l < model.Config.NLayers; l++) split.AddHook(HookNames.QInput(l), (x, _) => x);
        double splitForward = Median(reps, () => model.Run(clean, split));
        double splitBackward = Median(reps, () => model.RunWithGradients(clean, metric, "blocks.*.hook_q_input,blocks.*.hook_k_input,blocks.*.hook_v_input"));
        log.WriteLine($"causal [{name}]: attribution patching, head × position …");
        PatchingResult? sweep = null;
        double attribution = Median(reps, () => sweep = AttributionPatching.Sweep(model, clean, corrupt, metric, PatchTarget.HeadOutByPosition));

        // Exhaustive activation patching of the same cells, batched 64 rows a pass: time a few passes.
        int cellsTimed = 64 * activationPasses;
        var subset = PatchTarget.HeadOutByPosition with { Layers = [0], Heads = [.. Enumerable.Range(0, model.Config.NHeads)], Positions = [.. Enumerable.Range(0, cellsTimed / model.Config.NHeads)] };
        log.WriteLine($"causal [{name}]: activation patching on {cellsTimed} of {sweep!.Cells.Length} cells …");
        var clock = Stopwatch.StartNew();
        var measured = ActivationPatching.Sweep(model, clean, corrupt, metric, subset, new PatchOptions { MaxRows = 64 });
        double perCell = clock.Elapsed.TotalMilliseconds / measured.Cells.Length;
        return new CausalResult(name, 1, T, forward, backward, attribution, sweep.Cells.Length, perCell, measured.Cells.Length, perCell * sweep.Cells.Length,
            splitForward, splitBackward);
    }

    public static void Print(TextWriter w, CausalResult r)
    {
        w.WriteLine();
        w.WriteLine($"## Causal toolkit — {r.Model}, batch {r.Batch} × {r.Length} tokens");
        w.WriteLine($"forward                                   {r.ForwardMs,10:F1} ms   1.00 forward");
        w.WriteLine($"forward + backward (all resid gradients)  {r.ForwardBackwardMs,10:F1} ms   {r.BackwardRatio:F2} forwards   (target ≤ 3)");
        if (!double.IsNaN(r.SplitForwardMs))
        {
            w.WriteLine($"forward, attention split per head (hook at every hook_q_input) {r.SplitForwardMs,8:F1} ms   {r.SplitForwardRatio:F2} forwards");
            w.WriteLine($"forward + backward to every hook_q/k/v_input {r.SplitBackwardMs,10:F1} ms   {r.SplitBackwardRatio:F2} forwards");
        }
        w.WriteLine($"attribution sweep, {r.SweepCells} head×position cells {r.AttributionSweepMs,8:F1} ms   {r.AttributionForwardEquivalents:F2} forwards   (target ≈ 3)");
        w.WriteLine($"activation patching, {r.ActivationCellsTimed} cells timed    {r.ActivationPatchingMsPerCell,10:F2} ms per cell");
        w.WriteLine($"activation patching, all {r.SweepCells} cells (extrapolated) {r.ActivationSweepMsExtrapolated / 1000,8:F1} s   → attribution is {r.SpeedupOverActivationPatching:F0}× faster (target ≥ 100×)");
    }

    /// <summary>
    /// Forward and forward + backward (the gradient at every resid_pre, the peer table's workload) of a
    /// <paramref name="batch"/> × 128 batch of random tokens; the minimum and median of <paramref name="reps"/> runs each,
    /// the two alternating so that a slow period on a shared machine hits both.
    /// </summary>
    public static (double ForwardMin, double ForwardMedian, double BackwardMin, double BackwardMedian) ForwardBackward(string folder, int batch, int reps)
    {
        using var model = ModelLoader.LoadFolder(folder);
        const int T = 128;
        var random = new Random(11);
        var ids = Enumerable.Range(0, batch * T).Select(_ => random.Next(model.Config.DVocab)).ToArray();
        var tokens = new TokenBatch(ids, batch, T);
        var metric = new LogitDiff(17, 42);
        void Forward() => model.Run(tokens);
        void Backward() => model.RunWithGradients(tokens, metric, "blocks.*.hook_resid_pre");
        for (int i = 0; i < WarmupRuns; i++) { Forward(); Backward(); }
        var (f, b) = (new List<double>(), new List<double>());
        for (int i = 0; i < Math.Max(1, reps); i++)
        {
            f.Add(Time(Forward));
            b.Add(Time(Backward));
        }
        f.Sort();
        b.Sort();
        return (f[0], f[f.Count / 2], b[0], b[b.Count / 2]);

        static double Time(Action body)
        {
            var clock = Stopwatch.StartNew();
            body();
            return clock.Elapsed.TotalMilliseconds;
        }
    }

    /// <summary>Warm-up runs before timing: tiered JIT and first-touch page faults settle only after several calls, and one left the forward half-cold.</summary>
    const int WarmupRuns = 5;

    static double Median(int reps, Action body)
    {
        for (int i = 0; i < WarmupRuns; i++) body();
        var times = new List<double>();
        for (int i = 0; i < Math.Max(1, reps); i++)
        {
            var clock = Stopwatch.StartNew();
            body();
            times.Add(clock.Elapsed.TotalMilliseconds);
        }
        times.Sort();
        return times[times.Count / 2];
    }
}

using System.Diagnostics;
using Loupe.Causal.Metrics;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Causal.Patching;

// Ablation sweeps reuse the patching machinery with a different source of activations.
// 1. Run the tokens once, caching the target's hooks (baseline metric, activation shapes).
// 2. Build one replacement per hook, shaped like the activation [batch, …]:
//    zero → zeros; mean → the mean over reference batches' rows (per position, or over positions
//    too, broadcast back); resample → each row's activation from a seeded random row of another batch.
// 3. Patch each cell's slice of the replacement into the run (batched as in ActivationPatching)
//    and report the metric and its change from the baseline.

/// <summary>
/// What replaces an activation when a component is ablated. Used by <see cref="AblationSweep"/>
/// and <see cref="Patches"/>, over any hook and head with the patching machinery.
/// </summary>
public abstract class Ablation
{
    /// <summary>A short description for reports.</summary>
    public abstract string Name { get; }

    /// <summary>Replace the activation with zeros.</summary>
    public static Ablation Zero { get; } = new ZeroAblation();

    /// <summary>
    /// Replace the activation with its mean over the rows of <paramref name="reference"/> batches:
    /// per position (the reference must have the ablated run's length), or also over positions
    /// (axis 1; any length) when <paramref name="perPosition"/> is false.
    /// </summary>
    /// <exception cref="InputError">No reference batch is given.</exception>
    public static Ablation Mean(IReadOnlyList<TokenBatch> reference, bool perPosition = true) => new MeanAblation(reference, perPosition);

    /// <summary>Replace each row's activation with that of a row of <paramref name="source"/> drawn at random (seeded; same length).</summary>
    public static Ablation Resample(TokenBatch source, int seed = 0) => new ResampleAblation(source, seed);

    /// <summary>
    /// The replacement for each of <paramref name="hooks"/>, shaped like <paramref name="baseline"/>'s
    /// activation there. Adds the forward passes it needs to <paramref name="passes"/>.
    /// </summary>
    internal abstract Dictionary<string, Tensor> Replacements(HookedTransformer model, SweepReadout readout, IReadOnlyCollection<string> hooks, ActivationCache baseline, ref int passes);

    /// <summary>
    /// Patches that ablate the given cells of <paramref name="target"/> on <paramref name="tokens"/>,
    /// for <see cref="ActivationPatching.Run"/> (e.g. ablate several heads at once).
    /// </summary>
    public Patch[] Patches(HookedTransformer model, TokenBatch tokens, PatchTarget target, params IReadOnlyList<PatchCell> cells)
    {
        var layers = (target with { Layers = cells.Select(c => c.Layer).Distinct().ToArray() }).ResolveLayers(model);
        if (layers.Length > 0) target = target.ResolveAxes(model, layers[0]);
        var hooks = new HashSet<string>(layers.Select(target.HookName), StringComparer.Ordinal);
        var readout = new SweepReadout(model);
        var cache = readout.Run(tokens, new RunOptions { CacheFilter = hooks.Contains }).Cache;
        int passes = 0;
        var replacements = Replacements(model, readout, hooks, cache, ref passes);
        readout.Read(); // the runs' finiteness checks
        return cells.Select(c => new Patch(target.HookName(c.Layer), replacements[target.HookName(c.Layer)], target.HeadAxis, c.Head, target.PositionAxis, c.Position)).ToArray();
    }

    sealed class ZeroAblation : Ablation
    {
        public override string Name => "zero";

        internal override Dictionary<string, Tensor> Replacements(HookedTransformer model, SweepReadout readout, IReadOnlyCollection<string> hooks, ActivationCache baseline, ref int passes) =>
            hooks.ToDictionary(h => h, h => model.Backend.Zeros(baseline[h].Shape.ToArray()), StringComparer.Ordinal);
    }

    sealed class MeanAblation : Ablation
    {
        readonly IReadOnlyList<TokenBatch> _reference;
        readonly bool _perPosition;

        public MeanAblation(IReadOnlyList<TokenBatch> reference, bool perPosition)
        {
            if (reference.Count == 0) throw new InputError("mean ablation needs at least one reference batch");
            _reference = reference;
            _perPosition = perPosition;
        }

        public override string Name => _perPosition ? "mean (per position)" : "mean (over positions)";

        internal override Dictionary<string, Tensor> Replacements(HookedTransformer model, SweepReadout readout, IReadOnlyCollection<string> hooks, ActivationCache baseline, ref int passes)
        {
            var set = new HashSet<string>(hooks, StringComparer.Ordinal);
            var backend = model.Backend;
            // Σ over reference rows on the model's device, kept per position: [pos, …] (or [1, …] after averaging positions).
            var sums = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            var counts = new Dictionary<string, long>(StringComparer.Ordinal);
            foreach (var batch in _reference)
            {
                var cache = readout.Run(batch, new RunOptions { CacheFilter = set.Contains }).Cache;
                passes++;
                foreach (var hook in hooks)
                {
                    var act = cache[hook];
                    var target = baseline[hook];
                    if (_perPosition && !act.Shape[1..].SequenceEqual(target.Shape[1..]))
                        throw new InputError($"mean ablation per position: the reference activation at '{hook}' has shape {act.ShapeString} but the ablated run's is {target.ShapeString}; give reference batches of the same length, or average over positions");
                    if (!_perPosition) CheckPositionAveraging(hook, act, target);
                    int rowsPerItem = _perPosition ? act.Dim(0) : act.Dim(0) * act.Dim(1);
                    int rowSize = act.Length / rowsPerItem;
                    if (!sums.TryGetValue(hook, out var sum)) sums[hook] = sum = backend.Zeros(rowSize);
                    backend.SumMiddleAxis(act, 1, rowsPerItem, rowSize, sum, accumulate: true);
                    counts[hook] = counts.GetValueOrDefault(hook) + rowsPerItem;
                }
            }
            var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            foreach (var hook in hooks)
            {
                var target = baseline[hook];
                var mean = sums[hook];
                backend.Scale(mean, (float)(1.0 / counts[hook]), mean);
                // Broadcast back over the ablated run's rows (and positions): source stride 0 repeats the mean.
                var y = backend.Empty(target.Shape.ToArray());
                backend.CopyRows(mean, 0, 0, y, 0, mean.Length, y.Length / mean.Length, mean.Length);
                result[hook] = y;
            }
            return result;
        }

        static void CheckPositionAveraging(string hook, Tensor act, Tensor target)
        {
            if (hook.EndsWith("hook_pattern", StringComparison.Ordinal) || hook.EndsWith("hook_attn_scores", StringComparison.Ordinal))
                throw new InputError($"mean ablation over positions is not defined for '{hook}' (its axes are query and key positions); use the per-position mean");
            if (act.Rank < 3 || !act.Shape[2..].SequenceEqual(target.Shape[2..]))
                throw new InputError($"mean ablation over positions: the reference activation at '{hook}' has shape {act.ShapeString}, incompatible with the ablated run's {target.ShapeString}");
        }
    }

    sealed class ResampleAblation(TokenBatch source, int seed) : Ablation
    {
        public override string Name => $"resample (seed {seed})";

        internal override Dictionary<string, Tensor> Replacements(HookedTransformer model, SweepReadout readout, IReadOnlyCollection<string> hooks, ActivationCache baseline, ref int passes)
        {
            var set = new HashSet<string>(hooks, StringComparer.Ordinal);
            var cache = readout.Run(source, new RunOptions { CacheFilter = set.Contains }).Cache;
            passes++;
            var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            foreach (var hook in hooks)
            {
                var act = cache[hook];
                var target = baseline[hook];
                if (!act.Shape[1..].SequenceEqual(target.Shape[1..]))
                    throw new InputError($"resample ablation: the source activation at '{hook}' has shape {act.ShapeString} but the ablated run's is {target.ShapeString}; give a source batch of the same length");
                // The same row choice at every hook, so a row's ablations all come from one input.
                var rng = new Random(seed);
                var y = model.Backend.Empty(target.Shape.ToArray());
                for (int b = 0; b < target.Dim(0); b++)
                    ActivationSlice.Copy(model.Backend, act, rng.Next(act.Dim(0)), y, b, 1, null, -1, null, -1);
                result[hook] = y;
            }
            return result;
        }
    }
}

/// <summary>Ablates each cell of a target in turn and reports the metric change (steps at the top of this file).</summary>
public static class AblationSweep
{
    /// <exception cref="InputError">The target's hook is not in this model, or the ablation's reference does not fit.</exception>
    /// <exception cref="InputError">A layer, head or position is out of range.</exception>
    public static AblationResult Sweep(HookedTransformer model, TokenBatch tokens, IMetric metric, PatchTarget target, Ablation ablation, PatchOptions? options = null)
    {
        options ??= new PatchOptions();
        var clock = Stopwatch.StartNew();
        var layers = target.ResolveLayers(model);
        target = target.ResolveAxes(model, layers[0]);
        var hooks = new HashSet<string>(layers.Select(target.HookName), StringComparer.Ordinal);
        var readout = new SweepReadout(model);
        var baseRun = readout.Run(tokens, new RunOptions { CacheFilter = hooks.Contains, LastPositionLogitsOnly = options.LastPositionLogitsOnly });
        int baseline = readout.Value(metric, baseRun.Logits);
        int passes = 1;
        var (heads, positions, cells) = ActivationPatching.Cells(target, layers, baseRun.Cache[target.HookName(layers[0])]);
        var replacements = ablation.Replacements(model, readout, hooks, baseRun.Cache, ref passes);
        var slots = PatchEngine.Evaluate(model, readout, tokens, metric, target, cells, h => replacements[h], options, ref passes);
        var read = readout.Read();
        return new AblationResult
        {
            Target = target.Name,
            Metric = metric.Name,
            Ablation = ablation.Name,
            Layers = layers,
            Heads = heads,
            Positions = positions,
            Cells = cells,
            Values = slots.Select(i => read[i]).ToArray(),
            BaselineValue = read[baseline],
            ForwardPasses = passes,
            CellsPerPass = PatchEngine.CellsPerPass(options, tokens.Batch),
            Seconds = clock.Elapsed.TotalSeconds,
        };
    }
}

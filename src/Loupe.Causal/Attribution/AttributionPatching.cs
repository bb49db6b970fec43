using System.Diagnostics;
using Loupe.Causal.Patching;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors.Backends;
using Loupe.Tensors;

namespace Loupe.Causal.Attribution;

// Attribution patching (Nanda 2023; Syed et al. 2023): a first-order estimate of every cell of an
// activation-patching sweep from two forwards and one backward.
// 1. Run the clean input, caching the target's activations a_clean at every swept layer.
// 2. Run the corrupt input forward and backward, caching a_corrupt and g = ∂m/∂a at the corrupt point.
// 3. For each cell, estimate m(corrupt with the cell patched to clean) − m_corrupt
//    ≈ Σ_{elements in the cell} (a_clean − a_corrupt) · g.
// 4. Report m_corrupt + estimate per cell, and normalize by (m_clean − m_corrupt) as activation patching does.
// Noising swaps the roles: the backward runs on the clean input and corrupt values are patched in.

/// <summary>Gradient × activation-difference estimates of activation-patching sweeps.</summary>
public static class AttributionPatching
{
    /// <summary>
    /// Estimates the sweep <see cref="ActivationPatching"/> would measure for <paramref name="target"/>,
    /// with 2 forward passes and 1 backward pass whatever the number of cells.
    /// </summary>
    /// <exception cref="InputError">Clean and corrupt batches differ in shape, or the target names hooks the model lacks.</exception>
    public static PatchingResult Sweep(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric, PatchTarget target, bool noising = false)
    {
        ActivationPatching.CheckPair(clean, corrupt);
        var clock = Stopwatch.StartNew();
        int[] layers = target.ResolveLayers(model);
        target = target.ResolveAxes(model, layers[0]);
        var hooks = layers.Select(target.HookName).ToArray();
        var wanted = new HashSet<string>(hooks, StringComparer.Ordinal);

        // The run that is patched INTO gets the backward pass; the other only a cached forward.
        var (receiver, donor) = noising ? (clean, corrupt) : (corrupt, clean);
        var donorRun = model.Run(donor, new RunOptions { CacheFilter = wanted.Contains });
        var receiverRun = model.RunWithGradients(receiver, metric, string.Join(",", hooks), new RunOptions { CacheFilter = wanted.Contains });
        double donorValue = MetricOnDevice.Evaluate(metric, donorRun.Logits, model.Backend).Value, receiverValue = receiverRun.Metric;
        double cleanValue = noising ? receiverValue : donorValue, corruptValue = noising ? donorValue : receiverValue;

        var (heads, positions, cells) = ActivationPatching.Cells(target, layers, receiverRun.Activations[hooks[0]]);
        var sums = layers.Zip(hooks).ToDictionary(
            x => x.First, x => model.Backend.Device.IsCpu
                ? CellSums(donorRun.Cache[x.Second], receiverRun.Activations[x.Second], receiverRun.Gradients[x.Second], target.HeadAxis, target.PositionAxis)
                : CellSumsOnDevice(model.Backend, donorRun.Cache[x.Second], receiverRun.Activations[x.Second], receiverRun.Gradients[x.Second], target.HeadAxis, target.PositionAxis));
        var values = cells.Select(c => receiverValue + sums[c.Layer][(Math.Max(c.Head, 0), Math.Max(c.Position, 0))]).ToArray();
        return new PatchingResult
        {
            Target = target.Name,
            Metric = metric.Name,
            Layers = layers,
            Heads = heads,
            Positions = positions,
            Cells = cells,
            Values = values,
            CleanValue = cleanValue,
            CorruptValue = corruptValue,
            Noising = noising,
            ForwardPasses = 2,
            CellsPerPass = cells.Length,
            Seconds = clock.Elapsed.TotalSeconds,
        };
    }

    /// <summary>
    /// <see cref="CellSums"/> where the activations live: the product is reduced over every axis but the head and
    /// position axes on the device, and only the <c>[head, position]</c> sums come back.
    /// </summary>
    static Dictionary<(int Head, int Position), double> CellSumsOnDevice(IComputeBackend be, Tensor donor, Tensor receiver, Tensor gradient, int? headAxis, int? positionAxis)
    {
        var shape = receiver.Shape.ToArray().ToList();
        var product = be.Empty([.. shape]);
        be.DifferenceProduct(donor, receiver, gradient, product);
        var kept = new List<int>();
        for (int a = shape.Count - 1; a >= 0; a--)
        {
            if (a == headAxis || a == positionAxis) { kept.Insert(0, a); continue; }
            int outer = shape.Take(a).Aggregate(1, (x, d) => x * d), inner = shape.Skip(a + 1).Aggregate(1, (x, d) => x * d);
            var reduced = be.Empty(outer * inner);
            be.SumMiddleAxis(product, outer, shape[a], inner, reduced);
            shape.RemoveAt(a);
            product = reduced;
        }
        var sums = product.ToCpu().Span;
        var result = new Dictionary<(int, int), double>();
        for (int i = 0; i < sums.Length; i++)
        {
            // The remaining axes are the kept ones, in their original order.
            int h = 0, p = 0, rest = i;
            for (int k = kept.Count - 1; k >= 0; k--)
            {
                int size = shape[k], index = rest % size;
                rest /= size;
                if (kept[k] == headAxis) h = index; else p = index;
            }
            result[(h, p)] = sums[i];
        }
        return result;
    }

    /// <summary>Σ (donor − receiver)·grad over each (head, position) cell; an axis that is not swept folds into index 0.</summary>
    static Dictionary<(int Head, int Position), double> CellSums(Tensor donor, Tensor receiver, Tensor gradient, int? headAxis, int? positionAxis)
    {
        var shape = receiver.Shape.ToArray();
        var strides = new int[shape.Length];
        for (int a = shape.Length - 1, s = 1; a >= 0; s *= shape[a], a--) strides[a] = s;
        var sums = new Dictionary<(int, int), double>();
        var ds = donor.Span;
        var rs = receiver.Span;
        var gs = gradient.Span;
        for (int i = 0; i < rs.Length; i++)
        {
            float diff = ds[i] - rs[i];
            // Masked attention scores are −∞ in both runs; their difference carries no signal.
            if (!float.IsFinite(diff)) continue;
            int h = headAxis is int ha ? i / strides[ha] % shape[ha] : 0;
            int p = positionAxis is int pa ? i / strides[pa] % shape[pa] : 0;
            sums[(h, p)] = sums.GetValueOrDefault((h, p)) + (double)diff * gs[i];
        }
        return sums;
    }
}

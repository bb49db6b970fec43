using System.Diagnostics;
using Loupe.Causal.Metrics;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Causal.Patching;

// Path patching (Wang et al. 2022, "Interpretability in the Wild", §3.1 and appendix B):
// the effect of senders on the metric that flows ONLY through the receivers' inputs.
// 1. Run clean and corrupt once; cache every head's output (hook_z) and every MLP output
//    (hook_mlp_out); evaluate the metric on both (m_clean, m_corrupt).
// 2. Run clean with the senders' outputs replaced by their corrupt values and every other
//    attention head frozen to its clean hook_z (MLPs are recomputed, so paths through MLPs count;
//    with FreezeMlps they are frozen to clean too). Cache the receivers' inputs: hook_q / hook_k /
//    hook_v of each receiver head (the kv head it reads, under grouped-query attention), or the
//    final residual stream.
// 3. Run clean with only the receivers' inputs patched from step 2 (for the final-residual
//    receiver, step 2's logits are already that run) and evaluate the metric.
// Sender sets are batched along the batch axis as in activation patching: row group r carries
// sender set r through steps 2 and 3, so k sets cost two forward passes.
// Shapes: clean, corrupt [B, pos]; passes run [k·B, pos]; hook_z [batch, pos, head_index, d_head];
// hook_q [batch, pos, head_index, d_head]; hook_k / hook_v [batch, pos, kv_head_index, d_head];
// hook_mlp_out [batch, pos, d_model].

/// <summary>A path-patching sender: head <see cref="Head"/> of layer <see cref="Layer"/>, or that layer's MLP when Head is null.</summary>
public sealed record PathSender(int Layer, int? Head)
{
    public static PathSender AttnHead(int layer, int head) => new(layer, head);
    public static PathSender Mlp(int layer) => new(layer, null);
    public override string ToString() => Head is int h ? $"L{Layer}H{h}" : $"MLP{Layer}";
}

/// <summary>Which input of a receiver head is patched.</summary>
public enum HeadInput { Q, K, V }

/// <summary>
/// A path-patching receiver: one input (q, k or v) of a head, or the final residual stream
/// (<see cref="FinalResidual"/>: the direct path to the logits).
/// </summary>
public sealed record PathReceiver(int Layer, int Head, HeadInput Input)
{
    /// <summary>The residual stream after the last block (the direct path to the logits).</summary>
    public static PathReceiver FinalResidual { get; } = new(-1, -1, HeadInput.Q);
    public bool IsFinalResidual => Layer < 0;
    public static PathReceiver Query(int layer, int head) => new(layer, head, HeadInput.Q);
    public static PathReceiver Key(int layer, int head) => new(layer, head, HeadInput.K);
    public static PathReceiver Value(int layer, int head) => new(layer, head, HeadInput.V);
    public override string ToString() => IsFinalResidual ? "resid_final" : $"L{Layer}H{Head}.{Input.ToString().ToLowerInvariant()}";
}

/// <summary>How path patching runs.</summary>
public sealed record PathPatchOptions
{
    /// <summary>Freeze every MLP (not a sender) to its clean output in step 2, so only attention-only paths count.</summary>
    public bool FreezeMlps { get; init; }
    /// <summary>Rows per batched forward pass.</summary>
    public int MaxRows { get; init; } = 64;
    /// <summary>Compute logits at the last position only (when the metric reads only position −1).</summary>
    public bool LastPositionLogitsOnly { get; init; }
}

/// <summary>
/// Path-patching results, one per sender set. <see cref="Normalized"/> is
/// <c>(m − m_corrupt) / (m_clean − m_corrupt)</c> (1 = the path changes nothing);
/// <see cref="Effect"/> is <c>1 − Normalized = (m_clean − m) / (m_clean − m_corrupt)</c>: the
/// share of the clean-to-corrupt change that flows along the path.
/// </summary>
public sealed class PathPatchingResult
{
    public required string Metric { get; init; }
    public required IReadOnlyList<PathSender>[] SenderSets { get; init; }
    public required PathReceiver[] Receivers { get; init; }
    public required double[] Values { get; init; }
    public required double CleanValue { get; init; }
    public required double CorruptValue { get; init; }
    double[]? _normalized;

    /// <summary>Each sender set's value normalized, derived from <see cref="Values"/>, <see cref="CleanValue"/> and <see cref="CorruptValue"/>.</summary>
    public double[] Normalized => _normalized ??= PatchNormalization.Of(Values, CleanValue, CorruptValue);
    public double[] Effect => Normalized.Select(n => 1 - n).ToArray();
    public bool FreezeMlps { get; init; }
    public int ForwardPasses { get; init; }
    public double Seconds { get; init; }

    /// <summary>The effect of the single sender <paramref name="sender"/>.</summary>
    /// <exception cref="InputError">That sender was not swept on its own.</exception>
    public double EffectOf(PathSender sender)
    {
        int i = Array.FindIndex(SenderSets, s => s.Count == 1 && s[0] == sender);
        return i >= 0 ? 1 - Normalized[i] : throw new InputError($"sender {sender} was not patched on its own");
    }
}

/// <summary>Path patching from senders to receivers (steps at the top of this file).</summary>
public static class PathPatching
{
    /// <summary>Path-patches each sender set in <paramref name="senderSets"/> to <paramref name="receivers"/>.</summary>
    /// <exception cref="InputError">Clean and corrupt differ in shape; no receivers; the final residual is mixed with head receivers; an MLP sender in an attention-only model.</exception>
    /// <exception cref="InputError">A sender's or receiver's layer or head is out of range (the message names which).</exception>
    public static PathPatchingResult Run(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric,
        IReadOnlyList<IReadOnlyList<PathSender>> senderSets, IReadOnlyList<PathReceiver> receivers, PathPatchOptions? options = null)
    {
        options ??= new PathPatchOptions();
        var clock = Stopwatch.StartNew();
        ActivationPatching.CheckPair(clean, corrupt);
        Check(model, senderSets, receivers);
        if (options.MaxRows < 1) throw new InputError($"MaxRows must be at least 1 (got {options.MaxRows})");
        var cfg = model.Config;
        var backend = model.Backend;
        int L = cfg.NLayers, B = clean.Batch;
        bool final = receivers[0].IsFinalResidual;

        // Step 1.
        var frozen = new HashSet<string>(StringComparer.Ordinal);
        for (int l = 0; l < L; l++)
        {
            frozen.Add(HookNames.Z(l));
            if (cfg.HasMlp) frozen.Add(HookNames.MlpOut(l));
        }
        var readout = new SweepReadout(model);
        var runClean = readout.Run(clean, new RunOptions { CacheFilter = frozen.Contains, LastPositionLogitsOnly = options.LastPositionLogitsOnly });
        var runCorrupt = readout.Run(corrupt, new RunOptions { CacheFilter = frozen.Contains, LastPositionLogitsOnly = options.LastPositionLogitsOnly });
        int mClean = readout.Value(metric, runClean.Logits), mCorrupt = readout.Value(metric, runCorrupt.Logits);
        int passes = 2;

        var receiverHooks = final ? [] : receivers.Select(ReceiverHook).Distinct().ToArray();
        int perPass = Math.Max(1, options.MaxRows / B);
        var values = new int[senderSets.Count];
        for (int start = 0; start < senderSets.Count; start += perPass)
        {
            int k = Math.Min(perPass, senderSets.Count - start);
            var tokens = PatchEngine.Replicate(clean, k);
            // Step 2: senders corrupt, other heads (and optionally MLPs) frozen clean.
            var step2 = new RunOptions { LastPositionLogitsOnly = options.LastPositionLogitsOnly, CacheFilter = new HashSet<string>(receiverHooks, StringComparer.Ordinal).Contains };
            for (int l = 0; l < L; l++)
            {
                int layer = l;
                step2.AddHook(HookNames.Z(l), (act, _) =>
                {
                    var cleanZ = runClean.Cache[HookNames.Z(layer)];
                    var corruptZ = runCorrupt.Cache[HookNames.Z(layer)];
                    // Every row group frozen to clean in one copy (source stride 0 reads the clean batch again for each group), then the senders.
                    backend.CopyRows(cleanZ, 0, 0, act, 0, cleanZ.Length, k, cleanZ.Length);
                    for (int r = 0; r < k; r++)
                    {
                        foreach (var s in senderSets[start + r])
                            if (s.Layer == layer && s.Head is int h) ActivationSlice.Copy(backend, corruptZ, 0, act, r * B, B, 2, h, null, -1);
                    }
                    return act;
                });
                if (!cfg.HasMlp) continue;
                step2.AddHook(HookNames.MlpOut(l), (act, _) =>
                {
                    for (int r = 0; r < k; r++)
                    {
                        bool sender = senderSets[start + r].Any(s => s.Layer == layer && s.Head is null);
                        if (sender) ActivationSlice.Copy(backend, runCorrupt.Cache[HookNames.MlpOut(layer)], 0, act, r * B, B, null, -1, null, -1);
                        else if (options.FreezeMlps) ActivationSlice.Copy(backend, runClean.Cache[HookNames.MlpOut(layer)], 0, act, r * B, B, null, -1, null, -1);
                    }
                    return act;
                });
            }
            var second = readout.Run(tokens, step2);
            passes++;
            var logits = second.Logits;
            if (!final)
            {
                // Step 3: only the receivers' inputs come from step 2.
                var step3 = new RunOptions { LastPositionLogitsOnly = options.LastPositionLogitsOnly };
                foreach (var group in receivers.GroupBy(ReceiverHook))
                {
                    var patched = second.Cache[group.Key];
                    var heads = group.Select(r => ReceiverHeadIndex(model, r)).Distinct().ToArray();
                    step3.AddHook(group.Key, (act, _) =>
                    {
                        foreach (int h in heads) ActivationSlice.Copy(backend, patched, 0, act, 0, act.Dim(0), 2, h, null, -1);
                        return act;
                    });
                }
                logits = readout.Run(tokens, step3).Logits;
                passes++;
            }
            for (int r = 0; r < k; r++) values[start + r] = readout.Value(metric, ActivationSlice.Rows(logits, r * B, B));
        }
        var read = readout.Read();
        return new PathPatchingResult
        {
            Metric = metric.Name,
            SenderSets = senderSets.ToArray(),
            Receivers = receivers.ToArray(),
            Values = values.Select(i => read[i]).ToArray(),
            CleanValue = read[mClean],
            CorruptValue = read[mCorrupt],
            FreezeMlps = options.FreezeMlps,
            ForwardPasses = passes,
            Seconds = clock.Elapsed.TotalSeconds,
        };
    }

    /// <summary>Path-patches every attention head (and, with <paramref name="includeMlps"/>, every MLP) on its own as the sender.</summary>
    public static PathPatchingResult SweepSenders(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric,
        IReadOnlyList<PathReceiver> receivers, bool includeMlps = false, PathPatchOptions? options = null)
    {
        var senders = new List<IReadOnlyList<PathSender>>();
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            for (int h = 0; h < model.Config.NHeads; h++) senders.Add([PathSender.AttnHead(l, h)]);
            if (includeMlps && model.Config.HasMlp) senders.Add([PathSender.Mlp(l)]);
        }
        return Run(model, clean, corrupt, metric, senders, receivers, options);
    }

    static string ReceiverHook(PathReceiver r) => r.Input switch
    {
        HeadInput.Q => HookNames.Q(r.Layer),
        HeadInput.K => HookNames.K(r.Layer),
        _ => HookNames.V(r.Layer),
    };

    /// <summary>The head index on the receiver hook's head axis: the query head, or the kv head it reads (h / (n_heads / n_kv_heads)).</summary>
    static int ReceiverHeadIndex(HookedTransformer model, PathReceiver r) =>
        r.Input == HeadInput.Q ? r.Head : r.Head / (model.Config.NHeads / model.Config.KvHeads);

    static void Check(HookedTransformer model, IReadOnlyList<IReadOnlyList<PathSender>> senderSets, IReadOnlyList<PathReceiver> receivers)
    {
        var cfg = model.Config;
        if (receivers.Count == 0) throw new InputError("path patching needs at least one receiver");
        if (receivers.Any(r => r.IsFinalResidual) && receivers.Count > 1)
            throw new InputError("the final residual stream is a receiver on its own; do not mix it with head receivers");
        foreach (var r in receivers.Where(r => !r.IsFinalResidual))
        {
            if ((uint)r.Layer >= (uint)cfg.NLayers) throw new InputError($"receiver {r}: layer {r.Layer} is outside 0..{cfg.NLayers - 1}");
            if ((uint)r.Head >= (uint)cfg.NHeads) throw new InputError($"receiver {r}: head {r.Head} is outside 0..{cfg.NHeads - 1}");
        }
        if (senderSets.Count == 0) throw new InputError("path patching needs at least one sender set");
        foreach (var set in senderSets)
        {
            if (set.Count == 0) throw new InputError("a sender set is empty");
            foreach (var s in set)
            {
                if ((uint)s.Layer >= (uint)cfg.NLayers) throw new InputError($"sender {s}: layer {s.Layer} is outside 0..{cfg.NLayers - 1}");
                if (s.Head is int h && (uint)h >= (uint)cfg.NHeads) throw new InputError($"sender {s}: head {h} is outside 0..{cfg.NHeads - 1}");
                if (s.Head is null && !cfg.HasMlp) throw new InputError($"sender {s}: this model has no MLPs");
            }
        }
    }
}

using System.Diagnostics;
using Loupe.Causal.Metrics;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;

namespace Loupe.Causal.Patching;

// Activation patching, batched.
// 1. Check the inputs: clean and corrupt have the same [batch, pos]; the target's hooks exist.
// 2. Run clean and corrupt once each, caching only the target's hook points; evaluate the metric
//    on both (m_clean, m_corrupt).
// 3. List the cells (layer, then head, then position) and the activation each copies from: the
//    clean cache when denoising (patch clean into the corrupt run), the corrupt cache when noising.
// 4. Evaluate k cells per forward pass: the base tokens are repeated k times along the batch axis,
//    and one hook per hook point copies cell r's slice into row group r (rows r·B … r·B+B−1).
//    k = max(1, MaxRows / B), so a pass has at most MaxRows rows (or B when B > MaxRows).
// 5. The metric is evaluated per row group on its own [B, pos, d_vocab] slice (a view) of the logits,
//    where the logits live: on a device each value (and each pass's finiteness flag) stays there until the
//    sweep reads them all back as one table (SweepReadout); normalize as (m − m_corrupt) / (m_clean − m_corrupt).
// Shapes: clean, corrupt [B, pos]; one pass runs [k·B, pos] and gives logits [k·B, pos, d_vocab_out]
// (pos = 1 with LastPositionLogitsOnly); a cached source activation is [B, …] as its hook has it,
// e.g. hook_z [B, pos, head_index, d_head], and row group r is rows [r·B, r·B + B) of the pass.

/// <summary>How a patching or ablation sweep runs.</summary>
public sealed record PatchOptions
{
    /// <summary>Rows per batched forward pass (cells per pass = MaxRows / batch, at least 1).</summary>
    public int MaxRows { get; init; } = 64;
    /// <summary>Patch corrupt activations into the clean run instead of clean into corrupt.</summary>
    public bool Noising { get; init; }
    /// <summary>Compute logits at the last position only (when the metric reads only position −1): far less memory for large vocabularies.</summary>
    public bool LastPositionLogitsOnly { get; init; }
    /// <summary>Called after each forward pass with (cells done, cells in all).</summary>
    public Action<int, int>? Progress { get; init; }
    /// <summary>Checked before every forward pass: a cancelled sweep throws <see cref="OperationCanceledException"/> between passes.</summary>
    public CancellationToken Cancel { get; init; }
}

/// <summary>
/// One patch for <see cref="ActivationPatching.Run"/>: at hook <paramref name="Hook"/>, copy
/// <paramref name="Source"/> (same shape as the activation) into it — only the slice where the
/// head axis equals <paramref name="Head"/> and the position axis equals <paramref name="Position"/>
/// when those are given (≥ 0). A source on the host is copied to the model's device once per run (counted);
/// one from a cache or an <see cref="Ablation"/> is already there.
/// </summary>
public sealed record Patch(string Hook, Tensor Source, int? HeadAxis = null, int Head = -1, int? PositionAxis = null, int Position = -1);

/// <summary>
/// Activation patching (Meng et al. 2022; Wang et al. 2022; Heimersheim &amp; Nanda 2024): one
/// generic sweep over a <see cref="PatchTarget"/> (hook per layer, index axes) and thin named
/// variants. See the numbered steps at the top of this file.
/// </summary>
public static class ActivationPatching
{
    /// <summary>
    /// Patches every cell of <paramref name="target"/> from the clean run into the corrupt one
    /// (or the reverse with <see cref="PatchOptions.Noising"/>) and evaluates <paramref name="metric"/>.
    /// </summary>
    /// <exception cref="InputError">Clean and corrupt differ in shape; the target's hook is not in this model; an axis is outside the activation.</exception>
    /// <exception cref="InputError">A layer, head or position is out of range (the message names it).</exception>
    public static PatchingResult Sweep(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric, PatchTarget target, PatchOptions? options = null)
    {
        options ??= new PatchOptions();
        var clock = Stopwatch.StartNew();
        CheckPair(clean, corrupt);
        var layers = target.ResolveLayers(model);
        target = target.ResolveAxes(model, layers[0]);
        var hooks = new HashSet<string>(layers.Select(target.HookName), StringComparer.Ordinal);
        var readout = new SweepReadout(model);
        var cleanRun = readout.Run(clean, new RunOptions { CacheFilter = hooks.Contains, LastPositionLogitsOnly = options.LastPositionLogitsOnly });
        var corruptRun = readout.Run(corrupt, new RunOptions { CacheFilter = hooks.Contains, LastPositionLogitsOnly = options.LastPositionLogitsOnly });
        int mClean = readout.Value(metric, cleanRun.Logits), mCorrupt = readout.Value(metric, corruptRun.Logits);
        var (heads, positions, cells) = Cells(target, layers, cleanRun.Cache[target.HookName(layers[0])]);

        var source = options.Noising ? corruptRun.Cache : cleanRun.Cache;
        int passes = 2;
        var slots = PatchEngine.Evaluate(model, readout, options.Noising ? clean : corrupt, metric, target, cells, hook => source[hook], options, ref passes);
        var read = readout.Read();
        return new PatchingResult
        {
            Target = target.Name,
            Metric = metric.Name,
            Layers = layers,
            Heads = heads,
            Positions = positions,
            Cells = cells,
            Values = slots.Select(i => read[i]).ToArray(),
            CleanValue = read[mClean],
            CorruptValue = read[mCorrupt],
            Noising = options.Noising,
            ForwardPasses = passes,
            CellsPerPass = PatchEngine.CellsPerPass(options, clean.Batch),
            Seconds = clock.Elapsed.TotalSeconds,
        };
    }

    /// <summary>Residual stream entering each block, per layer × position (<c>blocks.{l}.hook_resid_pre</c>).</summary>
    public static PatchingResult ResidPre(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric, PatchOptions? options = null) =>
        Sweep(model, clean, corrupt, metric, PatchTarget.ResidPre, options);

    /// <summary>Attention output per layer × position (<c>blocks.{l}.hook_attn_out</c>).</summary>
    public static PatchingResult AttnOut(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric, PatchOptions? options = null) =>
        Sweep(model, clean, corrupt, metric, PatchTarget.AttnOut, options);

    /// <summary>MLP output per layer × position (<c>blocks.{l}.hook_mlp_out</c>).</summary>
    public static PatchingResult MlpOut(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric, PatchOptions? options = null) =>
        Sweep(model, clean, corrupt, metric, PatchTarget.MlpOut, options);

    /// <summary>Each head's output at all positions, per layer × head (<c>hook_z[:, :, h, :]</c>).</summary>
    public static PatchingResult HeadOut(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric, PatchOptions? options = null) =>
        Sweep(model, clean, corrupt, metric, PatchTarget.HeadOut, options);

    /// <summary>Each head's output per layer × head × position (<c>hook_z[:, p, h, :]</c>).</summary>
    public static PatchingResult HeadOutByPosition(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric, PatchOptions? options = null) =>
        Sweep(model, clean, corrupt, metric, PatchTarget.HeadOutByPosition, options);

    /// <summary>Each head's attention pattern, per layer × head (<c>hook_pattern[:, h]</c>).</summary>
    public static PatchingResult HeadPattern(HookedTransformer model, TokenBatch clean, TokenBatch corrupt, IMetric metric, PatchOptions? options = null) =>
        Sweep(model, clean, corrupt, metric, PatchTarget.HeadPattern, options);

    /// <summary>Runs <paramref name="tokens"/> once with every patch applied and returns the metric.</summary>
    /// <exception cref="InputError">A patch names a hook this model lacks.</exception>
    public static double Run(HookedTransformer model, TokenBatch tokens, IMetric metric, params IReadOnlyList<Patch> patches)
    {
        var options = new RunOptions();
        var readout = new SweepReadout(model);
        var known = model.HookPointNames;
        foreach (var patch in patches)
        {
            if (!known.Contains(patch.Hook)) throw new InputError($"patch: '{patch.Hook}' is not a hook point of this model");
            // A source read on the host (or built there) goes to the model's device once, counted; a cached one is already there.
            var source = model.Backend.ToDevice(patch.Source);
            options.AddHook(patch.Hook, (act, _) =>
            {
                ActivationSlice.Copy(model.Backend, source, 0, act, 0, act.Dim(0), patch.HeadAxis, patch.Head, patch.PositionAxis, patch.Position);
                return act;
            });
        }
        int value = readout.Value(metric, readout.Run(tokens, options).Logits);
        return readout.Read()[value];
    }

    /// <exception cref="InputError">The two batches differ in rows or length.</exception>
    internal static void CheckPair(TokenBatch clean, TokenBatch corrupt)
    {
        if (clean.Batch != corrupt.Batch || clean.Length != corrupt.Length)
            throw new InputError($"clean and corrupt inputs must have the same shape to patch between them: clean is [{clean.Batch}, {clean.Length}] tokens, corrupt is [{corrupt.Batch}, {corrupt.Length}]");
    }

    /// <summary>The cells of a target, given one cached activation to size the head and position axes.</summary>
    internal static (int[]? Heads, int[]? Positions, PatchCell[] Cells) Cells(PatchTarget target, int[] layers, Tensor activation)
    {
        int[]? heads = null, positions = null;
        if (target.HeadAxis is int ha)
        {
            CheckAxis(ha, activation, target, "head");
            heads = PatchTarget.ResolveIndices(target.Heads, activation.Dim(ha), "head");
        }
        if (target.PositionAxis is int pa)
        {
            CheckAxis(pa, activation, target, "position");
            positions = PatchTarget.ResolveIndices(target.Positions, activation.Dim(pa), "position");
        }
        var cells = new List<PatchCell>();
        foreach (int l in layers)
            foreach (int h in heads ?? [-1])
                foreach (int p in positions ?? [-1])
                    cells.Add(new PatchCell(l, h, p));
        return (heads, positions, cells.ToArray());
    }

    static void CheckAxis(int axis, Tensor activation, PatchTarget target, string what)
    {
        if (axis < 1 || axis >= activation.Rank)
            throw new InputError($"target '{target.Name}': {what} axis {axis} is outside the activation's axes 1..{activation.Rank - 1} (shape {activation.ShapeString}; axis 0 is the batch)");
    }
}

/// <summary>The batched evaluation shared by patching and ablation sweeps (steps 4–5 above).</summary>
static class PatchEngine
{
    public static int CellsPerPass(PatchOptions options, int batch) => Math.Max(1, options.MaxRows / batch);

    /// <summary>
    /// The metric with each cell patched from <paramref name="source"/>(hook) <c>[B, …]</c> into a run of <paramref name="baseTokens"/>:
    /// per cell, the index of its value in what <paramref name="readout"/> reads back.
    /// </summary>
    public static int[] Evaluate(HookedTransformer model, SweepReadout readout, TokenBatch baseTokens, IMetric metric, PatchTarget target, IReadOnlyList<PatchCell> cells,
        Func<string, Tensor> source, PatchOptions options, ref int passes)
    {
        if (options.MaxRows < 1) throw new InputError($"MaxRows must be at least 1 (got {options.MaxRows})");
        int B = baseTokens.Batch, perPass = CellsPerPass(options, B);
        var values = new int[cells.Count];
        var hookOf = new Dictionary<int, string>();
        foreach (var c in cells) if (!hookOf.ContainsKey(c.Layer)) hookOf[c.Layer] = target.HookName(c.Layer);
        for (int start = 0; start < cells.Count; start += perPass)
        {
            options.Cancel.ThrowIfCancellationRequested();
            int k = Math.Min(perPass, cells.Count - start);
            var run = new RunOptions { LastPositionLogitsOnly = options.LastPositionLogitsOnly };
            foreach (var group in Enumerable.Range(0, k).GroupBy(r => hookOf[cells[start + r].Layer]))
            {
                string hook = group.Key;
                var rows = group.ToArray();
                int first = start;
                run.AddHook(hook, (act, _) =>
                {
                    var src = source(hook);
                    foreach (int r in rows)
                    {
                        var cell = cells[first + r];
                        ActivationSlice.Copy(model.Backend, src, 0, act, r * B, B, target.HeadAxis, cell.Head, target.PositionAxis, cell.Position);
                    }
                    return act;
                });
            }
            var logits = readout.Run(Replicate(baseTokens, k), run).Logits;
            passes++;
            for (int r = 0; r < k; r++) values[start + r] = readout.Value(metric, ActivationSlice.Rows(logits, r * B, B));
            options.Progress?.Invoke(start + k, cells.Count);
        }
        return values;
    }

    /// <summary><paramref name="tokens"/> repeated <paramref name="times"/> along the batch axis.</summary>
    public static TokenBatch Replicate(TokenBatch tokens, int times)
    {
        if (times == 1) return tokens;
        var ids = new int[tokens.Ids.Length * times];
        bool[]? valid = tokens.Valid is null ? null : new bool[ids.Length];
        for (int k = 0; k < times; k++)
        {
            tokens.Ids.CopyTo(ids, k * tokens.Ids.Length);
            tokens.Valid?.CopyTo(valid!, k * tokens.Ids.Length);
        }
        return new TokenBatch(ids, tokens.Batch * times, tokens.Length, valid);
    }
}

using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Layers;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Circuits.Edges;

/// <summary>
/// What the edge methods share: the checks on their inputs, where each source node's output is read, and the
/// clean and corrupted outputs of every source node from two unpatched runs — kept where the model runs
/// (on a device nothing comes back here: the per-example metrics are read with the first table that needs them).
/// </summary>
sealed class EdgeSetup
{
    double[]? _cleanMetric, _corruptedMetric;

    public HookedTransformer Model { get; private init; } = null!;
    public IComputeBackend Backend => Model.Backend;
    public int D { get; private init; }
    public int Rows { get; private init; }
    public int Examples { get; private init; }
    /// <summary><c>rows·d_model</c>: the length of one source's output.</summary>
    public int Width => Rows * D;
    /// <summary>The clean run's outputs of every source, one after another (<c>[sources, rows·d_model]</c>, on the model's device).</summary>
    public Tensor Clean { get; private init; } = null!;
    /// <summary>The corrupted run's outputs of every source, laid out as <see cref="Clean"/>.</summary>
    public Tensor Corrupted { get; private init; } = null!;
    /// <summary><c>Δ = corrupted − clean</c> for every source, laid out as <see cref="Clean"/>.</summary>
    public Tensor Delta { get; private init; } = null!;
    /// <summary>
    /// On a device, the per-example metric of the clean run, then of the corrupted run, then a finiteness flag of every
    /// pass so far (<c>[2·examples + 1]</c>), not yet read; null on the CPU (the host values are exact there).
    /// </summary>
    public Tensor? MetricsOnDevice { get; private init; }

    /// <summary>Per-example metric of the unpatched clean and corrupted runs (on a device: read once, when first asked).</summary>
    public double[] CleanMetric { get { ReadMetrics(); return _cleanMetric!; } }
    public double[] CorruptedMetric { get { ReadMetrics(); return _corruptedMetric!; } }

    /// <summary>The hook a source node's output is read at: hook_embed, hook_result (one head of it) or hook_mlp_out.</summary>
    public static string OutputHook(SourceNode node) => node.Kind switch
    {
        SourceKind.Input => HookNames.Embed,
        SourceKind.Head => HookNames.Result(node.Layer),
        _ => HookNames.MlpOut(node.Layer),
    };

    /// <summary>The hook a destination slot's input is changed at (for an MLP: added at resid_mid, taken back at resid_post).</summary>
    public static string InputHook(DestinationSlot slot) => slot.Kind switch
    {
        SlotKind.Query => HookNames.Q(slot.Layer),
        SlotKind.Key => HookNames.K(slot.Layer),
        SlotKind.Value => HookNames.V(slot.Layer),
        SlotKind.Mlp => HookNames.ResidMid(slot.Layer),
        _ => HookNames.ResidPost(slot.Layer),
    };

    /// <summary>
    /// Copies <paramref name="node"/>'s output (<c>[rows, d_model]</c>) out of its hook's activation, starting at
    /// <paramref name="activationOffset"/>, into <paramref name="into"/> at <paramref name="intoOffset"/>; on the device.
    /// </summary>
    public void ReadOutput(SourceNode node, Tensor activation, long activationOffset, Tensor into, long intoOffset)
    {
        int H = Model.Config.NHeads;
        if (node.Kind == SourceKind.Head) // hook_result is [batch, pos, head_index, d_model]
            Backend.CopyRows(activation, activationOffset + (long)node.Head * D, H * D, into, intoOffset, D, Rows, D);
        else
            Backend.CopyRows(activation, activationOffset, Width, into, intoOffset, Width, 1, Width);
    }

    /// <summary>Writes the sources' outputs <c>corrupted − α·Δ</c> (= <c>α·clean + (1 − α)·corrupted</c>) into <paramref name="into"/> (<c>[rows·d_model]</c>).</summary>
    public void Interpolate(int source, double alpha, Tensor into)
    {
        Backend.CopyRows(Delta, (long)source * Width, Width, into, 0, Width, 1, Width);
        Backend.Scale(into, (float)-alpha, into);
        Backend.CopyRows(Corrupted, (long)source * Width, Width, into, 0, Width, 1, Width, accumulate: true);
    }

    /// <summary>The linear map and first output column of a head's q, k or v projection.</summary>
    public (Linear Linear, int Column) HeadProjection(SlotKind kind, int layer, int head)
    {
        var attn = Model.Anatomy(layer).Attention;
        int E = Model.Config.DHead, width = attn.NHeads * E;
        int s = kind switch { SlotKind.Query => 0, SlotKind.Key => 1, _ => 2 };
        if (attn.Qkv is { } fused)
            return (fused, attn.Layout == FusedQkvLayout.Concatenated ? s * width + head * E : head * 3 * E + s * E);
        return (s switch { 0 => attn.Q!, 1 => attn.K!, _ => attn.V! }, head * E);
    }

    /// <summary>
    /// <c>d LN1-out[rows, d_model] = dProj[:, :, h]·W[h]ᵀ</c> for a head's q/k/v slot, with dProj the gradient at
    /// hook_q/k/v (<c>[rows, heads·d_head]</c>). Forward: <c>q[:, :, h] = LN1(resid_pre)·W_Q[h] + b_Q[h]</c>.
    /// </summary>
    public void ProjectionBackward(DestinationSlot slot, Tensor dProjection, Tensor dNormed)
    {
        var (lin, col) = HeadProjection(slot.Kind, slot.Layer, slot.Head);
        int E = Model.Config.DHead, ld = Model.Config.NHeads * E;
        var w = lin.WeightOn(Backend);
        if (lin.WeightIsOutIn) // W stored [d_out, d_in]: W[h]ᵀ is rows col..col+E
            Backend.Gemm(false, false, Rows, D, E, 1f, dProjection, (long)slot.Head * E, ld, w, (long)col * lin.DIn, lin.DIn, 0f, dNormed, 0, D);
        else
            Backend.Gemm(false, true, Rows, D, E, 1f, dProjection, (long)slot.Head * E, ld, w, col, lin.DOut, 0f, dNormed, 0, D);
    }

    /// <summary>One head's q, k or v, <c>normed·W[h] + b[h]</c> (<c>[rows, d_head]</c>), into <paramref name="head"/>.</summary>
    public void ProjectionForward(DestinationSlot slot, Tensor normed, Tensor head)
    {
        var (lin, col) = HeadProjection(slot.Kind, slot.Layer, slot.Head);
        int E = Model.Config.DHead;
        var w = lin.WeightOn(Backend);
        if (lin.WeightIsOutIn)
            Backend.Gemm(false, true, Rows, E, D, 1f, normed, 0, D, w, (long)col * lin.DIn, lin.DIn, 0f, head, 0, E);
        else
            Backend.Gemm(false, false, Rows, E, D, 1f, normed, 0, D, w, col, lin.DOut, 0f, head, 0, E);
        if (lin.BiasOn(Backend) is { } bias)
        {
            var b = Backend.Empty(E);
            Backend.CopyRows(bias, col, E, b, 0, E, 1, E);
            Backend.AddRowVector(head, Rows, b);
        }
    }

    /// <summary>
    /// Normalizes <paramref name="x"/> (<c>[rows, d_model]</c>) with <paramref name="norm"/> into <paramref name="y"/>, writing
    /// σ per row into <paramref name="scale"/>; <see cref="NormKind.None"/> copies.
    /// </summary>
    public void NormForward(Norm norm, Tensor x, Tensor y, Tensor scale)
    {
        if (norm.Kind == NormKind.None) { Backend.CopyRows(x, 0, Width, y, 0, Width, 1, Width); return; }
        Backend.Norm(norm.Kind == NormKind.LayerNorm, x, Rows, D, norm.WeightOn(Backend), norm.WeightOffset, norm.BiasOn(Backend), norm.Eps, y, scale);
    }

    /// <summary>The norm's real backward (through σ too) at input <paramref name="x"/> with σ <paramref name="scale"/> from <see cref="NormForward"/>.</summary>
    public void NormBackward(Norm norm, Tensor x, Tensor scale, Tensor dy, Tensor dx)
    {
        if (norm.Kind == NormKind.None) { Backend.CopyRows(dy, 0, Width, dx, 0, Width, 1, Width); return; }
        bool center = norm.Kind == NormKind.LayerNorm;
        var w = norm.WeightOn(Backend);
        var dScale = Backend.Empty(Rows);
        Backend.NormBackwardScale(center, x, scale, dy, Rows, D, w, norm.WeightOffset, dScale);
        Backend.NormBackwardInput(center, x, scale, dy, dScale, Rows, D, w, norm.WeightOffset, dx);
    }

    /// <summary>
    /// Per example and copy, the metric of logits holding <paramref name="copies"/> copies of the batch: on the CPU in
    /// double on the host, on a device computed there and read back as one table.
    /// </summary>
    public static double[][] PerExample(IExampleMetric metric, IComputeBackend backend, Tensor logits, int copies)
    {
        int rows = logits.Dim(0) / copies, T = logits.Dim(1), V = logits.Dim(2);
        var result = new double[copies][];
        if (backend.Device.IsCpu)
        {
            var span = logits.ToCpu().Span;
            for (int c = 0; c < copies; c++)
                result[c] = metric.PerExample(Tensor.FromArray(span.Slice(c * rows * T * V, rows * T * V).ToArray(), rows, T, V));
            return result;
        }
        var values = backend.Empty(copies * rows);
        metric.PerExampleInto(logits, backend, copies, values, 0);
        var host = values.ToCpu().Span;
        for (int c = 0; c < copies; c++) result[c] = [.. host.Slice(c * rows, rows).ToArray().Select(v => (double)v)];
        return result;
    }

    readonly List<(TokenBatch Tokens, RunOptions Options)> _deferred = [];

    /// <summary>
    /// Runs options for a pass whose logits' finiteness is checked later (on a device: folded into the flag of
    /// <see cref="MetricsOnDevice"/> by <see cref="FoldFiniteness"/> instead of one scalar read per pass).
    /// </summary>
    public RunOptions Deferred(RunOptions options)
    {
        options.DeferFiniteCheck = MetricsOnDevice is not null;
        return options;
    }

    /// <summary>Adds <c>0·Σ logits</c> (0 when every logit is finite, NaN otherwise) into the flag; remembers the pass to re-run it if the flag is not finite.</summary>
    public void FoldFiniteness(Tensor logits, TokenBatch tokens, RunOptions options)
    {
        if (MetricsOnDevice is not { } table) return;
        int n = logits.Dim(-1), rows = logits.Length / n;
        var partial = Backend.Empty(n);
        Backend.SumMiddleAxis(logits, 1, rows, n, partial);
        Backend.Scale(partial, 0f, partial);
        Backend.SumMiddleAxis(partial, 1, n, 1, new Tensor(table.Storage.Slice(2L * Examples, 1), 1), accumulate: true);
        _deferred.Add((tokens, options));
    }

    /// <summary>
    /// Sets the per-example metrics from values read back with another table (<c>[2·examples + 1]</c>: clean, corrupted,
    /// the finiteness flag) and checks them.
    /// </summary>
    /// <exception cref="InputError">A pass's logits were not finite (the pass is re-run with the model's own check, which names the hook point).</exception>
    public void TakeMetrics(ReadOnlySpan<float> cleanThenCorrupted, IExampleMetric metric)
    {
        if (!float.IsFinite(cleanThenCorrupted[2 * Examples]))
            foreach (var (tokens, options) in _deferred)
            {
                options.DeferFiniteCheck = false;
                Model.Run(tokens, options);
            }
        _cleanMetric = [.. cleanThenCorrupted[..Examples].ToArray().Select(v => (double)v)];
        _corruptedMetric = [.. cleanThenCorrupted.Slice(Examples, Examples).ToArray().Select(v => (double)v)];
        CheckDifference(metric, _cleanMetric, _corruptedMetric);
    }

    IExampleMetric _metric = null!;

    void ReadMetrics()
    {
        if (_cleanMetric is not null) return;
        TakeMetrics(MetricsOnDevice!.ToCpu().Span, _metric);
    }

    /// <exception cref="ArgumentException">The batches differ in shape, or the metric does not depend on the logits, or (on the CPU: here; on a device: when the metrics are read) takes the same value on both batches.</exception>
    /// <exception cref="NotSupportedException">The model has grouped-query attention.</exception>
    public static EdgeSetup Create(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric)
    {
        if (clean.Batch != corrupted.Batch || clean.Length != corrupted.Length)
            throw new ArgumentException($"clean is {clean.Batch}×{clean.Length} tokens but corrupted is {corrupted.Batch}×{corrupted.Length}; they must match", nameof(corrupted));
        if (model.Config.KvHeads != model.Config.NHeads)
            throw new NotSupportedException($"edge attribution needs one kv head per head; {model.Config.Architecture} has {model.Config.KvHeads} kv heads for {model.Config.NHeads} heads");
        if (!metric.DependsOnLogits(clean.Batch, clean.Length, model.Config.VocabOut))
            throw new ArgumentException($"the metric {metric.Name} does not depend on the logits (its gradient is zero everywhere); every edge would score 0", nameof(metric));
        int D = model.Config.DModel, rows = clean.Batch * clean.Length, S = graph.Sources.Count;
        long total = (long)S * rows * D;
        if (total > Array.MaxLength)
            throw new ArgumentException($"{S} source nodes × {rows} positions × d_model {D} = {total:N0} values per run exceeds one array; use fewer or shorter prompts per call");
        var be = model.Backend;
        int width = rows * D;
        var setup = new EdgeSetup
        {
            Model = model,
            D = D,
            Rows = rows,
            Examples = clean.Batch,
            Clean = be.Empty(S, width),
            Corrupted = be.Empty(S, width),
            Delta = be.Empty(S, width),
            MetricsOnDevice = be.Device.IsCpu ? null : be.Zeros(2 * clean.Batch + 1),
            _metric = metric,
        };
        string hooks = string.Join(",", graph.Sources.Select(OutputHook).Distinct());
        var a = model.RunWithCache(clean, hooks, setup.Deferred(new RunOptions()));
        var b = model.RunWithCache(corrupted, hooks, setup.Deferred(new RunOptions()));
        for (int s = 0; s < S; s++)
        {
            var node = graph.Sources[s];
            string hook = OutputHook(node);
            setup.ReadOutput(node, a.Cache[hook], 0, setup.Clean, (long)s * width);
            setup.ReadOutput(node, b.Cache[hook], 0, setup.Corrupted, (long)s * width);
        }
        be.Scale(setup.Clean, -1f, setup.Delta);
        be.Add(setup.Delta, setup.Corrupted, setup.Delta);
        if (setup.MetricsOnDevice is { } onDevice)
        {
            setup.FoldFiniteness(a.Logits, clean, new RunOptions());
            setup.FoldFiniteness(b.Logits, corrupted, new RunOptions());
            metric.PerExampleInto(a.Logits, be, 1, onDevice, 0);
            metric.PerExampleInto(b.Logits, be, 1, onDevice, clean.Batch);
        }
        else
        {
            setup._cleanMetric = metric.PerExample(a.Logits.ToCpu());
            setup._corruptedMetric = metric.PerExample(b.Logits.ToCpu());
            CheckDifference(metric, setup._cleanMetric, setup._corruptedMetric);
        }
        return setup;
    }

    /// <summary>
    /// Refuses a metric that takes exactly the same value on every clean and corrupted example: its scores would all
    /// be zero for a reason that is not the model's.
    /// </summary>
    static void CheckDifference(IExampleMetric metric, double[] clean, double[] corrupted)
    {
        for (int i = 0; i < clean.Length; i++)
            if (clean[i] != corrupted[i]) return;
        throw new ArgumentException($"the metric {metric.Name} takes the same value on every clean and corrupted example " +
            $"(e.g. {clean.FirstOrDefault():G6}); there is no difference to attribute — check that the corrupted inputs differ where the metric looks", nameof(metric));
    }
}

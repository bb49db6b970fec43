using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Circuits.Edges;

/// <summary>
/// What the edge methods share: the checks on their inputs, where each source node's output is read, and the
/// clean and corrupted outputs of every source node from two unpatched runs.
/// </summary>
sealed class EdgeSetup
{
    AttentionWeights _weights = null!;

    public int D { get; private init; }
    public int Rows { get; private init; }
    /// <summary><c>rows·d_model</c>: the length of one source's output.</summary>
    public int Width => Rows * D;
    /// <summary>The clean run's outputs of every source, one after another (<c>[sources, rows·d_model]</c>).</summary>
    public float[] Clean { get; private init; } = [];
    /// <summary>The corrupted run's outputs of every source, laid out as <see cref="Clean"/>.</summary>
    public float[] Corrupted { get; private init; } = [];
    /// <summary>Per-example metric of the unpatched clean and corrupted runs.</summary>
    public double[] CleanMetric { get; private init; } = [];
    public double[] CorruptedMetric { get; private init; } = [];

    public ReadOnlySpan<float> CleanOutput(int source) => Clean.AsSpan(source * Width, Width);
    public ReadOnlySpan<float> CorruptedOutput(int source) => Corrupted.AsSpan(source * Width, Width);

    /// <summary>W_Q[h], W_K[h] or W_V[h] as <c>[d_model, d_head]</c>.</summary>
    public float[] Projection(SlotKind kind, int layer, int head) =>
        (kind switch { SlotKind.Query => _weights.WQ, SlotKind.Key => _weights.WK, _ => _weights.WV })[layer][head];

    public float[] ProjectionBias(SlotKind kind, int layer, int head) =>
        (kind switch { SlotKind.Query => _weights.BQ, SlotKind.Key => _weights.BK, _ => _weights.BV })[layer][head];

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

    /// <summary>Copies <paramref name="node"/>'s output out of its hook's activation (host) into <paramref name="into"/> (<c>[rows·d_model]</c>).</summary>
    public static void ReadOutput(SourceNode node, ReadOnlySpan<float> activation, int rows, int d, int heads, Span<float> into)
    {
        if (node.Kind != SourceKind.Head) { activation[..into.Length].CopyTo(into); return; }
        for (int r = 0; r < rows; r++) // hook_result is [batch, pos, head_index, d_model]
            activation.Slice((r * heads + node.Head) * d, d).CopyTo(into.Slice(r * d, d));
    }

    /// <exception cref="ArgumentException">The batches differ in shape, or the metric does not depend on the logits, or takes the same value on both batches.</exception>
    /// <exception cref="NotSupportedException">The model has grouped-query attention.</exception>
    public static EdgeSetup Create(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric)
    {
        if (clean.Batch != corrupted.Batch || clean.Length != corrupted.Length)
            throw new ArgumentException($"clean is {clean.Batch}×{clean.Length} tokens but corrupted is {corrupted.Batch}×{corrupted.Length}; they must match", nameof(corrupted));
        if (model.Config.KvHeads != model.Config.NHeads)
            throw new NotSupportedException($"edge attribution needs one kv head per head; {model.Config.Architecture} has {model.Config.KvHeads} kv heads for {model.Config.NHeads} heads");
        int D = model.Config.DModel, rows = clean.Batch * clean.Length, H = model.Config.NHeads, S = graph.Sources.Count;
        long total = (long)S * rows * D;
        if (total > Array.MaxLength)
            throw new ArgumentException($"{S} source nodes × {rows} positions × d_model {D} = {total:N0} values per run exceeds one array; use fewer or shorter prompts per call");
        string hooks = string.Join(",", graph.Sources.Select(OutputHook).Distinct());
        var a = model.RunWithCache(clean, hooks);
        var b = model.RunWithCache(corrupted, hooks);
        var cleanMetric = metric.PerExample(a.Logits.ToCpu());
        var corruptedMetric = metric.PerExample(b.Logits.ToCpu());
        CheckMetric(metric, a.Logits.ToCpu(), cleanMetric, corruptedMetric);
        int width = rows * D;
        var cleanOut = new float[S * width];
        var corruptOut = new float[S * width];
        for (int s = 0; s < S; s++)
        {
            var node = graph.Sources[s];
            string hook = OutputHook(node);
            ReadOutput(node, a.Cache[hook].ToCpu().Span, rows, D, H, cleanOut.AsSpan(s * width, width));
            ReadOutput(node, b.Cache[hook].ToCpu().Span, rows, D, H, corruptOut.AsSpan(s * width, width));
        }
        return new EdgeSetup
        {
            _weights = AttentionWeights.FromModel(model),
            D = D,
            Rows = rows,
            Clean = cleanOut,
            Corrupted = corruptOut,
            CleanMetric = cleanMetric,
            CorruptedMetric = corruptedMetric,
        };
    }

    /// <summary>
    /// Refuses a metric whose scores would all be zero for a reason that is not the model's: one that does not
    /// depend on the logits at all, or one that takes exactly the same value on every clean and corrupted example.
    /// </summary>
    static void CheckMetric(IExampleMetric metric, Tensor cleanLogits, double[] clean, double[] corrupted)
    {
        if (metric.Gradient(cleanLogits).ToCpu().Span.IndexOfAnyExcept(0f) < 0)
            throw new ArgumentException($"the metric {metric.Name} does not depend on the logits (its gradient is zero everywhere); every edge would score 0", nameof(metric));
        for (int i = 0; i < clean.Length; i++)
            if (clean[i] != corrupted[i]) return;
        throw new ArgumentException($"the metric {metric.Name} takes the same value on every clean and corrupted example " +
            $"(e.g. {clean.FirstOrDefault():G6}); there is no difference to attribute — check that the corrupted inputs differ where the metric looks", nameof(metric));
    }
}

using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Models.Metrics;
using Loupe.Tensors;
using Loupe.Tensors.Backends;

namespace Loupe.Circuits.Edges;

/// <summary>Scores for every edge of a graph, in <see cref="EdgeGraph.Edges"/> order.</summary>
/// <param name="Graph">The graph scored.</param>
/// <param name="Method">EAP-IG's method name: <c>EAP</c>, <c>EAP-IG-inputs.steps5</c>, <c>EAP-IG-activations.steps5</c>, <c>exact</c>, <c>ACDC</c>.</param>
/// <param name="Scores">One score per edge: the mean over examples of the per-example score.</param>
public sealed record EdgeScores(EdgeGraph Graph, string Method, double[] Scores)
{
    /// <summary>The score of the edge named <paramref name="edge"/>.</summary>
    /// <exception cref="KeyNotFoundException">The graph has no such edge.</exception>
    public double this[string edge] => Graph.IndexOf(edge) is int i and >= 0 ? Scores[i] : throw new KeyNotFoundException($"no edge '{edge}' in the graph");
}

/// <summary>
/// Edge attribution as EAP-IG (hannamw/EAP-IG) computes it, on the graph of <see cref="EdgeGraph"/>.
/// With <c>Δ_P = act_P(corrupted) − act_P(clean)</c> and <c>g_C</c> = d Σ_b m_b / d (input slot of C):
/// 1. Δ_P for every source from two cached runs (hook_embed, hook_result per head, hook_mlp_out);
/// 2. g_C from one backward pass per gradient evaluation: a head's q/k/v slot is
///    <c>LN1ᵀ(x)·(dq[:, :, h]·W_Q[h]ᵀ)</c> (the real norm backward at that run's resid_pre), an MLP slot is
///    d resid_mid − d resid_post (the path through ln2 and the MLP only), the logits slot d resid_post of the last block;
/// 3. every score of a layer's slots at once: <c>[sources, rows·d] · [slots, rows·d]ᵀ</c>, one GEMM per layer and pass;
/// 4. EAP: the gradient at the clean input; EAP-IG-inputs averages it over S runs whose token embedding is
///    <c>emb_corr + (k/S)(emb_clean − emb_corr)</c>, k = 0..S−1; EAP-IG-activations over S runs per node
///    (input, each attention layer, each MLP) whose output is <c>(k/S)·clean + (1 − k/S)·corrupted</c>, k = 1..S,
///    held constant (no gradient flows through it, as in EAP-IG's hook);
/// 5. exact: the clean run with only C's input slot given <c>+Δ_P</c> (<see cref="CircuitEvaluator"/> with one edge removed);
///    score = mean_b (m_b(patched) − m_b(clean)).
/// Rotary models work (hook_q/hook_k are before rotation). Grouped-query attention is not supported: a k/v
/// input slot per query head is not separable when heads share a kv head.
/// </summary>
public static class EdgeAttribution
{
    /// <summary>Edge attribution patching: gradient at the clean input times the activation difference.</summary>
    /// <exception cref="ArgumentException">Clean and corrupted batches differ in shape, or the metric cannot tell them apart.</exception>
    /// <exception cref="NotSupportedException">The model has grouped-query attention.</exception>
    public static EdgeScores Eap(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric)
    {
        var setup = EdgeSetup.Create(model, graph, clean, corrupted, metric);
        var scores = new GradientScores(model, graph, setup, metric);
        scores.Accumulate(clean, new RunOptions());
        return new EdgeScores(graph, "EAP", scores.Mean(clean.Batch));
    }

    /// <summary>EAP-IG with the token embedding interpolated from corrupted to clean (left Riemann sum, <paramref name="steps"/> points).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="steps"/> is below 1.</exception>
    /// <exception cref="ArgumentException">Clean and corrupted batches differ in shape, or the metric cannot tell them apart.</exception>
    /// <exception cref="NotSupportedException">The model has grouped-query attention.</exception>
    public static EdgeScores EapIgInputs(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric, int steps)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        var setup = EdgeSetup.Create(model, graph, clean, corrupted, metric);
        var scores = new GradientScores(model, graph, setup, metric);
        int input = graph.Sources.Select((s, i) => (s, i)).First(x => x.s.Kind == SourceKind.Input).i;
        for (int k = 0; k < steps; k++)
        {
            var options = new RunOptions();
            options.AddHook(HookNames.Embed, Interpolation(model, setup, input, (double)k / steps));
            scores.Accumulate(clean, options);
        }
        return new EdgeScores(graph, $"EAP-IG-inputs.steps{steps}", scores.Mean(clean.Batch));
    }

    /// <summary>
    /// EAP-IG-activations: for each node that writes to the residual stream (the input, each attention layer's heads
    /// together, each MLP) and k = 1..S, a run whose node output is <c>(k/S)·clean + (1 − k/S)·corrupted</c>;
    /// the gradients of all those runs are averaged (EAP-IG's <c>get_scores_ig_activations</c>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="steps"/> is below 1.</exception>
    /// <exception cref="ArgumentException">Clean and corrupted batches differ in shape, or the metric cannot tell them apart.</exception>
    /// <exception cref="NotSupportedException">The model has grouped-query attention.</exception>
    public static EdgeScores EapIgActivations(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric, int steps)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        var setup = EdgeSetup.Create(model, graph, clean, corrupted, metric);
        var scores = new GradientScores(model, graph, setup, metric);
        // Nodes in EAP-IG's list: input, then per layer the attention layer (every head's hook_result at once) and the MLP.
        var nodes = graph.Sources.Select((s, i) => (s, i)).GroupBy(x => EdgeSetup.OutputHook(x.s)).ToList();
        int H = model.Config.NHeads, D = setup.D, rows = setup.Rows;
        foreach (var node in nodes)
        {
            string hook = node.Key;
            var members = node.ToArray();
            for (int k = 1; k <= steps; k++)
            {
                double alpha = (double)k / steps;
                var options = new RunOptions();
                options.AddHook(hook, (act, _) =>
                {
                    var be = model.Backend;
                    var values = be.Empty(act.Shape.ToArray());
                    be.CopyRows(act, 0, act.Length, values, 0, act.Length, 1, act.Length);
                    var interpolated = be.Empty(rows, D);
                    foreach (var (source, index) in members)
                    {
                        setup.Interpolate(index, alpha, interpolated);
                        if (source.Kind == SourceKind.Head)
                            be.CopyRows(interpolated, 0, D, values, (long)source.Head * D, H * D, rows, D);
                        else
                            be.CopyRows(interpolated, 0, D, values, 0, D, rows, D);
                    }
                    return values;
                });
                // The interpolated output is a constant: nothing upstream of it gets gradient through it.
                options.AddGradientHook(hook, (grad, _) => model.Backend.Zeros(grad.Shape.ToArray()));
                scores.Accumulate(clean, options);
            }
        }
        return new EdgeScores(graph, $"EAP-IG-activations.steps{steps}", scores.Mean(clean.Batch));
    }

    /// <summary>
    /// Exact edge patching: for each edge, the clean run with only the destination's input slot given <c>+Δ_source</c>.
    /// Up to <paramref name="edgesPerPass"/> edges share one forward pass, each in its own copy of the batch.
    /// </summary>
    /// <exception cref="ArgumentException">Clean and corrupted batches differ in shape, or the metric cannot tell them apart.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="edgesPerPass"/> is below 1.</exception>
    /// <exception cref="NotSupportedException">Grouped-query attention.</exception>
    public static EdgeScores Exact(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric, int edgesPerPass = 16)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(edgesPerPass, 1);
        var evaluator = new CircuitEvaluator(model, graph, clean, corrupted, metric) { CopiesPerPass = edgesPerPass };
        var means = evaluator.Evaluate([.. Enumerable.Range(0, graph.Edges.Count).Select(e => new[] { e })]);
        return new EdgeScores(graph, "exact", [.. means.Select(m => m - evaluator.Clean)]);
    }

    /// <summary>A hook that replaces a source's output with <c>corrupted + alpha·(clean − corrupted)</c>.</summary>
    static HookFunction Interpolation(HookedTransformer model, EdgeSetup setup, int source, double alpha) => (act, _) =>
    {
        var e = model.Backend.Empty(act.Shape.ToArray());
        setup.Interpolate(source, alpha, e);
        return e;
    };
}

/// <summary>
/// Accumulates <c>Σ_runs Δ_P · g_C</c> for every edge, one layer's slots at a time: the slot gradients of a layer
/// (<c>[slots, rows·d]</c>) meet every source's Δ (<c>[sources, rows·d]</c>) in one GEMM that adds into one
/// <c>[sources, destinations]</c> table on the model's device; the table comes back once, in <see cref="Mean"/>
/// (on a device with the clean and corrupted per-example metrics in the same copy).
/// </summary>
sealed class GradientScores
{
    readonly HookedTransformer _model;
    readonly EdgeGraph _graph;
    readonly EdgeSetup _setup;
    readonly IExampleMetric _metric;
    readonly Tensor _table; // [sources·destinations], then on a device the 2·examples metrics
    int _runs;

    public GradientScores(HookedTransformer model, EdgeGraph graph, EdgeSetup setup, IExampleMetric metric)
    {
        (_model, _graph, _setup, _metric) = (model, graph, setup, metric);
        int cells = graph.Sources.Count * graph.Destinations.Count;
        _table = model.Backend.Zeros(cells + (setup.MetricsOnDevice?.Length ?? 0));
    }

    /// <summary>Mean over runs and examples of every edge's <c>Δ·g</c>: the one read of the table.</summary>
    /// <exception cref="ArgumentException">The metric takes the same value on every clean and corrupted example (known on a device only now).</exception>
    public double[] Mean(int examples)
    {
        var be = _model.Backend;
        int cells = _graph.Sources.Count * _graph.Destinations.Count, destinations = _graph.Destinations.Count;
        if (_setup.MetricsOnDevice is { } metrics) be.CopyRows(metrics, 0, metrics.Length, _table, cells, metrics.Length, 1, metrics.Length);
        var table = new float[_table.Length];
        _table.CopyTo(table);
        if (_setup.MetricsOnDevice is not null) _setup.TakeMetrics(table.AsSpan(cells), _metric);
        return [.. _graph.Edges.Select(e => (double)table[e.Source * destinations + e.Destination] / Math.Max(_runs, 1) / examples)];
    }

    /// <summary>One forward and backward pass on <paramref name="tokens"/> with <paramref name="options"/>' hooks; adds its scores.</summary>
    public void Accumulate(TokenBatch tokens, RunOptions options)
    {
        var model = _model;
        var be = model.Backend;
        int L = model.Config.NLayers, rows = _setup.Rows, n = _setup.Width;
        var gradientHooks = new HashSet<string>(StringComparer.Ordinal) { HookNames.ResidPost(L - 1) };
        var cached = new HashSet<string>(StringComparer.Ordinal);
        for (int l = 0; l < L; l++)
        {
            gradientHooks.UnionWith([HookNames.Q(l), HookNames.K(l), HookNames.V(l)]);
            cached.Add(HookNames.ResidPre(l));
            if (model.Anatomy(l).Mlp is not null) gradientHooks.UnionWith([HookNames.ResidMid(l), HookNames.ResidPost(l)]);
        }
        options.GradientFilter = gradientHooks.Contains;
        options.CacheFilter = cached.Contains;
        var result = model.RunWithGradients(tokens, new GradientOnly(_metric), null, _setup.Deferred(options));
        _setup.FoldFiniteness(result.Logits, tokens, options);
        Tensor Grad(string hook) => result.Gradients[hook];

        int S = _graph.Sources.Count, destinations = _graph.Destinations.Count;
        var dNormed = be.Empty(rows, _setup.D);
        var normed = be.Empty(rows, _setup.D);
        var scale = be.Empty(rows);
        var negative = be.Empty(n);
        // Destinations of a layer are contiguous (q, k, v slots, the MLP; the logits after the last layer's).
        foreach (var layer in _graph.Destinations.Select((d, i) => (d, i)).GroupBy(x => x.d.Layer))
        {
            var slots = layer.ToArray();
            int first = slots[0].i, l = layer.Key;
            var g = be.Empty(slots.Length, n);
            Tensor? residPre = null;
            for (int j = 0; j < slots.Length; j++)
            {
                var (slot, _) = slots[j];
                long at = (long)j * n;
                switch (slot.Kind)
                {
                    case SlotKind.Logits:
                        be.CopyRows(Grad(HookNames.ResidPost(l)), 0, n, g, at, n, 1, n);
                        break;
                    case SlotKind.Mlp: // d resid_mid − d resid_post: the path through ln2 and the MLP only
                        be.Scale(Grad(HookNames.ResidPost(l)), -1f, negative);
                        be.CopyRows(Grad(HookNames.ResidMid(l)), 0, n, g, at, n, 1, n);
                        be.CopyRows(negative, 0, n, g, at, n, 1, n, accumulate: true);
                        break;
                    default:
                        // Forward: q[:, :, h] = LN1(resid_pre)·W_Q[h] + b_Q[h] ⇒ d LN1-out = dq_h·W_Q[h]ᵀ, then the norm's real backward.
                        var ln1 = model.Anatomy(l).Ln1;
                        if (residPre is null)
                        {
                            residPre = result.Activations[HookNames.ResidPre(l)];
                            _setup.NormForward(ln1, residPre, normed, scale);
                        }
                        _setup.ProjectionBackward(slot, Grad(EdgeSetup.InputHook(slot)), dNormed);
                        _setup.NormBackward(ln1, residPre, scale, dNormed, normed);
                        be.CopyRows(normed, 0, n, g, at, n, 1, n);
                        break;
                }
            }
            // [sources, n]·[slots, n]ᵀ added into the table's columns of this layer's slots (non-edges are never read).
            be.Gemm(false, true, S, slots.Length, n, 1f, _setup.Delta, 0, n, g, 0, n, 1f, _table, first, destinations);
        }
        _runs++;
    }

    /// <summary>
    /// The metric as a backward pass's seed only: on a device its value is not computed (the scores need the gradient
    /// alone, and reading a value back per pass would be a copy per run).
    /// </summary>
    sealed class GradientOnly(IExampleMetric metric) : IDeviceMetric
    {
        public string Name => metric.Name;
        public double Value(Tensor logits) => metric.Value(logits);
        public Tensor Gradient(Tensor logits) => metric.Gradient(logits);
        public int[]? PositionsRead(int length) => metric.PositionsRead(length);
        public (double Value, Tensor Gradient) Evaluate(Tensor logits, IComputeBackend backend) => (0, metric.GradientOn(logits, backend));
    }
}

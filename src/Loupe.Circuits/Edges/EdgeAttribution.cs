using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;
using Loupe.Tensors.Kernels;

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
        var scores = new GradientScores(model, graph, setup);
        scores.Accumulate(clean, metric, new RunOptions());
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
        var scores = new GradientScores(model, graph, setup);
        int input = graph.Sources.Select((s, i) => (s, i)).First(x => x.s.Kind == SourceKind.Input).i;
        for (int k = 0; k < steps; k++)
        {
            var options = new RunOptions();
            options.AddHook(HookNames.Embed, Interpolation(model, setup, input, (double)k / steps));
            scores.Accumulate(clean, metric, options);
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
        var scores = new GradientScores(model, graph, setup);
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
                    var values = act.ToCpu().Span.ToArray();
                    foreach (var (source, index) in members)
                    {
                        var c = setup.CleanOutput(index);
                        var x = setup.CorruptedOutput(index);
                        for (int r = 0; r < rows; r++)
                        {
                            int at = source.Kind == SourceKind.Head ? (r * H + source.Head) * D : r * D;
                            for (int d = 0; d < D; d++)
                                values[at + d] = (float)(alpha * c[r * D + d] + (1 - alpha) * x[r * D + d]);
                        }
                    }
                    return model.Backend.ToDevice(Tensor.FromArray(values, act.Shape.ToArray()));
                });
                // The interpolated output is a constant: nothing upstream of it gets gradient through it.
                options.AddGradientHook(hook, (grad, _) => model.Backend.ToDevice(Tensor.Zeros(grad.Shape.ToArray())));
                scores.Accumulate(clean, metric, options);
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
        var c = setup.CleanOutput(source);
        var x = setup.CorruptedOutput(source);
        var e = new float[c.Length];
        for (int i = 0; i < e.Length; i++) e[i] = x[i] + (float)alpha * (c[i] - x[i]);
        return model.Backend.ToDevice(Tensor.FromArray(e, act.Shape.ToArray()));
    };
}

/// <summary>
/// Accumulates <c>Σ_runs Δ_P · g_C</c> for every edge, one layer's slots at a time: the slot gradients of a layer
/// (<c>[slots, rows·d]</c>) meet every source's Δ (<c>[sources, rows·d]</c>) in one GEMM.
/// </summary>
sealed class GradientScores
{
    readonly HookedTransformer _model;
    readonly EdgeGraph _graph;
    readonly EdgeSetup _setup;
    readonly float[] _delta;
    readonly double[,] _sum; // [source, destination]
    int _runs;

    public GradientScores(HookedTransformer model, EdgeGraph graph, EdgeSetup setup)
    {
        (_model, _graph, _setup) = (model, graph, setup);
        _delta = new float[setup.Clean.Length];
        for (int i = 0; i < _delta.Length; i++) _delta[i] = setup.Corrupted[i] - setup.Clean[i];
        _sum = new double[graph.Sources.Count, graph.Destinations.Count];
    }

    /// <summary>Mean over runs and examples of every edge's <c>Δ·g</c>.</summary>
    public double[] Mean(int examples) =>
        [.. _graph.Edges.Select(e => _sum[e.Source, e.Destination] / Math.Max(_runs, 1) / examples)];

    /// <summary>One forward and backward pass on <paramref name="tokens"/> with <paramref name="options"/>' hooks; adds its scores.</summary>
    public void Accumulate(TokenBatch tokens, IExampleMetric metric, RunOptions options)
    {
        var model = _model;
        int L = model.Config.NLayers, D = _setup.D, rows = _setup.Rows, E = model.Config.DHead, H = model.Config.NHeads, n = _setup.Width;
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
        var result = model.RunWithGradients(tokens, metric, null, options);
        float[] Grad(string hook) => result.Gradients[hook].ToCpu().Span.ToArray();

        int S = _graph.Sources.Count;
        var dy = new float[n];
        foreach (var layer in _graph.Destinations.Select((d, i) => (d, i)).GroupBy(x => x.d.Layer))
        {
            var slots = layer.ToArray();
            var g = new float[slots.Length * n];
            for (int j = 0; j < slots.Length; j++)
            {
                var (slot, _) = slots[j];
                var into = g.AsSpan(j * n, n);
                int l = slot.Layer;
                switch (slot.Kind)
                {
                    case SlotKind.Logits:
                        Grad(HookNames.ResidPost(l)).CopyTo(into);
                        break;
                    case SlotKind.Mlp:
                        var mid = Grad(HookNames.ResidMid(l));
                        var post = Grad(HookNames.ResidPost(l));
                        for (int i = 0; i < n; i++) into[i] = mid[i] - post[i];
                        break;
                    default:
                        // Forward: q[:, :, h] = LN1(resid_pre)·W_Q[h] + b_Q[h] ⇒ d LN1-out = dq_h·W_Q[h]ᵀ, then the norm's backward.
                        var dProj = result.Gradients[EdgeSetup.InputHook(slot)].ToCpu().Span;
                        var w = _setup.Projection(slot.Kind, l, slot.Head); // [d_model, d_head]
                        Gemm.Sgemm(false, true, rows, D, E, 1f, dProj[(slot.Head * E)..], H * E, w, E, 0f, dy, D);
                        HostNorm.Backward(model.Anatomy(l).Ln1, result.Activations[HookNames.ResidPre(l)].ToCpu().Span, dy, D, into);
                        break;
                }
            }
            // [sources, n]·[slots, n]ᵀ: every source against every slot of this layer (non-edges are never read).
            var product = new float[S * slots.Length];
            Gemm.Sgemm(false, true, S, slots.Length, n, 1f, _delta, n, g, n, 0f, product, slots.Length);
            for (int s = 0; s < S; s++)
                for (int j = 0; j < slots.Length; j++)
                    _sum[s, slots[j].i] += product[s * slots.Length + j];
        }
        _runs++;
    }
}

using Loupe.Circuits.Weights;
using Loupe.Models;
using Loupe.Models.Hooks;
using Loupe.Tensors;

namespace Loupe.Circuits.Edges;

/// <summary>Scores for every edge of a graph, in <see cref="EdgeGraph.Edges"/> order.</summary>
/// <param name="Graph">The graph scored.</param>
/// <param name="Method">EAP-IG's method name: <c>EAP</c>, <c>EAP-IG-inputs.steps5</c>, <c>exact</c>.</param>
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
/// 3. EAP: <c>score = (1/N) Σ_{b,t} Δ_P·g_C</c> at the clean input; EAP-IG-inputs averages g_C over S runs whose
///    token embedding is <c>emb_corr + (k/S)(emb_clean − emb_corr)</c>, k = 0..S−1;
/// 4. exact: the clean run with only C's input slot given <c>+Δ_P</c> (a head's q/k/v recomputed from
///    <c>LN1(resid_pre + Δ_P)</c> at hook_q/k/v, an MLP's input at ln2.hook_normalized, the logits' at the last resid_post);
///    score = mean_b (m_b(patched) − m_b(clean)). Several edges share one forward pass along the batch axis.
/// Rotary models work (hook_q/hook_k are before rotation). Grouped-query attention is not supported: a k/v
/// input slot per query head is not separable when heads share a kv head.
/// </summary>
public static class EdgeAttribution
{
    /// <summary>Edge attribution patching: gradient at the clean input times the activation difference.</summary>
    /// <exception cref="ArgumentException">Clean and corrupted batches differ in shape.</exception>
    /// <exception cref="NotSupportedException">The model has grouped-query attention.</exception>
    public static EdgeScores Eap(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric) =>
        Gradients(model, graph, clean, corrupted, metric, steps: 0);

    /// <summary>EAP-IG with the token embedding interpolated from corrupted to clean (left Riemann sum, <paramref name="steps"/> points).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="steps"/> is below 1.</exception>
    /// <exception cref="ArgumentException">Clean and corrupted batches differ in shape.</exception>
    /// <exception cref="NotSupportedException">The model has grouped-query attention.</exception>
    public static EdgeScores EapIgInputs(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric, int steps)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        return Gradients(model, graph, clean, corrupted, metric, steps);
    }

    static EdgeScores Gradients(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric, int steps)
    {
        var setup = Setup.Create(model, graph, clean, corrupted);
        int B = clean.Batch, n = setup.Rows * setup.D;
        var g = graph.Destinations.Select(_ => new double[n]).ToArray();
        int runs = Math.Max(steps, 1);
        for (int k = 0; k < runs; k++)
        {
            var options = new RunOptions();
            if (steps > 0)
            {
                float alpha = (float)k / steps;
                var (embClean, embCorr) = (setup.EmbedClean, setup.EmbedCorrupted);
                options.AddHook(HookNames.Embed, (act, _) =>
                {
                    var e = new float[n];
                    for (int i = 0; i < n; i++) e[i] = embCorr[i] + alpha * (embClean[i] - embCorr[i]);
                    return model.Backend.ToDevice(Tensor.FromArray(e, act.Shape.ToArray()));
                });
            }
            var run = SlotGradients(model, graph, setup, clean, metric, options);
            for (int s = 0; s < g.Length; s++)
                for (int i = 0; i < n; i++) g[s][i] += run[s][i];
        }
        var scores = new double[graph.Edges.Count];
        for (int e = 0; e < scores.Length; e++)
        {
            var (delta, grad) = (setup.Deltas[graph.Edges[e].Source], g[graph.Edges[e].Destination]);
            double sum = 0;
            for (int i = 0; i < n; i++) sum += delta[i] * grad[i];
            scores[e] = sum / runs / B;
        }
        return new EdgeScores(graph, steps == 0 ? "EAP" : $"EAP-IG-inputs.steps{steps}", scores);
    }

    /// <summary>g_C for every destination slot from one forward and backward pass (<c>[rows·d_model]</c> each).</summary>
    static float[][] SlotGradients(HookedTransformer model, EdgeGraph graph, Setup setup, TokenBatch tokens, IExampleMetric metric, RunOptions options)
    {
        int L = model.Config.NLayers, D = setup.D, rows = setup.Rows, E = model.Config.DHead, H = model.Config.NHeads;
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

        var slots = new float[graph.Destinations.Count][];
        var dy = new float[rows * D];
        for (int s = 0; s < slots.Length; s++)
        {
            var slot = graph.Destinations[s];
            int l = slot.Layer;
            switch (slot.Kind)
            {
                case SlotKind.Logits:
                    slots[s] = Grad(HookNames.ResidPost(l));
                    break;
                case SlotKind.Mlp:
                    var mid = Grad(HookNames.ResidMid(l));
                    var post = Grad(HookNames.ResidPost(l));
                    for (int i = 0; i < mid.Length; i++) mid[i] -= post[i];
                    slots[s] = mid;
                    break;
                default:
                    // Forward: q[:, :, h] = LN1(resid_pre)·W_Q[h] + b_Q[h] ⇒ d LN1-out = dq_h·W_Q[h]ᵀ, then the norm's backward.
                    var dProj = result.Gradients[slot.Kind switch { SlotKind.Query => HookNames.Q(l), SlotKind.Key => HookNames.K(l), _ => HookNames.V(l) }].ToCpu().Span;
                    var w = setup.Projection(slot.Kind, l, slot.Head); // [d_model, d_head]
                    for (int r = 0; r < rows; r++)
                    {
                        var dh = dProj.Slice((r * H + slot.Head) * E, E);
                        for (int d = 0; d < D; d++)
                        {
                            float sum = 0;
                            for (int i = 0; i < E; i++) sum += dh[i] * w[d * E + i];
                            dy[r * D + d] = sum;
                        }
                    }
                    var x = result.Activations[HookNames.ResidPre(l)].ToCpu().Span;
                    slots[s] = new float[rows * D];
                    HostNorm.Backward(model.Anatomy(l).Ln1, x, dy, D, slots[s]);
                    break;
            }
        }
        return slots;
    }

    /// <summary>
    /// Exact edge patching: for each edge, the clean run with only the destination's input slot given <c>+Δ_source</c>.
    /// Up to <paramref name="edgesPerPass"/> edges share one forward pass, each in its own copy of the batch.
    /// </summary>
    /// <exception cref="ArgumentException">Clean and corrupted batches differ in shape.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="edgesPerPass"/> is below 1.</exception>
    /// <exception cref="NotSupportedException">Grouped-query attention, or an MLP whose input has no norm (no hook point to patch).</exception>
    public static EdgeScores Exact(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted, IExampleMetric metric, int edgesPerPass = 16)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(edgesPerPass, 1);
        var setup = Setup.Create(model, graph, clean, corrupted);
        int B = clean.Batch, T = clean.Length, D = setup.D, rows = setup.Rows, E = model.Config.DHead, H = model.Config.NHeads, L = model.Config.NLayers;
        var cleanRun = model.RunWithCache(clean, string.Join(",", Enumerable.Range(0, L).SelectMany(l => model.Anatomy(l).Mlp is null
            ? [HookNames.ResidPre(l)] : new[] { HookNames.ResidPre(l), HookNames.ResidMid(l) })));
        var baseline = metric.PerExample(cleanRun.Logits.ToCpu());
        var residPre = Enumerable.Range(0, L).Select(l => cleanRun.Cache[HookNames.ResidPre(l)].ToCpu().Span.ToArray()).ToArray();
        var residMid = Enumerable.Range(0, L).Select(l => model.Anatomy(l).Mlp is null ? null : cleanRun.Cache[HookNames.ResidMid(l)].ToCpu().Span.ToArray()).ToArray();
        foreach (var slot in graph.Destinations.Where(s => s.Kind == SlotKind.Mlp))
            if (model.Anatomy(slot.Layer).Ln2 is not { Kind: not NormKind.None })
                throw new NotSupportedException($"exact patching of m{slot.Layer}'s input needs ln2's hook_normalized; block {slot.Layer} has no norm before its MLP");

        var scores = new double[graph.Edges.Count];
        for (int start = 0; start < scores.Length; start += edgesPerPass)
        {
            int count = Math.Min(edgesPerPass, scores.Length - start);
            var ids = new int[count * B * T];
            for (int c = 0; c < count; c++) clean.Ids.CopyTo(ids, c * B * T);
            var options = new RunOptions();
            // Hook point → the copies (c) whose edge enters there.
            var byHook = new Dictionary<string, List<int>>(StringComparer.Ordinal);
            for (int c = 0; c < count; c++)
            {
                var slot = graph.Destinations[graph.Edges[start + c].Destination];
                string hook = slot.Kind switch
                {
                    SlotKind.Query => HookNames.Q(slot.Layer),
                    SlotKind.Key => HookNames.K(slot.Layer),
                    SlotKind.Value => HookNames.V(slot.Layer),
                    SlotKind.Mlp => model.Anatomy(slot.Layer).Ln2!.NormalizedHook,
                    _ => HookNames.ResidPost(slot.Layer),
                };
                if (!byHook.TryGetValue(hook, out var list)) byHook[hook] = list = [];
                list.Add(c);
            }
            foreach (var (hook, copies) in byHook)
                options.AddHook(hook, (act, _) =>
                {
                    var host = act.IsHost ? act : act.ToCpu();
                    var span = host.Span;
                    var patched = new float[rows * D];
                    foreach (int c in copies)
                    {
                        var edge = graph.Edges[start + c];
                        var slot = graph.Destinations[edge.Destination];
                        var delta = setup.Deltas[edge.Source];
                        int l = slot.Layer;
                        if (slot.Kind == SlotKind.Logits)
                        {
                            var own = span.Slice(c * rows * D, rows * D);
                            for (int i = 0; i < own.Length; i++) own[i] += delta[i];
                            continue;
                        }
                        bool mlp = slot.Kind == SlotKind.Mlp;
                        var x = mlp ? residMid[l]! : residPre[l];
                        for (int i = 0; i < patched.Length; i++) patched[i] = x[i] + delta[i];
                        var anatomy = model.Anatomy(l);
                        var normed = new float[rows * D];
                        HostNorm.Forward(mlp ? anatomy.Ln2! : anatomy.Ln1, patched, D, normed);
                        if (mlp)
                        {
                            normed.CopyTo(span.Slice(c * rows * D, rows * D));
                            continue;
                        }
                        // Forward: q[:, :, h] = LN1(resid_pre + Δ)·W_Q[h] + b_Q[h], for this head only.
                        var w = setup.Projection(slot.Kind, l, slot.Head);
                        var bias = setup.ProjectionBias(slot.Kind, l, slot.Head);
                        for (int r = 0; r < rows; r++)
                        {
                            var target = span.Slice(((c * rows + r) * H + slot.Head) * E, E);
                            for (int i = 0; i < E; i++)
                            {
                                double sum = bias[i];
                                for (int d = 0; d < D; d++) sum += normed[r * D + d] * w[d * E + i];
                                target[i] = (float)sum;
                            }
                        }
                    }
                    return act.IsHost ? null : model.Backend.ToDevice(host);
                });
            var logits = model.Run(new TokenBatch(ids, count * B, T), options).Logits.ToCpu();
            int V = logits.Dim(2);
            for (int c = 0; c < count; c++)
            {
                var own = Tensor.FromArray(logits.Span.Slice(c * B * T * V, B * T * V).ToArray(), B, T, V);
                var m = metric.PerExample(own);
                double sum = 0;
                for (int b = 0; b < B; b++) sum += m[b] - baseline[b];
                scores[start + c] = sum / B;
            }
        }
        return new EdgeScores(graph, "exact", scores);
    }

    /// <summary>What every method needs: Δ of each source, the clean and corrupted token embeddings, the heads' projections.</summary>
    sealed class Setup
    {
        AttentionWeights _weights = null!;
        public int D { get; private init; }
        public int Rows { get; private init; }
        /// <summary>Δ_P per source, <c>[batch·pos·d_model]</c>.</summary>
        public float[][] Deltas { get; private init; } = [];
        public float[] EmbedClean { get; private init; } = [];
        public float[] EmbedCorrupted { get; private init; } = [];

        /// <summary>W_Q[h], W_K[h] or W_V[h] as <c>[d_model, d_head]</c>.</summary>
        public float[] Projection(SlotKind kind, int layer, int head) =>
            (kind switch { SlotKind.Query => _weights.WQ, SlotKind.Key => _weights.WK, _ => _weights.WV })[layer][head];

        public float[] ProjectionBias(SlotKind kind, int layer, int head) =>
            (kind switch { SlotKind.Query => _weights.BQ, SlotKind.Key => _weights.BK, _ => _weights.BV })[layer][head];

        public static Setup Create(HookedTransformer model, EdgeGraph graph, TokenBatch clean, TokenBatch corrupted)
        {
            if (clean.Batch != corrupted.Batch || clean.Length != corrupted.Length)
                throw new ArgumentException($"clean is {clean.Batch}×{clean.Length} tokens but corrupted is {corrupted.Batch}×{corrupted.Length}; they must match", nameof(corrupted));
            if (model.Config.KvHeads != model.Config.NHeads)
                throw new NotSupportedException($"edge attribution needs one kv head per head; {model.Config.Architecture} has {model.Config.KvHeads} kv heads for {model.Config.NHeads} heads");
            int D = model.Config.DModel, rows = clean.Batch * clean.Length, H = model.Config.NHeads;
            string hooks = string.Join(",", new[] { HookNames.Embed }.Concat(graph.Sources.Where(s => s.Kind != SourceKind.Input)
                .Select(s => s.Kind == SourceKind.Head ? HookNames.Result(s.Layer) : HookNames.MlpOut(s.Layer))).Distinct());
            var a = model.RunWithCache(clean, hooks).Cache;
            var b = model.RunWithCache(corrupted, hooks).Cache;
            var deltas = new float[graph.Sources.Count][];
            for (int s = 0; s < deltas.Length; s++)
            {
                var node = graph.Sources[s];
                string hook = node.Kind switch { SourceKind.Input => HookNames.Embed, SourceKind.Head => HookNames.Result(node.Layer), _ => HookNames.MlpOut(node.Layer) };
                var x = a[hook].ToCpu().Span;
                var y = b[hook].ToCpu().Span;
                var delta = deltas[s] = new float[rows * D];
                if (node.Kind == SourceKind.Head)
                    for (int r = 0; r < rows; r++)
                        for (int d = 0; d < D; d++)
                        {
                            int at = (r * H + node.Head) * D + d; // hook_result [batch, pos, head_index, d_model]
                            delta[r * D + d] = y[at] - x[at];
                        }
                else
                    for (int i = 0; i < delta.Length; i++) delta[i] = y[i] - x[i];
            }
            return new Setup
            {
                _weights = AttentionWeights.FromModel(model),
                D = D,
                Rows = rows,
                Deltas = deltas,
                EmbedClean = a[HookNames.Embed].ToCpu().Span.ToArray(),
                EmbedCorrupted = b[HookNames.Embed].ToCpu().Span.ToArray(),
            };
        }
    }
}

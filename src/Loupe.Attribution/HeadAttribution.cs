using Loupe.Attribution.Engine;
using Loupe.Models;
using Loupe.Models.Layers;

namespace Loupe.Attribution;

/// <summary>One attention head's share of an edge.</summary>
/// <param name="Layer">The head's layer.</param>
/// <param name="Head">The head's index.</param>
/// <param name="Weight">The part of the edge weight carried by paths whose last attention step (nearest the target) is this head.</param>
public readonly record struct HeadShare(int Layer, int Head, float Weight);

/// <summary>
/// An edge split by the attention head that carried it: <c>A[t, s] = Direct + Σ Heads</c>. <see cref="Direct"/>
/// is the residual stream alone (nonzero only when source and target share a position); each head's share
/// is what flows through paths whose last attention step before the target is that head (paths through
/// several heads count for the one nearest the target).
/// </summary>
/// <param name="Target">Target node (graph index).</param>
/// <param name="Source">Source node (graph index).</param>
/// <param name="Total">A[target, source].</param>
/// <param name="Direct">The residual-only part.</param>
/// <param name="Heads">Every head's share, largest magnitude first (zero shares left out).</param>
public sealed record EdgeHeads(int Target, int Source, float Total, float Direct, HeadShare[] Heads);

public sealed partial class Attributor
{
    /// <summary>
    /// Splits each of <paramref name="edges"/> (graph indices, target then source) of <paramref name="graph"/> by the
    /// attention heads that carried it. Cost: per distinct target, one backward row per head below it (plus one
    /// residual-only row), batched like the graph's rows.
    /// </summary>
    /// <exception cref="ArgumentException">The graph was not made from this model and these transcoders (its active features differ), or an edge's target is not a feature or logit.</exception>
    public IReadOnlyList<EdgeHeads> AttributeHeads(AttributionGraph graph, IReadOnlyList<(int Target, int Source)> edges)
    {
        var s = ReplacementState.Capture(_model, _transcoders, graph.InputTokens, _device, ZeroPositions(graph.InputTokens));
        if (!s.Active.SequenceEqual(graph.ActiveFeatures))
            throw new ArgumentException("the graph's active features differ from what these transcoders find on its prompt: it was made with another model or transcoders", nameof(graph));
        var cfg = _model.Config;
        int L = cfg.NLayers, T = s.Positions, D = s.DModel, F = s.Active.Length, width = F + (L + 1) * T;
        var (readouts, tokenReadout) = Readouts(s);
        int N = Math.Max(1, _settings.BatchSize);
        var backward = new LinearBackward(s, N, _settings.CausalBlock);
        if (graph.LogitVectors is { } given && given.Any(v => v.Length != D))
            throw new ArgumentException($"the graph's logit vectors are not d_model = {D} long: it was made with another model", nameof(graph));
        var logitVectors = graph.LogitVectors ?? DemeanedUnembedding(graph.LogitTokens);
        var patterns = new float[L][];

        int Column(int source) => source < graph.ErrorOffset ? graph.SelectedFeatures[source] : F + (source - graph.ErrorOffset);

        var targets = edges.Select(e => e.Target).Distinct().ToArray();
        var specs = new List<RowSpec>();
        var owner = new List<(int Target, int Layer, int Head)>(); // Layer −1: the residual-only row
        var encoder = new float[D];
        foreach (int t in targets)
        {
            var node = graph.Node(t);
            if (node.Kind is not (NodeKind.Feature or NodeKind.Logit))
                throw new ArgumentException($"node {t} is a {node.Kind.ToString().ToLowerInvariant()} node: it has no inputs to split", nameof(edges));
            int layer = node.Kind == NodeKind.Logit ? L : node.Layer;
            float[] direction;
            if (node.Kind == NodeKind.Logit) direction = logitVectors[t - graph.LogitOffset];
            else { _transcoders.EncoderDirection(node.Layer, node.Index, encoder); direction = encoder.ToArray(); }
            var row = TargetRow(backward, s, layer, node.Position, direction);
            specs.Add(row);
            owner.Add((t, -1, -1));
            // The heads below the target: a transcoder feature reads the MLP input, so a sequential block's own attention
            // is below it; with residual SAEs, the attention layers between the target and the next cut down.
            int lastHeadLayer = layer == L ? L - 1 : _model.Anatomy(layer).Parallel ? layer - 1 : layer;
            var headLayers = s.Cuts is { } cuts ? BackwardWalk.AttentionLayersBelow(cuts, layer).ToArray() : Enumerable.Range(0, lastHeadLayer + 1).ToArray();
            foreach (int l in headLayers)
            {
                var a = _model.Anatomy(l);
                patterns[l] ??= s.Patterns[l].ToCpu().Span.ToArray();
                var u = row.Vectors;
                if (a.AttentionPostNorm is { Kind: not NormKind.None } post)
                {
                    var v = new float[D];
                    backward.FrozenNormHost(post, node.Position, u, v);
                    u = v;
                }
                for (int h = 0; h < a.Attention.NHeads; h++)
                {
                    var w = HeadValueBackward(a.Attention, h, u);
                    var positions = new List<int>();
                    var vectors = new List<float>();
                    var moved = new float[D];
                    var normed = new float[D];
                    for (int k = 0; k <= node.Position; k++)
                    {
                        float p = patterns[l][((long)h * T + node.Position) * T + k];
                        if (p == 0) continue;
                        for (int d = 0; d < D; d++) moved[d] = p * w[d];
                        backward.FrozenNormHost(a.Ln1, k, moved, normed);
                        positions.Add(k);
                        vectors.AddRange(normed);
                    }
                    if (positions.Count == 0) continue;
                    specs.Add(new RowSpec(l, true, [.. positions], [.. vectors]));
                    owner.Add((t, l, h));
                }
            }
        }

        // Rows: the residual-only rows in passes without attention, the head rows in ordinary passes.
        var rows = new float[specs.Count][];
        float[]? reuse = null;
        foreach (bool direct in new[] { true, false })
        {
            var which = Enumerable.Range(0, specs.Count).Where(i => (owner[i].Layer < 0) == direct).OrderBy(i => specs[i].Positions.Max()).ToArray();
            for (int start = 0; start < which.Length; start += N)
            {
                var batch = which.Skip(start).Take(N).ToArray();
                var block = reuse = ComputeRows(s, backward, readouts, tokenReadout, [.. batch.Select(i => specs[i])], width, skipAttention: direct, reuse: reuse);
                for (int j = 0; j < batch.Length; j++) rows[batch[j]] = block.AsSpan(j * width, width).ToArray();
            }
        }

        var result = new List<EdgeHeads>(edges.Count);
        foreach (var (t, src) in edges)
        {
            int c = Column(src);
            float direct = 0;
            var shares = new List<HeadShare>();
            for (int i = 0; i < specs.Count; i++)
            {
                if (owner[i].Target != t) continue;
                float v = rows[i][c];
                if (owner[i].Layer < 0) direct = v;
                else if (v != 0) shares.Add(new HeadShare(owner[i].Layer, owner[i].Head, v));
            }
            result.Add(new EdgeHeads(t, src, graph.Edge(t, src), direct, [.. shares.OrderByDescending(h => Math.Abs(h.Weight))]));
        }
        return result;
    }

    /// <summary>
    /// What head <paramref name="h"/>'s value path passes back from a gradient <paramref name="u"/> at its output:
    /// <c>dz = u·W_O[h]ᵀ</c>, <c>dx = dz·W_V[h]ᵀ</c> (before the pattern and the frozen ln1), on the host.
    /// </summary>
    static float[] HeadValueBackward(AttentionLayer attn, int h, float[] u)
    {
        int dh = attn.DHead, H = attn.NHeads, D = u.Length, group = H / attn.NKvHeads, kv = h / group;
        var o = attn.O;
        var wo = o.Weight.Span;
        var dz = new double[dh];
        for (int j = 0; j < dh; j++)
        {
            double sum = 0;
            int r = h * dh + j;
            if (o.WeightIsOutIn) for (int d = 0; d < D; d++) sum += u[d] * wo[d * H * dh + r];
            else for (int d = 0; d < D; d++) sum += u[d] * wo[r * D + d];
            dz[j] = sum;
        }
        var (v, outIn, width, firstColumn) = LinearBackward.ValueWeight(attn);
        var wv = v.Weight.Span;
        long c0 = firstColumn(kv);
        var dx = new float[D];
        for (int d = 0; d < D; d++)
        {
            double sum = 0;
            for (int j = 0; j < dh; j++)
                sum += dz[j] * (outIn ? wv[(int)((c0 + j) * D + d)] : wv[(int)(d * (long)width + c0 + j)]);
            dx[d] = (float)sum;
        }
        return dx;
    }
}

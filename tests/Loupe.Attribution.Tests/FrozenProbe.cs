using Loupe.Dictionaries.Transcoders;
using Loupe.Models;
using Loupe.Models.Hooks;

namespace Loupe.Attribution.Tests;

/// <summary>
/// Reads an attribution graph's targets out of a run of the real model (feature pre-activations at the MLP
/// inputs, demeaned logits after ln_final) and builds each source's vector as an addition, so that edges can be
/// checked by intervening with patterns, scales and MLP outputs frozen.
/// </summary>
static class FrozenProbe
{
    /// <summary>The hooks <see cref="Targets"/> reads.</summary>
    public static Func<string, bool> Cache { get; } = n => n == "ln_final.hook_normalized" || n.EndsWith(".ln2.hook_normalized", StringComparison.Ordinal)
        || n.EndsWith(".mlp.hook_in", StringComparison.Ordinal) || n.EndsWith(".hook_resid_mid", StringComparison.Ordinal)
        || n.EndsWith(".hook_mlp_in", StringComparison.Ordinal);

    /// <summary>Largest |Δ target − A[target, source]| over the feature and logit targets.</summary>
    public static double ColumnError(AttributionGraph g, int source, double[] clean, double[] changed)
    {
        double worst = 0;
        foreach (int t in Enumerable.Range(0, g.ErrorOffset).Concat(Enumerable.Range(g.LogitOffset, g.LogitTokens.Length)))
            worst = Math.Max(worst, Math.Abs(changed[t] - clean[t] - g.Edge(t, source)));
        return worst;
    }

    /// <summary>
    /// Each of <paramref name="sources"/> added in a frozen run of the replacement model: the largest |Δ target − A| over
    /// their columns (<see cref="ColumnError"/>) and the largest |A| in them.
    /// </summary>
    public static (double Worst, double Largest) CheckColumns(HookedTransformer model, IMlpReplacement tc, AttributionGraph graph, int[] prompt, IEnumerable<int> sources)
    {
        var replacement = new ReplacementModel(model, tc);
        var frozen = replacement.Freeze(prompt);
        var directions = LogitDirections(model, graph);
        var clean = Targets(replacement, graph, directions, replacement.Run(prompt, frozen: frozen, cache: Cache));
        double worst = 0, largest = 0;
        foreach (int source in sources)
        {
            var changed = Targets(replacement, graph, directions, replacement.Run(prompt, frozen: frozen, additions: SourceVector(model, tc, graph, source), cache: Cache));
            worst = Math.Max(worst, ColumnError(graph, source, clean, changed));
            for (int t = 0; t < graph.NodeCount; t++) largest = Math.Max(largest, Math.Abs(graph.Edge(t, source)));
        }
        return (worst, largest);
    }

    public static float[][] LogitDirections(HookedTransformer model, AttributionGraph graph)
    {
        int V = model.Config.VocabOut, D = model.Config.DModel;
        var mean = new double[D];
        for (int v = 0; v < V; v++) { var c = model.UnembedDirection(v); for (int d = 0; d < D; d++) mean[d] += c[d] / V; }
        return [.. graph.LogitTokens.Select(j => { var c = model.UnembedDirection(j); for (int d = 0; d < D; d++) c[d] -= (float)mean[d]; return c; })];
    }

    public static double[] Targets(ReplacementModel rm, AttributionGraph g, float[][] directions, InterventionResult r)
    {
        int D = rm.Model.Config.DModel, T = g.Positions;
        var values = new double[g.NodeCount];
        var enc = new float[D];
        for (int i = 0; i < g.SelectedFeatures.Length; i++)
        {
            var (l, p, f) = g.ActiveFeatures[g.SelectedFeatures[i]];
            rm.Transcoders.EncoderDirection(l, f, enc);
            var x = r.Run.Cache[rm.Transcoders.InputHook(l)].ToCpu().Span.Slice(p * D, D);
            for (int d = 0; d < D; d++) values[i] += (double)x[d] * enc[d];
        }
        // The unembedding reads the final norm's output: ln_final.hook_normalized is before an RMSNorm's weight (TransformerLens).
        var final = rm.Model.FinalNormLayer!.OutputFromNormalized(rm.Model.Backend, r.Run.Cache["ln_final.hook_normalized"]);
        var normed = final.ToCpu().Span.Slice((T - 1) * D, D);
        for (int j = 0; j < directions.Length; j++)
            for (int d = 0; d < D; d++) values[g.LogitOffset + j] += (double)normed[d] * directions[j][d];
        return values;
    }

    /// <summary>The source's vector(s), as additions where it writes: every MLP output a cross-layer feature writes.</summary>
    public static AddedVector[] SourceVector(HookedTransformer model, IMlpReplacement tc, AttributionGraph g, int node)
    {
        int D = model.Config.DModel, T = g.Positions;
        var n = g.Node(node);
        switch (n.Kind)
        {
            case NodeKind.Error:
                return [new AddedVector(tc.OutputHook(n.Layer), n.Position, g.ErrorVectors!.AsSpan((n.Layer * T + n.Position) * D, D).ToArray())];
            case NodeKind.Token:
                return [new AddedVector(HookNames.Embed, n.Position, g.TokenVectors!.AsSpan(n.Position * D, D).ToArray())];
            default:
                return [.. Enumerable.Range(n.Layer, tc.LastTarget(n.Layer) - n.Layer + 1).Select(t =>
                {
                    var dec = new float[D];
                    tc.DecoderDirection(n.Layer, n.Index, t, dec);
                    return new AddedVector(tc.OutputHook(t), n.Position, [.. dec.Select(v => v * n.Value)]);
                })];
        }
    }
}

// Influence of each node on the logits, as circuit-tracer's graph.compute_influence defines it.
//
//   Â = |A| with each row divided by its sum (clamped below at 1e-10)   rows = targets, columns = sources
//   influence = w·Â + w·Â² + w·Â³ + …   (w = logit probabilities on the logit nodes, 0 elsewhere)
//
// The graph is acyclic (a source only reaches later layers and the logits), so the series ends:
// w·Âᵏ is exactly 0 once k exceeds the longest path. Â is never built: each step streams the rows
// of A (float) and accumulates in double, so the only n²-sized thing in memory is the adjacency itself.

namespace Loupe.Attribution.Graph;

/// <summary>The row normalisation and influence power series shared by pruning and the graph scores.</summary>
internal static class GraphInfluence
{
    /// <summary>circuit-tracer's clamp on a row's L1 norm (normalize_matrix).</summary>
    public const double RowSumClamp = 1e-10;

    /// <summary>circuit-tracer's compute_influence iteration limit.</summary>
    public const int MaxIterations = 1000;

    /// <summary>Checks the adjacency's length against the node count.</summary>
    /// <exception cref="ArgumentException">The adjacency is not <c>[n, n]</c>.</exception>
    public static int CheckShape(AttributionGraph graph)
    {
        ArgumentNullException.ThrowIfNull(graph);
        int n = graph.NodeCount;
        if (!graph.HasValidAdjacency)
            throw new ArgumentException(
                $"adjacency has {graph.Adjacency?.LongLength ?? graph.TargetRows?.LongLength ?? 0} entries; expected {n}×{n} = {(long)n * n} (dense) or {graph.StoredRows}×{n} (feature and logit rows) for {n} nodes " +
                $"({graph.SelectedFeatures.Length} features, {graph.Layers}×{graph.Positions} errors, {graph.Positions} tokens, {graph.LogitTokens.Length} logits)",
                nameof(graph));
        return n;
    }

    /// <summary>The logit weights w: the logit probabilities on the logit nodes, 0 elsewhere.</summary>
    public static double[] LogitWeights(AttributionGraph graph)
    {
        var w = new double[graph.NodeCount];
        for (int j = 0; j < graph.LogitTokens.Length; j++) w[graph.LogitOffset + j] = graph.LogitProbabilities[j];
        return w;
    }

    /// <summary>
    /// 1 / max(Σ_s |A[t, s]|, 1e-10) for every row t, over the sources that <paramref name="keep"/>
    /// allows (all when null); rows of dropped targets get 0 (the pruned matrix's rows are zero).
    /// </summary>
    /// <exception cref="ArgumentException">A kept entry is NaN or infinite (the message names the two nodes).</exception>
    public static double[] RowScales(AttributionGraph graph, bool[]? keep)
    {
        int n = graph.NodeCount;
        var scales = new double[n];
        for (int t = 0; t < n; t++)
        {
            if (keep is not null && !keep[t]) continue;
            var row = graph.Row(t);
            double sum = 0;
            if (keep is null) for (int s = 0; s < n; s++) sum += Math.Abs(row[s]);
            else for (int s = 0; s < n; s++) if (keep[s]) sum += Math.Abs(row[s]);
            if (!double.IsFinite(sum)) throw NonFinite(graph, t, keep);
            scales[t] = 1.0 / Math.Max(sum, RowSumClamp);
        }
        return scales;
    }

    /// <summary>
    /// w·Â + w·Â² + … where Â[t, s] = |A[t, s]|·<paramref name="rowScales"/>[t] over kept targets and sources.
    /// </summary>
    /// <exception cref="InvalidOperationException">The series has not ended after 1,000 terms (the graph has a cycle).</exception>
    public static double[] Influence(AttributionGraph graph, double[] rowScales, double[] logitWeights, bool[]? keep)
    {
        int n = graph.NodeCount;
        var current = new double[n];
        var next = new double[n];
        var influence = new double[n];
        MultiplyLeft(graph, n, rowScales, logitWeights, keep, current);
        current.CopyTo(influence, 0);
        int iterations = 0;
        while (Array.Exists(current, x => x != 0))
        {
            if (iterations >= MaxIterations)
                throw new InvalidOperationException(
                    $"influence did not converge after {iterations} iterations: the adjacency has a cycle (an attribution graph is acyclic)");
            MultiplyLeft(graph, n, rowScales, current, keep, next);
            for (int i = 0; i < n; i++) influence[i] += next[i];
            (current, next) = (next, current);
            iterations++;
        }
        return influence;
    }

    /// <summary>result[s] = Σ_t x[t]·scale[t]·|A[t, s]| (kept t and s only): one row of A at a time.</summary>
    static void MultiplyLeft(AttributionGraph graph, int n, double[] rowScales, double[] x, bool[]? keep, double[] result)
    {
        Array.Clear(result);
        for (int t = 0; t < n; t++)
        {
            double factor = x[t] * rowScales[t];
            if (factor == 0) continue;
            var row = graph.Row(t);
            for (int s = 0; s < n; s++) result[s] += factor * Math.Abs(row[s]);
        }
        if (keep is not null)
            for (int s = 0; s < n; s++) if (!keep[s]) result[s] = 0;
    }

    static ArgumentException NonFinite(AttributionGraph graph, int t, bool[]? keep)
    {
        int n = graph.NodeCount;
        var row = graph.Row(t);
        int s = 0;
        while (s < n && (float.IsFinite(row[s]) || (keep is not null && !keep[s]))) s++;
        string what = s < n ? $"A[{t}, {s}] = {row[s]} (target {Describe(graph.Node(t))}, source {Describe(graph.Node(s))})"
                            : $"row {t} ({Describe(graph.Node(t))}) sums to infinity";
        return new ArgumentException($"adjacency: {what}; expected finite edge weights", "graph");
    }

    /// <summary>A node in words, for messages.</summary>
    public static string Describe(GraphNode node) => node.Kind switch
    {
        NodeKind.Feature => $"feature {node.Index} at layer {node.Layer}, position {node.Position}",
        NodeKind.Error => $"error node of layer {node.Layer} at position {node.Position}",
        NodeKind.Token => $"token {node.Index} at position {node.Position}",
        _ => $"logit of token {node.Index}",
    };
}

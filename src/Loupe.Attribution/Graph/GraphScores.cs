// How much of a graph's computation runs through features rather than error nodes: circuit-tracer's
// graph.compute_graph_scores.
//
// 1. Â = |A| row-normalised; influence = w·(Â + Â² + …) (as for pruning, on the unpruned graph).
// 2. Replacement score = Σ influence(tokens) / (Σ influence(tokens) + Σ influence(errors)):
//    the share of the end-to-end influence of the inputs that does not pass through an error node.
// 3. Completeness score = Σ_t (1 − Σ_{s error} Â[t, s])·(influence_t + w_t) / Σ_t (influence_t + w_t):
//    each node's share of non-error input, weighted by its influence on the output (partial credit).

namespace Loupe.Attribution.Graph;

/// <summary>A graph's replacement and completeness scores (both in [0, 1]; 1 = no error node involved).</summary>
/// <param name="Replacement">Share of token-to-logit influence that flows through features, not error nodes.</param>
/// <param name="Completeness">Influence-weighted share of every node's inputs that come from features or tokens.</param>
public readonly record struct GraphScoreResult(double Replacement, double Completeness);

/// <summary>circuit-tracer's <c>compute_graph_scores</c> (the steps are listed at the top of this file).</summary>
public static class GraphScores
{
    /// <summary>The replacement and completeness scores of <paramref name="graph"/> (unpruned).</summary>
    /// <exception cref="ArgumentException">The adjacency is not <c>[n, n]</c> or holds a NaN or infinity.</exception>
    /// <exception cref="InvalidOperationException">The adjacency has a cycle (the influence series does not end).</exception>
    public static GraphScoreResult Compute(AttributionGraph graph)
    {
        int n = GraphInfluence.CheckShape(graph);
        double[] w = GraphInfluence.LogitWeights(graph);
        double[] scales = GraphInfluence.RowScales(graph, keep: null);
        double[] influence = GraphInfluence.Influence(graph, scales, w, keep: null);

        double tokenInfluence = 0, errorInfluence = 0;
        for (int i = graph.ErrorOffset; i < graph.TokenOffset; i++) errorInfluence += influence[i];
        for (int i = graph.TokenOffset; i < graph.LogitOffset; i++) tokenInfluence += influence[i];
        double replacement = tokenInfluence / (tokenInfluence + errorInfluence);

        double weighted = 0, totalWeight = 0;
        int errorCount = graph.TokenOffset - graph.ErrorOffset;
        for (int t = 0; t < n; t++)
        {
            double errorShare = 0;
            foreach (float x in graph.Row(t).Slice(graph.ErrorOffset, errorCount)) errorShare += Math.Abs(x);
            double weight = influence[t] + w[t];
            weighted += (1 - errorShare * scales[t]) * weight;
            totalWeight += weight;
        }
        return new GraphScoreResult(replacement, weighted / totalWeight);
    }
}

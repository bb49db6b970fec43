// Pruning an attribution graph to the nodes and edges that carry most of the influence on the
// logits: circuit-tracer's graph.prune_graph, step for step.
//
// 1. Node influence: Â = |A| row-normalised; influence = w·(Â + Â² + …), w = logit probabilities.
// 2. Node threshold: sort the influences descending; keep the nodes whose influence is at least the
//    one where the cumulative share first reaches node_threshold (0.8). Tokens and logits are always kept.
// 3. The pruned matrix: A with the rows and columns of dropped nodes zeroed.
// 4. Edge scores: Â'[t, s]·(influence'_t + w_t), with Â' and influence' recomputed on the pruned matrix;
//    keep the edges whose score is at least the one where the cumulative share reaches edge_threshold (0.98).
// 5. Drop feature and error nodes without a kept outgoing edge and features without a kept incoming
//    edge, clear the dropped nodes' edges, and repeat until nothing changes.
// 6. Cumulative scores: each node's cumulative share of influence in the descending order of step 2.
//
// Everything is double; nothing n²-sized is allocated besides the edge mask (one byte per entry):
// the edge threshold comes from a histogram of the scores plus a sort of the one bucket it falls in.

namespace Loupe.Attribution.Graph;

/// <summary>
/// The result of <see cref="GraphPruning.Prune"/>: which nodes and edges survive, and the influence
/// numbers they were chosen by. Node indices are the graph's (adjacency order).
/// </summary>
public sealed class GraphPruneResult
{
    /// <summary>Kept nodes <c>[n]</c>.</summary>
    public required bool[] NodeMask { get; init; }

    /// <summary>Kept edges <c>[n, n]</c> row-major, rows = targets, columns = sources (as the adjacency).</summary>
    public required bool[] EdgeMask { get; init; }

    /// <summary>Each node's cumulative share of the total influence, in descending order of influence (circuit-tracer's <c>cumulative_scores</c>).</summary>
    public required double[] CumulativeScores { get; init; }

    /// <summary>Each node's influence on the logits in the unpruned graph, w·(Â + Â² + …).</summary>
    public required double[] NodeInfluence { get; init; }

    /// <summary>The node threshold used.</summary>
    public required double NodeThreshold { get; init; }

    /// <summary>The edge threshold used.</summary>
    public required double EdgeThreshold { get; init; }

    /// <summary>Number of nodes n.</summary>
    public int NodeCount => NodeMask.Length;

    /// <summary>Indices of the kept nodes, ascending.</summary>
    public int[] KeptNodes() => Enumerable.Range(0, NodeMask.Length).Where(i => NodeMask[i]).ToArray();

    /// <summary>Number of kept edges.</summary>
    public long KeptEdgeCount()
    {
        long count = 0;
        foreach (bool kept in EdgeMask) if (kept) count++;
        return count;
    }

    /// <summary>Whether the edge source → target is kept.</summary>
    public bool IsEdgeKept(int target, int source) => EdgeMask[(long)target * NodeCount + source];

    /// <summary>The kept edges in row-major order (by target, then source), as <c>torch.nonzero</c> lists them.</summary>
    public IEnumerable<(int Target, int Source)> KeptEdges()
    {
        int n = NodeCount;
        for (int t = 0; t < n; t++)
            for (int s = 0; s < n; s++)
                if (EdgeMask[(long)t * n + s]) yield return (t, s);
    }
}

/// <summary>circuit-tracer's <c>prune_graph</c> (the steps are listed at the top of this file).</summary>
public static class GraphPruning
{
    /// <summary>circuit-tracer's default node threshold.</summary>
    public const double DefaultNodeThreshold = 0.8;

    /// <summary>circuit-tracer's default edge threshold.</summary>
    public const double DefaultEdgeThreshold = 0.98;

    /// <summary>Prunes <paramref name="graph"/>.</summary>
    /// <param name="graph">The graph (its adjacency is read, not changed).</param>
    /// <param name="nodeThreshold">Share of the total node influence to keep, in [0, 1].</param>
    /// <param name="edgeThreshold">Share of the total edge score to keep, in [0, 1].</param>
    /// <exception cref="ArgumentOutOfRangeException">A threshold is outside [0, 1] (or NaN).</exception>
    /// <exception cref="ArgumentException">The adjacency is not <c>[n, n]</c> or holds a NaN or infinity.</exception>
    /// <exception cref="InvalidOperationException">The adjacency has a cycle (the influence series does not end).</exception>
    public static GraphPruneResult Prune(AttributionGraph graph, double nodeThreshold = DefaultNodeThreshold, double edgeThreshold = DefaultEdgeThreshold)
    {
        if (!(nodeThreshold >= 0 && nodeThreshold <= 1))
            throw new ArgumentOutOfRangeException(nameof(nodeThreshold), nodeThreshold, "node threshold must be between 0 and 1");
        if (!(edgeThreshold >= 0 && edgeThreshold <= 1))
            throw new ArgumentOutOfRangeException(nameof(edgeThreshold), edgeThreshold, "edge threshold must be between 0 and 1");
        int n = GraphInfluence.CheckShape(graph);
        int alwaysKeptFrom = graph.TokenOffset;     // tokens and logits
        int features = graph.SelectedFeatures.Length;
        var a = graph;

        // 1. Node influence on the full graph.
        double[] w = GraphInfluence.LogitWeights(graph);
        double[] influence = GraphInfluence.Influence(graph, GraphInfluence.RowScales(graph, keep: null), w, keep: null);

        // 2. Node threshold.
        double nodeCut = Threshold(influence, nodeThreshold);
        var nodeMask = new bool[n];
        for (int i = 0; i < n; i++) nodeMask[i] = i >= alwaysKeptFrom || influence[i] >= nodeCut;

        // 3–4. Edge scores on the pruned matrix: score[t, s] = |A[t, s]|·rowFactor[t] for kept t and s.
        double[] prunedScales = GraphInfluence.RowScales(graph, nodeMask);
        double[] prunedInfluence = GraphInfluence.Influence(graph, prunedScales, w, nodeMask);
        var rowFactor = new double[n];
        for (int t = 0; t < n; t++) rowFactor[t] = prunedScales[t] * (prunedInfluence[t] + w[t]);
        double edgeCut = EdgeThreshold(a, n, rowFactor, nodeMask, edgeThreshold);

        var edgeMask = new bool[(long)n * n];
        var outgoing = new int[n];    // kept edges leaving each node (column counts)
        var incoming = new int[n];    // kept edges entering each node (row counts)
        for (int t = 0; t < n; t++)
        {
            var row = a.Row(t);
            for (int s = 0; s < n; s++)
            {
                double score = nodeMask[s] ? Math.Abs(row[s]) * rowFactor[t] : 0;
                if (score >= edgeCut)
                {
                    edgeMask[(long)t * n + s] = true;
                    outgoing[s]++;
                    incoming[t]++;
                }
            }
        }

        // 5. Drop nodes left without kept outgoing (features, errors) or incoming (features) edges. As in
        //    circuit-tracer, each round decides on the edges as they stood after the previous round's
        //    clearing, and the first round runs before any edge of a dropped node is cleared.
        var cleared = new bool[n];
        bool changed = DropUnconnected(nodeMask, outgoing, incoming, features, alwaysKeptFrom);
        while (changed)
        {
            for (int i = 0; i < n; i++)
            {
                if (nodeMask[i] || cleared[i]) continue;
                cleared[i] = true;
                for (int s = 0; s < n; s++) ClearEdge(edgeMask, n, i, s, outgoing, incoming);
                for (int t = 0; t < n; t++) ClearEdge(edgeMask, n, t, i, outgoing, incoming);
            }
            changed = DropUnconnected(nodeMask, outgoing, incoming, features, alwaysKeptFrom);
        }

        // 6. Cumulative scores.
        var order = Enumerable.Range(0, n).ToArray();
        var sorted = (double[])influence.Clone();
        Array.Sort(sorted, order, DescendingComparer.Instance);
        double total = sorted.Sum();
        var cumulative = new double[n];
        double running = 0;
        for (int k = 0; k < n; k++)
        {
            running += sorted[k];
            cumulative[order[k]] = running / total;
        }

        return new GraphPruneResult
        {
            NodeMask = nodeMask,
            EdgeMask = edgeMask,
            CumulativeScores = cumulative,
            NodeInfluence = influence,
            NodeThreshold = nodeThreshold,
            EdgeThreshold = edgeThreshold,
        };
    }

    static void ClearEdge(bool[] edgeMask, int n, int t, int s, int[] outgoing, int[] incoming)
    {
        ref bool e = ref edgeMask[(long)t * n + s];
        if (!e) return;
        e = false;
        outgoing[s]--;
        incoming[t]--;
    }

    /// <summary>One synchronous round of step 5; true when a node was dropped.</summary>
    static bool DropUnconnected(bool[] nodeMask, int[] outgoing, int[] incoming, int features, int alwaysKeptFrom)
    {
        var drop = new List<int>();
        for (int i = 0; i < alwaysKeptFrom; i++)
            if (nodeMask[i] && (outgoing[i] == 0 || (i < features && incoming[i] == 0))) drop.Add(i);
        foreach (int i in drop) nodeMask[i] = false;
        return drop.Count > 0;
    }

    /// <summary>
    /// circuit-tracer's find_threshold: sort descending, cumulative share = cumsum / sum, the score at
    /// the first index whose share reaches <paramref name="threshold"/> (the last score when rounding
    /// keeps every share below it, or the sum is 0).
    /// </summary>
    internal static double Threshold(double[] scores, double threshold)
    {
        var sorted = (double[])scores.Clone();
        Array.Sort(sorted, DescendingComparer.Instance);
        double total = sorted.Sum();
        double running = 0;
        for (int k = 0; k < sorted.Length; k++)
        {
            running += sorted[k];
            if (running / total >= threshold) return sorted[k];
        }
        return sorted[^1];
    }

    /// <summary>
    /// <see cref="Threshold"/> over the n² edge scores |A[t, s]|·rowFactor[t]·[s kept] without holding them:
    /// pass 1 sums them into buckets of the score's leading bits (8 mantissa bits: buckets 0.4 % wide),
    /// pass 2 sorts only the bucket where the cumulative share crosses the threshold.
    /// </summary>
    static double EdgeThreshold(AttributionGraph a, int n, double[] rowFactor, bool[] nodeMask, double threshold)
    {
        const int Shift = 44;                    // positive doubles: 11 exponent + 8 mantissa bits left
        var bucketSums = new double[1 << (63 - Shift)];
        var row = new double[n];
        double total = 0;
        bool anyZero = false;
        for (int t = 0; t < n; t++)
        {
            EdgeScores(a, n, t, rowFactor, nodeMask, row);
            foreach (double score in row)
            {
                if (score == 0) { anyZero = true; continue; }
                bucketSums[BitConverter.DoubleToInt64Bits(score) >> Shift] += score;
                total += score;
            }
        }

        // The bucket where the running share (from the top) reaches the threshold.
        double before = 0;
        int crossing = -1;
        for (int b = bucketSums.Length - 1; b >= 0; b--)
        {
            if (bucketSums[b] == 0) continue;
            if ((before + bucketSums[b]) / total >= threshold) { crossing = b; break; }
            before += bucketSums[b];
        }
        if (crossing < 0) return anyZero ? 0 : SmallestScore(a, n, rowFactor, nodeMask, row);

        var inBucket = new List<double>();
        for (int t = 0; t < n; t++)
        {
            EdgeScores(a, n, t, rowFactor, nodeMask, row);
            foreach (double score in row)
                if (score != 0 && BitConverter.DoubleToInt64Bits(score) >> Shift == crossing) inBucket.Add(score);
        }
        inBucket.Sort(DescendingComparer.Instance);
        foreach (double score in inBucket)
        {
            before += score;
            if (before / total >= threshold) return score;
        }
        return inBucket[^1];   // rounding: the bucket's own sum reached the share, its running sum did not
    }

    static double SmallestScore(AttributionGraph a, int n, double[] rowFactor, bool[] nodeMask, double[] row)
    {
        double min = double.PositiveInfinity;
        for (int t = 0; t < n; t++)
        {
            EdgeScores(a, n, t, rowFactor, nodeMask, row);
            foreach (double score in row) min = Math.Min(min, score);
        }
        return min;
    }

    static void EdgeScores(AttributionGraph a, int n, int t, double[] rowFactor, bool[] nodeMask, double[] row)
    {
        var source = a.Row(t);
        double factor = rowFactor[t];
        for (int s = 0; s < n; s++) row[s] = nodeMask[s] ? Math.Abs(source[s]) * factor : 0;
    }

    sealed class DescendingComparer : IComparer<double>
    {
        public static readonly DescendingComparer Instance = new();
        public int Compare(double x, double y) => y.CompareTo(x);
    }
}

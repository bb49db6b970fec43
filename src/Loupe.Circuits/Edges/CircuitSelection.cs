namespace Loupe.Circuits.Edges;

/// <summary>How a circuit is chosen from edge scores.</summary>
public enum SelectionRule
{
    /// <summary>The n edges of largest |score|.</summary>
    TopN,
    /// <summary>Every edge with |score| ≥ τ.</summary>
    Threshold,
    /// <summary>EAP-IG's greedy growth from the logits: repeatedly the best-scoring edge into a node already in the circuit.</summary>
    Greedy,
}

/// <summary>Circuits (edge masks) from edge scores, and pruning of edges that cannot matter.</summary>
public static class CircuitSelection
{
    /// <summary>The <paramref name="n"/> edges with the largest |score| (ties: earlier edge first).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> is negative.</exception>
    public static bool[] TopN(EdgeScores scores, int n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        var mask = new bool[scores.Scores.Length];
        foreach (int e in Ranking(scores).Take(n)) mask[e] = true;
        return mask;
    }

    /// <summary>Every edge with |score| ≥ <paramref name="threshold"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threshold"/> is negative or not finite.</exception>
    public static bool[] Threshold(EdgeScores scores, double threshold)
    {
        if (!double.IsFinite(threshold) || threshold < 0) throw new ArgumentOutOfRangeException(nameof(threshold), $"the threshold must be a finite number ≥ 0, got {threshold}");
        return [.. scores.Scores.Select(s => Math.Abs(s) >= threshold)];
    }

    /// <summary>
    /// EAP-IG's greedy selection: candidates start as the edges into the logits; the best candidate by |score| joins
    /// the circuit, and when its source node is new to the circuit, every edge into that node's slots becomes a
    /// candidate. Stops at <paramref name="n"/> edges or when no candidate is left. Every chosen edge is connected to the logits.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> is negative.</exception>
    public static bool[] Greedy(EdgeScores scores, int n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        var graph = scores.Graph;
        var mask = new bool[graph.Edges.Count];
        var incomingOfNode = new Dictionary<int, List<int>>();
        for (int e = 0; e < graph.Edges.Count; e++)
        {
            var slot = graph.Destinations[graph.Edges[e].Destination];
            int node = slot.Kind == SlotKind.Logits ? -1 : Acdc.SourceOf(graph, slot);
            if (!incomingOfNode.TryGetValue(node, out var list)) incomingOfNode[node] = list = [];
            list.Add(e);
        }
        // Max-heap by |score|, earlier edge first on ties.
        var queue = new PriorityQueue<int, (double, int)>(Comparer<(double, int)>.Create((a, b) => a.Item1 != b.Item1 ? b.Item1.CompareTo(a.Item1) : a.Item2.CompareTo(b.Item2)));
        void Enqueue(int node)
        {
            if (incomingOfNode.TryGetValue(node, out var list))
                foreach (int e in list) queue.Enqueue(e, (Math.Abs(scores.Scores[e]), e));
        }
        var nodes = new HashSet<int> { -1 };
        Enqueue(-1);
        int chosen = 0;
        while (chosen < n && queue.TryDequeue(out int edge, out _))
        {
            if (mask[edge]) continue;
            mask[edge] = true;
            chosen++;
            int source = graph.Edges[edge].Source;
            if (nodes.Add(source)) Enqueue(source);
        }
        return mask;
    }

    /// <summary>The circuit of <paramref name="size"/> edges (TopN, Greedy) or of |score| ≥ <paramref name="threshold"/>.</summary>
    public static bool[] Select(EdgeScores scores, SelectionRule rule, int size, double threshold) => rule switch
    {
        SelectionRule.TopN => TopN(scores, size),
        SelectionRule.Greedy => Greedy(scores, size),
        _ => Threshold(scores, threshold),
    };

    /// <summary>
    /// Drops edges that cannot matter to the output through the circuit, until nothing changes: edges out of a node
    /// (head or MLP) none of whose outputs is kept, and edges out of a node none of whose inputs is kept (as EAP-IG's
    /// <c>prune</c>; such a node still computes something from corrupted inputs, so pruning can move the metric slightly).
    /// </summary>
    public static bool[] Prune(EdgeGraph graph, bool[] inCircuit)
    {
        if (inCircuit.Length != graph.Edges.Count) throw new ArgumentException($"the circuit mask has {inCircuit.Length} entries; the graph has {graph.Edges.Count} edges", nameof(inCircuit));
        var mask = (bool[])inCircuit.Clone();
        var slotNode = graph.Destinations.Select(d => d.Kind == SlotKind.Logits ? -1 : Acdc.SourceOf(graph, d)).ToArray();
        bool changed = true;
        while (changed)
        {
            changed = false;
            var hasIn = new bool[graph.Sources.Count];
            var hasOut = new bool[graph.Sources.Count];
            for (int e = 0; e < mask.Length; e++)
                if (mask[e])
                {
                    hasOut[graph.Edges[e].Source] = true;
                    if (slotNode[graph.Edges[e].Destination] is int node and >= 0) hasIn[node] = true;
                }
            for (int e = 0; e < mask.Length; e++)
            {
                if (!mask[e]) continue;
                int source = graph.Edges[e].Source, target = slotNode[graph.Edges[e].Destination];
                bool deadSource = graph.Sources[source].Kind != SourceKind.Input && !hasIn[source];
                bool deadTarget = target >= 0 && !hasOut[target];
                if (deadSource || deadTarget) { mask[e] = false; changed = true; }
            }
        }
        return mask;
    }

    /// <summary>Edge indices by |score|, largest first (ties: earlier edge first).</summary>
    public static IEnumerable<int> Ranking(EdgeScores scores) =>
        Enumerable.Range(0, scores.Scores.Length).OrderByDescending(e => Math.Abs(scores.Scores[e])).ThenBy(e => e);
}

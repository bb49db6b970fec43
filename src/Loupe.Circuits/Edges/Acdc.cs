namespace Loupe.Circuits.Edges;

/// <summary>What ACDC found.</summary>
/// <param name="Scores">Per edge, the change of the metric when ACDC tried removing it (<c>m(without) − m(before)</c>,
/// the sign convention of exact patching); 0 for edges into nodes that no longer reached the output and were dropped untested.</param>
/// <param name="InCircuit">The edges ACDC kept.</param>
/// <param name="Metric">The metric (mean over examples) of the circuit it kept.</param>
/// <param name="Threshold">τ: an edge goes when removing it moves the metric by less than this.</param>
/// <param name="Passes">Forward passes run.</param>
public sealed record AcdcResult(EdgeScores Scores, bool[] InCircuit, double Metric, double Threshold, int Passes);

/// <summary>
/// ACDC (Conmy et al. 2023): iterative pruning of the graph by threshold. Starting from the full graph, the
/// destination slots are visited from the logits back to the first layer; for each slot, every incoming edge
/// (latest source first) is removed on trial — the edge then carries the corrupted output (<see cref="CircuitEvaluator"/>) —
/// and the removal is kept when the task metric moves by less than τ (ACDC's absolute-value threshold on a task
/// metric; its default KL divergence is not used: the metric here is the task's). A slot whose node has no
/// remaining outgoing edge no longer reaches the output: its incoming edges are dropped without a pass.
/// One forward pass per tested edge, run in order: each decision depends on the ones before.
/// </summary>
public static class Acdc
{
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threshold"/> is negative or not finite.</exception>
    public static AcdcResult Run(CircuitEvaluator evaluator, double threshold, IProgress<string>? progress = null)
    {
        if (!double.IsFinite(threshold) || threshold < 0) throw new ArgumentOutOfRangeException(nameof(threshold), $"the ACDC threshold must be a finite number ≥ 0, got {threshold}");
        var graph = evaluator.Graph;
        int E = graph.Edges.Count;
        var inCircuit = Enumerable.Repeat(true, E).ToArray();
        var scores = new double[E];
        var incoming = graph.Destinations.Select(_ => new List<int>()).ToArray();
        var outgoing = graph.Sources.Select(_ => new List<int>()).ToArray();
        for (int e = 0; e < E; e++)
        {
            incoming[graph.Edges[e].Destination].Add(e);
            outgoing[graph.Edges[e].Source].Add(e);
        }
        var removed = new List<int>();
        double current = evaluator.Clean;
        int passesBefore = evaluator.Passes;
        for (int slot = graph.Destinations.Count - 1; slot >= 0; slot--)
        {
            var destination = graph.Destinations[slot];
            if (destination.Kind != SlotKind.Logits)
            {
                int node = SourceOf(graph, destination);
                if (!outgoing[node].Any(e => inCircuit[e]))
                {
                    foreach (int e in incoming[slot].Where(e => inCircuit[e])) { inCircuit[e] = false; removed.Add(e); }
                    continue;
                }
            }
            foreach (int e in incoming[slot].OrderByDescending(e => graph.Edges[e].Source))
            {
                double without = evaluator.Evaluate([[.. removed, e]])[0];
                scores[e] = without - current;
                if (Math.Abs(without - current) < threshold)
                {
                    inCircuit[e] = false;
                    removed.Add(e);
                    current = without;
                }
            }
            progress?.Report($"ACDC: {destination.Name} done, {inCircuit.Count(x => x)} of {E} edges kept, metric {current:G6}");
        }
        return new AcdcResult(new EdgeScores(graph, "ACDC", scores), inCircuit, current, threshold, evaluator.Passes - passesBefore);
    }

    /// <summary>The source node a destination slot belongs to (a head's q/k/v slots are that head's; an MLP slot is the MLP's).</summary>
    internal static int SourceOf(EdgeGraph graph, DestinationSlot slot)
    {
        for (int s = 0; s < graph.Sources.Count; s++)
        {
            var node = graph.Sources[s];
            if (node.Layer != slot.Layer) continue;
            if (slot.Kind == SlotKind.Mlp ? node.Kind == SourceKind.Mlp : node.Kind == SourceKind.Head && node.Head == slot.Head) return s;
        }
        throw new InvalidOperationException($"slot {slot.Name} has no node in the graph");
    }
}

namespace Loupe.Circuits.Edges;

/// <summary>One point of a faithfulness curve.</summary>
/// <param name="Percent">The share of the graph's edges kept, in percent.</param>
/// <param name="Edges">The number of edges kept.</param>
/// <param name="Metric">The circuit's metric (mean over examples).</param>
/// <param name="Recovered">
/// <c>(m_circuit − m_corrupted) / (m_clean − m_corrupted)</c>: 1 = the circuit does all the model does, 0 = no better than the corrupted run.
/// </param>
public sealed record FaithfulnessPoint(double Percent, int Edges, double Metric, double Recovered);

/// <summary>How much of the metric circuits of growing size recover (circuits chosen from the scores, evaluated by <see cref="CircuitEvaluator"/>).</summary>
public static class Faithfulness
{
    /// <summary>The shares of edges the curves are drawn at, in percent.</summary>
    public static IReadOnlyList<double> DefaultPercents { get; } = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100];

    /// <summary>The metric recovered by the circuit of each size; circuits of one curve share forward passes.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A percentage is outside (0, 100].</exception>
    /// <exception cref="ArgumentException">The scores are for another graph, or the rule is <see cref="SelectionRule.Threshold"/> (a curve needs sizes).</exception>
    public static IReadOnlyList<FaithfulnessPoint> Curve(CircuitEvaluator evaluator, EdgeScores scores, SelectionRule rule = SelectionRule.TopN, IReadOnlyList<double>? percents = null)
    {
        if (!ReferenceEquals(scores.Graph, evaluator.Graph) && scores.Graph.Edges.Count != evaluator.Graph.Edges.Count)
            throw new ArgumentException("the scores belong to another graph than the evaluator's", nameof(scores));
        if (rule == SelectionRule.Threshold) throw new ArgumentException("a faithfulness curve needs circuits of given sizes: use top-n or greedy", nameof(rule));
        percents ??= DefaultPercents;
        foreach (var p in percents)
            if (!(p > 0 && p <= 100)) throw new ArgumentOutOfRangeException(nameof(percents), $"percentages must be in (0, 100], got {p}");
        int E = scores.Scores.Length;
        var sizes = percents.Select(p => Math.Clamp((int)Math.Round(p / 100 * E), 1, E)).ToArray();
        var circuits = sizes.Select(n => evaluator.Removed(CircuitSelection.Select(scores, rule, n, 0))).ToArray();
        var metrics = evaluator.Evaluate(circuits);
        double clean = evaluator.Clean, corrupted = evaluator.Corrupted;
        return [.. percents.Select((p, i) => new FaithfulnessPoint(p, sizes[i], metrics[i], (metrics[i] - corrupted) / (clean - corrupted)))];
    }
}

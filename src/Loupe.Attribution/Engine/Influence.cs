namespace Loupe.Attribution.Engine;

/// <summary>Influence on the logits over the rows computed so far (circuit-tracer's <c>compute_partial_influences</c>).</summary>
internal static class Influence
{
    /// <summary>
    /// Each stored row is a target (<paramref name="rowToNode"/> names it; <paramref name="rowLayer"/> gives its
    /// layer, n_layers for logits). With |A| row-normalised (clamped at 1e-8), circuit-tracer's power series
    /// <c>Σₖ≥₁ w·Âᵏ</c> (w = the logit probabilities) is, on this acyclic graph, one pass over the rows from the
    /// highest layer down: a row's own influence is final before it is read, because only rows of higher layers
    /// (and logits) feed it. One pass is one sequential read of the rows, wherever they are stored.
    /// </summary>
    public static double[] Partial(RowStore rows, int width, float[] logitProbabilities, int[] rowToNode, int[] rowLayer)
    {
        var influence = new double[width];
        int logitStart = width - logitProbabilities.Length;
        var order = Enumerable.Range(0, rows.Count).OrderByDescending(r => rowLayer[r]).ThenBy(r => r).ToArray();
        foreach (int r in order)
        {
            int node = rowToNode[r];
            double w = (node >= logitStart ? logitProbabilities[node - logitStart] : 0) + influence[node];
            if (w == 0) continue;
            var row = rows.Row(r);
            double sum = 0;
            foreach (var v in row) sum += Math.Abs(v);
            double scale = w / Math.Max(sum, 1e-8);
            for (int c = 0; c < width; c++) influence[c] += scale * Math.Abs(row[c]);
        }
        return influence;
    }
}

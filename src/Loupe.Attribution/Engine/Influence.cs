namespace Loupe.Attribution.Engine;

/// <summary>Influence on the logits over the rows computed so far (circuit-tracer's <c>compute_partial_influences</c>).</summary>
internal static class Influence
{
    /// <summary>
    /// Rows of <paramref name="edges"/> (<paramref name="rows"/> × <paramref name="width"/>) are targets
    /// (<paramref name="rowToNode"/> names each); |A| is row-normalised and the logit probabilities are pushed
    /// back through it until nothing is left: <c>influence = Σₖ w·Âᵏ</c>. The graph is acyclic, so this ends.
    /// </summary>
    public static double[] Partial(float[] edges, int rows, int width, float[] logitProbabilities, int[] rowToNode)
    {
        var norm = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double sum = 0;
            var row = edges.AsSpan((int)((long)r * width), width);
            foreach (var v in row) sum += Math.Abs(v);
            norm[r] = 1.0 / Math.Max(sum, 1e-8);
        }
        var influence = new double[width];
        var prod = new double[width];
        for (int j = 0; j < logitProbabilities.Length; j++) prod[width - logitProbabilities.Length + j] = logitProbabilities[j];
        for (int iter = 0; iter < 128; iter++)
        {
            var next = new double[width];
            bool any = false;
            for (int r = 0; r < rows; r++)
            {
                double w = prod[rowToNode[r]] * norm[r];
                if (w == 0) continue;
                var row = edges.AsSpan((int)((long)r * width), width);
                for (int c = 0; c < width; c++) next[c] += w * Math.Abs(row[c]);
            }
            for (int c = 0; c < width; c++)
            {
                if (next[c] != 0) any = true;
                influence[c] += next[c];
            }
            if (!any) return influence;
            prod = next;
        }
        throw new InvalidOperationException("influence did not converge in 128 steps: the partial graph has a cycle");
    }
}

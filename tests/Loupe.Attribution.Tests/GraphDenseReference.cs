namespace Loupe.Attribution.Tests;

/// <summary>
/// Slow, obvious double implementations of the graph algorithms, for checking the streaming ones:
/// dense matrices, influence by solving x·(I − Â) = w (Gaussian elimination, not the power series),
/// thresholds by a full sort, pruning by whole-matrix passes as circuit-tracer writes them.
/// </summary>
internal static class GraphDenseReference
{
    public static double[,] Normalised(AttributionGraph g, bool[]? keep = null)
    {
        int n = g.NodeCount;
        var m = new double[n, n];
        for (int t = 0; t < n; t++)
        {
            double sum = 0;
            for (int s = 0; s < n; s++) if (Kept(keep, t) && Kept(keep, s)) sum += Math.Abs(g.Edge(t, s));
            for (int s = 0; s < n; s++) if (Kept(keep, t) && Kept(keep, s)) m[t, s] = Math.Abs(g.Edge(t, s)) / Math.Max(sum, 1e-10);
        }
        return m;
    }

    static bool Kept(bool[]? keep, int i) => keep is null || keep[i];

    public static double[] LogitWeights(AttributionGraph g)
    {
        var w = new double[g.NodeCount];
        for (int j = 0; j < g.LogitTokens.Length; j++) w[g.LogitOffset + j] = g.LogitProbabilities[j];
        return w;
    }

    /// <summary>w·((I − M)⁻¹ − I): solve (I − M)ᵀ x = wᵀ, return x − w.</summary>
    public static double[] Influence(double[,] m, double[] w)
    {
        int n = w.Length;
        var a = new double[n, n + 1];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++) a[i, j] = (i == j ? 1 : 0) - m[j, i];
            a[i, n] = w[i];
        }
        for (int c = 0; c < n; c++)
        {
            int pivot = c;
            for (int r = c + 1; r < n; r++) if (Math.Abs(a[r, c]) > Math.Abs(a[pivot, c])) pivot = r;
            for (int j = 0; j <= n; j++) (a[c, j], a[pivot, j]) = (a[pivot, j], a[c, j]);
            for (int r = 0; r < n; r++)
            {
                if (r == c || a[r, c] == 0) continue;
                double f = a[r, c] / a[c, c];
                for (int j = c; j <= n; j++) a[r, j] -= f * a[c, j];
            }
        }
        var x = new double[n];
        for (int i = 0; i < n; i++) x[i] = a[i, n] / a[i, i] - w[i];
        return x;
    }

    public static double FindThreshold(IEnumerable<double> scores, double threshold)
    {
        var sorted = scores.OrderByDescending(x => x).ToArray();
        double total = sorted.Sum(), running = 0;
        for (int k = 0; k < sorted.Length; k++)
        {
            running += sorted[k];
            if (running / total >= threshold) return sorted[k];
        }
        return sorted[^1];
    }

    public static (bool[] NodeMask, bool[,] EdgeMask, double[] Influence) Prune(AttributionGraph g, double nodeThreshold, double edgeThreshold)
    {
        int n = g.NodeCount, features = g.SelectedFeatures.Length, tail = g.TokenOffset;
        var w = LogitWeights(g);
        var influence = Influence(Normalised(g), w);
        double cut = FindThreshold(influence, nodeThreshold);
        var node = new bool[n];
        for (int i = 0; i < n; i++) node[i] = influence[i] >= cut || i >= tail;

        var pruned = Normalised(g, node);
        var prunedInfluence = Influence(pruned, w);
        var scores = new double[n, n];
        for (int t = 0; t < n; t++) for (int s = 0; s < n; s++) scores[t, s] = pruned[t, s] * (prunedInfluence[t] + w[t]);
        double edgeCut = FindThreshold(scores.Cast<double>(), edgeThreshold);
        var edge = new bool[n, n];
        for (int t = 0; t < n; t++) for (int s = 0; s < n; s++) edge[t, s] = scores[t, s] >= edgeCut;

        var old = (bool[])node.Clone();
        Update(node, edge, features, tail);
        while (!node.SequenceEqual(old))
        {
            Array.Copy(node, old, n);
            for (int i = 0; i < n; i++)
                if (!node[i]) for (int j = 0; j < n; j++) { edge[i, j] = false; edge[j, i] = false; }
            Update(node, edge, features, tail);
        }
        return (node, edge, influence);
    }

    static void Update(bool[] node, bool[,] edge, int features, int tail)
    {
        int n = node.Length;
        var outgoing = new bool[n];
        var incoming = new bool[n];
        for (int t = 0; t < n; t++) for (int s = 0; s < n; s++) if (edge[t, s]) { outgoing[s] = true; incoming[t] = true; }
        for (int i = 0; i < tail; i++) node[i] &= outgoing[i];
        for (int i = 0; i < features; i++) node[i] &= incoming[i];
    }
}

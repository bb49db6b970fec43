using Loupe.Attribution.Graph;

namespace Loupe.Attribution.Tests;

public class GraphPruningTests
{
    [Fact]
    public void Fixture_MasksMatchCircuitTracerExactly()
    {
        var result = GraphPruning.Prune(GraphTestData.Fixture);

        long[] nodeMask = GraphTestData.RawInt64("pruned.node_mask");
        long[] edgeMask = GraphTestData.RawInt64("pruned.edge_mask");
        int n = nodeMask.Length;
        Assert.Equal(197, n);
        var nodeDiff = Enumerable.Range(0, n).Where(i => result.NodeMask[i] != (nodeMask[i] == 1)).ToArray();
        Assert.True(nodeDiff.Length == 0, $"node mask differs at {string.Join(", ", nodeDiff)}");
        var edgeDiff = Enumerable.Range(0, n * n).Where(i => result.EdgeMask[i] != (edgeMask[i] == 1)).ToArray();
        Assert.True(edgeDiff.Length == 0, $"edge mask differs at {edgeDiff.Length} entries, first (target, source) = ({edgeDiff.FirstOrDefault() / n}, {edgeDiff.FirstOrDefault() % n})");

        Assert.Equal(GraphTestData.RawInt64("pruned.kept_node_ids").Select(x => (int)x), result.KeptNodes());
        Assert.Equal(38, result.KeptNodes().Length);
        Assert.Equal(351, result.KeptEdgeCount());
        Assert.Equal(351, result.KeptEdges().Count());
    }

    [Fact]
    public void Fixture_InfluenceAndCumulativeScoresMatchTo1e5()
    {
        var result = GraphPruning.Prune(GraphTestData.Fixture);
        float[] influence = GraphTestData.RawFloat("node_influence");
        float[] cumulative = GraphTestData.RawFloat("pruned.cumulative_scores");
        // Purely relative (measured: 1.6e-7 at most; the 74 nodes without influence are exactly 0 on both sides).
        for (int i = 0; i < influence.Length; i++)
        {
            GraphTestData.Close(influence[i], result.NodeInfluence[i], 1e-5, 0, $"node_influence[{i}]");
            GraphTestData.Close(cumulative[i], result.CumulativeScores[i], 1e-5, 0, $"cumulative_scores[{i}]");
        }
    }

    [Fact]
    public void Fixture_InfluenceEqualsTheMatrixInverseSolution()
    {
        var g = GraphTestData.Fixture;
        var expected = GraphDenseReference.Influence(GraphDenseReference.Normalised(g), GraphDenseReference.LogitWeights(g));
        var result = GraphPruning.Prune(g);
        for (int i = 0; i < expected.Length; i++)
            GraphTestData.Close(expected[i], result.NodeInfluence[i], 1e-10, 1e-15, $"influence[{i}]");
    }

    [Fact]
    public void FiveNodeGraph_ByHand()
    {
        // Influences (worked by hand in GraphTestData.FiveNodes' terms): f .46, e .22, token .58, logits 0.
        // Node cut (0.8): sorted .58, .46, .22 → cumulative .460, .825 → keep ≥ .46: e is dropped.
        // Pruned: Â'[l0] = (f .75, tok .25), Â'[l1] = (f 1), Â'[f] = (tok 1); influence' f .65, tok .80.
        // Edge scores: f←tok .65, l0←f .45, l1←f .2, l0←tok .15 (total 1.45; cumulative .448, .759, .897, 1).
        var g = GraphTestData.FiveNodes();
        var all = GraphPruning.Prune(g, 0.8, 0.98);
        Assert.Equal([true, false, true, true, true], all.NodeMask);
        Assert.Equal([(0, 2), (3, 0), (3, 2), (4, 0)], all.KeptEdges());
        GraphTestData.Close(0.46, all.NodeInfluence[0], 1e-7, 0, "influence f");
        GraphTestData.Close(0.22, all.NodeInfluence[1], 1e-7, 0, "influence e");
        GraphTestData.Close(0.58, all.NodeInfluence[2], 1e-7, 0, "influence token");
        GraphTestData.Close(1.04 / 1.26, all.CumulativeScores[0], 1e-7, 0, "cumulative f");
        GraphTestData.Close(1.0, all.CumulativeScores[1], 1e-7, 0, "cumulative e");
        GraphTestData.Close(0.58 / 1.26, all.CumulativeScores[2], 1e-7, 0, "cumulative token");

        // 0.85 → cut .2: l0←tok goes.
        Assert.Equal([(0, 2), (3, 0), (4, 0)], GraphPruning.Prune(g, 0.8, 0.85).KeptEdges());
        // 0.4 → cut .65: only f←tok survives, so f has no outgoing edge: f goes, then its edge.
        var tight = GraphPruning.Prune(g, 0.8, 0.4);
        Assert.Equal([false, false, true, true, true], tight.NodeMask);
        Assert.Empty(tight.KeptEdges());
    }

    [Theory]
    [InlineData(1, 0.8, 0.98)]
    [InlineData(2, 0.8, 0.98)]
    [InlineData(3, 0.5, 0.9)]
    [InlineData(4, 0.95, 0.5)]
    [InlineData(5, 0.99, 0.995)]  // (at exactly 1.0 the cut depends on summation rounding, in circuit-tracer too)
    [InlineData(6, 0.0, 0.0)]
    [InlineData(7, 0.3, 0.7)]
    public void RandomGraphs_MatchTheDenseReference(int seed, double nodeThreshold, double edgeThreshold)
    {
        var g = GraphTestData.Random(seed);
        var (node, edge, influence) = GraphDenseReference.Prune(g, nodeThreshold, edgeThreshold);
        var result = GraphPruning.Prune(g, nodeThreshold, edgeThreshold);
        Assert.Equal(node, result.NodeMask);
        int n = g.NodeCount;
        for (int t = 0; t < n; t++)
            for (int s = 0; s < n; s++)
                Assert.True(edge[t, s] == result.IsEdgeKept(t, s), $"edge {s} → {t}: reference {edge[t, s]}, found {result.IsEdgeKept(t, s)}");
        for (int i = 0; i < n; i++) GraphTestData.Close(influence[i], result.NodeInfluence[i], 1e-10, 1e-15, $"influence[{i}]");
    }

    [Fact]
    public void ThresholdsOutsideZeroToOne_AreRefused()
    {
        var g = GraphTestData.FiveNodes();
        Assert.Throws<ArgumentOutOfRangeException>(() => GraphPruning.Prune(g, 1.1, 0.98));
        Assert.Throws<ArgumentOutOfRangeException>(() => GraphPruning.Prune(g, 0.8, -0.1));
        Assert.Throws<ArgumentOutOfRangeException>(() => GraphPruning.Prune(g, double.NaN, 0.98));
    }

    [Fact]
    public void NaNInTheAdjacency_IsNamed()
    {
        var g = GraphTestData.FiveNodes();
        g.Adjacency![3 * 5 + 1] = float.NaN;
        var e = Assert.Throws<ArgumentException>(() => GraphPruning.Prune(g));
        Assert.Contains("A[3, 1] = NaN", e.Message);
        Assert.Contains("error node of layer 0 at position 0", e.Message);
    }

    [Fact]
    public void AdjacencyOfTheWrongSize_IsRefused()
    {
        var g = GraphTestData.FiveNodes();
        var bad = new AttributionGraph
        {
            InputTokens = g.InputTokens, Layers = g.Layers, ActiveFeatures = g.ActiveFeatures, ActivationValues = g.ActivationValues,
            SelectedFeatures = g.SelectedFeatures, LogitTokens = g.LogitTokens, LogitProbabilities = g.LogitProbabilities,
            Adjacency = new float[24],
        };
        var e = Assert.Throws<ArgumentException>(() => GraphPruning.Prune(bad));
        Assert.Contains("expected 5×5 = 25", e.Message);
    }
}

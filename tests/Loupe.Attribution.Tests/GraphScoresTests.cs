using Loupe.Attribution.Graph;

namespace Loupe.Attribution.Tests;

public class GraphScoresTests
{
    [Fact]
    public void FiveNodeGraph_ByHand()
    {
        // Influence f .46, e .22, token .58 (see GraphPruningTests.FiveNodeGraph_ByHand).
        // Replacement = .58 / (.58 + .22) = .725.
        // Completeness: error share of each row: f 0, e 0, token 0, l0 .2, l1 .5; weights influence + w =
        // .46, .22, .58, .6, .2 (sum 2.06) → (.46 + .22 + .58 + .8·.6 + .5·.2) / 2.06 = 1.84 / 2.06.
        var scores = GraphScores.Compute(GraphTestData.FiveNodes());
        GraphTestData.Close(0.725, scores.Replacement, 1e-7, 0, "replacement");
        GraphTestData.Close(1.84 / 2.06, scores.Completeness, 1e-7, 0, "completeness");
    }

    [Fact]
    public void Fixture_MatchesTheDefinitionsComputedDensely()
    {
        var g = GraphTestData.Fixture;
        var m = GraphDenseReference.Normalised(g);
        var w = GraphDenseReference.LogitWeights(g);
        var influence = GraphDenseReference.Influence(m, w);
        double tokens = 0, errors = 0;
        for (int i = g.ErrorOffset; i < g.TokenOffset; i++) errors += influence[i];
        for (int i = g.TokenOffset; i < g.LogitOffset; i++) tokens += influence[i];
        double weighted = 0, total = 0;
        for (int t = 0; t < g.NodeCount; t++)
        {
            double errorShare = 0;
            for (int s = g.ErrorOffset; s < g.TokenOffset; s++) errorShare += m[t, s];
            weighted += (1 - errorShare) * (influence[t] + w[t]);
            total += influence[t] + w[t];
        }

        var scores = GraphScores.Compute(g);
        GraphTestData.Close(tokens / (tokens + errors), scores.Replacement, 1e-10, 0, "replacement");
        GraphTestData.Close(weighted / total, scores.Completeness, 1e-10, 0, "completeness");
        Assert.InRange(scores.Replacement, 0.0, 1.0);
        Assert.InRange(scores.Completeness, 0.0, 1.0);
    }

    [Fact]
    public void NoErrorEdges_ScoresOne()
    {
        var g = GraphTestData.FiveNodes();
        g.Adjacency![3 * 5 + 1] = 0;
        g.Adjacency![4 * 5 + 1] = 0;
        var scores = GraphScores.Compute(g);
        GraphTestData.Close(1.0, scores.Replacement, 1e-12, 0, "replacement");
        GraphTestData.Close(1.0, scores.Completeness, 1e-12, 0, "completeness");
    }
}

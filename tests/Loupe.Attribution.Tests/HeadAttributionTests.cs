using Loupe.Models;

namespace Loupe.Attribution.Tests;

/// <summary>Per-head attribution: the residual part plus every head's share add up to the edge, for every family's wiring.</summary>
public sealed class HeadAttributionTests
{
    static readonly int[] Prompt = [1, 37, 211, 5, 88, 400, 12];

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    [InlineData("gpt_neox")]
    public void Shares_add_up_to_the_edge(string arch)
    {
        using var model = ModelLoader.LoadFolder(Testing.SharedData.TestData(Path.Combine("reference", arch)));
        var tc = FamilyAttributionTests.RandomTranscoders(model);
        var attributor = new Attributor(model, tc, new AttributionSettings { BatchSize = 32 });
        var graph = attributor.Attribute(Prompt);
        // Every edge into the top logit and into the last two feature nodes.
        int[] targets = [graph.LogitOffset, graph.ErrorOffset - 1, graph.ErrorOffset - 2];
        var edges = targets.SelectMany(t => Enumerable.Range(0, graph.LogitOffset).Where(s => graph.Edge(t, s) != 0).Select(s => (t, s))).ToArray();
        var split = attributor.AttributeHeads(graph, edges);
        Assert.Equal(edges.Length, split.Count);
        double largest = split.Max(e => Math.Abs(e.Total)), worst = 0;
        int crossPosition = 0;
        foreach (var e in split)
        {
            double sum = e.Direct + e.Heads.Sum(h => (double)h.Weight);
            worst = Math.Max(worst, Math.Abs(sum - e.Total));
            // Another position can only be reached through attention.
            if (graph.Node(e.Source).Position != graph.Node(e.Target).Position)
            {
                crossPosition++;
                Assert.Equal(0f, e.Direct);
            }
        }
        Assert.True(crossPosition > 0);
        Assert.True(worst <= 1e-5 * Math.Max(1, largest), $"{arch}: max |Σ shares − A| = {worst:g3} (largest edge {largest:g3})");
    }

    [Fact]
    public void A_graph_from_other_transcoders_is_refused()
    {
        using var model = FixtureAttributionTests.Model();
        var graph = new Attributor(model, FixtureAttributionTests.Transcoders(model)).Attribute(FixtureAttributionTests.Prompt);
        var other = new Attributor(model, FamilyAttributionTests.RandomTranscoders(model));
        Assert.Throws<ArgumentException>(() => other.AttributeHeads(graph, [(graph.LogitOffset, 0)]));
    }
}

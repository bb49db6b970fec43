using System.Text.Json;
using Loupe.Circuits.Edges;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Circuits.Tests.Edges;

public class EdgeGraphTests
{
    static JsonElement EdgesJson(string fixture)
    {
        using var json = JsonDocument.Parse(File.ReadAllText(SharedData.TestData(Path.Combine("circuits", fixture, "edges.json"))));
        return json.RootElement.Clone();
    }

    static string[] Names(JsonElement root, string property) =>
        [.. root.GetProperty(property).EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetProperty("name").GetString()!)];

    [Fact]
    public void Gpt2GraphIsEapIgsNodeForNodeAndEdgeForEdge()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var graph = EdgeGraph.FromModel(model);
        var root = EdgesJson("gpt2");
        Assert.Equal(Names(root, "src_nodes"), graph.Sources.Select(s => s.Name));
        Assert.Equal(Names(root, "dst_nodes"), graph.Destinations.Select(s => s.Name));
        Assert.Equal(Names(root, "edges"), graph.Edges.Select(e => e.Name));
        Assert.Equal(262, graph.Edges.Count);
    }

    [RequiresSharedFact("models/induction-attn-only-2l")]
    public void AttentionOnlyGraphIsEapIgsWithoutTheMlpNodes()
    {
        using var model = ModelLoader.LoadFolder(SharedData.Require("models/induction-attn-only-2l"));
        var graph = EdgeGraph.FromModel(model);
        var root = EdgesJson("induction-attn-only-2l");
        static bool NoMlp(string name) => !System.Text.RegularExpressions.Regex.IsMatch(name, @"(^|>)m\d");
        Assert.Equal(Names(root, "src_nodes").Where(NoMlp), graph.Sources.Select(s => s.Name));
        Assert.Equal(Names(root, "dst_nodes").Where(NoMlp), graph.Destinations.Select(s => s.Name));
        Assert.Equal(Names(root, "edges").Where(NoMlp), graph.Edges.Select(e => e.Name));
        // EAP-IG's 110 less the 29 that touch m0/m1: 5 into m0, 10 into m1, m0 into layer 1's 12 q/k/v slots, m0 and m1 into the logits.
        Assert.Equal(110 - 29, graph.Edges.Count);
    }

    [Fact]
    public void ExactScoresDoNotDependOnHowManyEdgesShareAPass()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var graph = EdgeGraph.FromModel(model);
        var (clean, corrupted) = Tokens();
        var metric = new MeanLogitDiff([.. Enumerable.Range(0, clean.Batch).Select(_ => new[] { new LogitDiffTerm(-1, 17, 42) })]);
        var one = EdgeAttribution.Exact(model, graph, clean, corrupted, metric, edgesPerPass: 1);
        var many = EdgeAttribution.Exact(model, graph, clean, corrupted, metric, edgesPerPass: 100);
        for (int e = 0; e < graph.Edges.Count; e++)
            Assert.True(Math.Abs(one.Scores[e] - many.Scores[e]) <= 1e-6, $"{graph.Edges[e].Name}: {one.Scores[e]} vs {many.Scores[e]}");
    }

    [Fact]
    public void MismatchedCleanAndCorruptedLengthsAreRejected()
    {
        using var model = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        var graph = EdgeGraph.FromModel(model);
        var clean = new TokenBatch([5, 6, 7, 8], 1, 4);
        var corrupted = new TokenBatch([5, 6, 7], 1, 3);
        var metric = new MeanLogitDiff([[new LogitDiffTerm(-1, 17, 42)]]);
        var e = Assert.Throws<ArgumentException>(() => EdgeAttribution.Eap(model, graph, clean, corrupted, metric));
        Assert.Contains("must match", e.Message);
        Assert.Throws<ArgumentException>(() => EdgeAttribution.Exact(model, graph, clean, corrupted, metric));
    }

    static (TokenBatch Clean, TokenBatch Corrupted) Tokens()
    {
        using var scores = SafeTensorsFile.Open(SharedData.TestData("circuits/gpt2/scores.safetensors"));
        TokenBatch Read(string name)
        {
            Assert.True(scores.TryGetInfo(name, out var info));
            return new TokenBatch([.. scores.GetInt64(name).Select(x => (int)x)], (int)info.Shape[0], (int)info.Shape[1]);
        }
        return (Read("clean_tokens"), Read("corrupted_tokens"));
    }
}

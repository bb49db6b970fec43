using System.Text.Json;
using System.Text.Json.Nodes;
using Json.Schema;
using Loupe.Attribution.Graph;

namespace Loupe.Attribution.Tests;

public sealed class GraphNeuronpediaJsonTests : IDisposable
{
    const string Slug = "loupe-gpt2-fixture-relu-tc32";
    static readonly string[] TranscoderList = ["loupe-gpt2-fixture/relu-tc32-layer0", "loupe-gpt2-fixture/relu-tc32-layer1", "loupe-gpt2-fixture/relu-tc32-layer2"];

    readonly string _folder = Directory.CreateTempSubdirectory("loupe-graph-json-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    static NeuronpediaGraphOptions Options(NeuronpediaFlavor flavor) => new() { Slug = Slug, TranscoderList = TranscoderList, Flavor = flavor };

    [Theory]
    [InlineData(NeuronpediaFlavor.V050, "v0.5.0/")]
    [InlineData(NeuronpediaFlavor.D797c82, "")]
    public void FixtureGraph_EqualsCircuitTracersJson_NodeForNodeAndLinkForLink(NeuronpediaFlavor flavor, string folder)
    {
        var g = GraphTestData.Fixture;
        string written = NeuronpediaGraphJson.WriteFiles(_folder, g, GraphPruning.Prune(g), Options(flavor));
        Assert.Equal(Path.Combine(_folder, Slug + ".json"), written);

        var actual = JsonNode.Parse(File.ReadAllBytes(written))!.AsObject();
        var expected = JsonNode.Parse(File.ReadAllBytes(GraphTestData.Path(folder + Slug + ".json")))!.AsObject();
        Assert.Equal(expected.Select(p => p.Key), actual.Select(p => p.Key));

        // metadata: all but scan (circuit-tracer's is Python's salted hash of the transcoder list).
        var em = expected["metadata"]!.AsObject();
        var am = actual["metadata"]!.AsObject();
        Assert.Equal(em.Select(p => p.Key), am.Select(p => p.Key));
        foreach (var (key, value) in em)
            if (key != "scan") Assert.True(JsonNode.DeepEquals(value, am[key]), $"metadata.{key}: expected {value?.ToJsonString()}, found {am[key]?.ToJsonString()}");
        Assert.StartsWith("custom-", (string)am["scan"]!);
        Assert.True(JsonNode.DeepEquals(expected["qParams"], actual["qParams"]));

        var en = expected["nodes"]!.AsArray();
        var an = actual["nodes"]!.AsArray();
        Assert.Equal(38, en.Count);
        Assert.Equal(en.Count, an.Count);
        for (int i = 0; i < en.Count; i++) AssertSameObject(en[i]!.AsObject(), an[i]!.AsObject(), $"nodes[{i}] ({en[i]!["node_id"]})");

        var el = expected["links"]!.AsArray();
        var al = actual["links"]!.AsArray();
        Assert.Equal(351, el.Count);
        Assert.Equal(el.Count, al.Count);
        for (int i = 0; i < el.Count; i++) AssertSameObject(el[i]!.AsObject(), al[i]!.AsObject(), $"links[{i}]");

        // graph-metadata.json: the index circuit-tracer writes beside it.
        var index = JsonNode.Parse(File.ReadAllBytes(Path.Combine(_folder, NeuronpediaGraphJson.IndexFileName)))!;
        var expectedIndex = JsonNode.Parse(File.ReadAllBytes(GraphTestData.Path(folder + "graph-metadata.json")))!;
        Assert.Single(index["graphs"]!.AsArray());
        var entry = index["graphs"]![0]!.AsObject();
        entry["scan"] = expectedIndex["graphs"]![0]!["scan"]!.DeepClone();
        Assert.True(JsonNode.DeepEquals(expectedIndex, index), index.ToJsonString());
    }

    /// <summary>Same keys in the same order; strings, booleans, nulls and integers exactly; other numbers to 1e-5 relative.</summary>
    static void AssertSameObject(JsonObject expected, JsonObject actual, string where)
    {
        Assert.Equal(expected.Select(p => p.Key), actual.Select(p => p.Key));
        foreach (var (key, e) in expected)
        {
            var a = actual[key];
            if (e is JsonValue ev && ev.GetValueKind() == JsonValueKind.Number)
            {
                Assert.True(a is JsonValue av && av.GetValueKind() == JsonValueKind.Number, $"{where}.{key}: expected a number, found {a?.ToJsonString()}");
                double x = ev.GetValue<double>(), y = a!.GetValue<double>();
                if (key is "feature" or "ctx_idx" or "run_idx" or "reverse_ctx_idx") Assert.True(x == y, $"{where}.{key}: expected {x}, found {y}");
                else GraphTestData.Close(x, y, 1e-5, 1e-9, $"{where}.{key}");
            }
            else Assert.True(JsonNode.DeepEquals(e, a), $"{where}.{key}: expected {e?.ToJsonString() ?? "null"}, found {a?.ToJsonString() ?? "null"}");
        }
    }

    [Fact]
    public void Output_ValidatesAgainstTheNeuronpediaSchema_WithAndWithoutProvenance()
    {
        var schema = JsonSchema.FromText(File.ReadAllText(GraphTestData.Path("neuronpedia-graph-schema.json")));
        var g = GraphTestData.Fixture;
        var withProvenance = new AttributionGraph
        {
            InputTokens = g.InputTokens, Layers = g.Layers, ActiveFeatures = g.ActiveFeatures, ActivationValues = g.ActivationValues,
            SelectedFeatures = g.SelectedFeatures, LogitTokens = g.LogitTokens, LogitProbabilities = g.LogitProbabilities,
            Adjacency = g.Adjacency, Prompt = "Once upon a time", Provenance = GraphSafetensorsTests.Provenance(),
        };
        foreach (var (graph, name) in new[] { (g, "plain"), (withProvenance, "provenance") })
        {
            var options = Options(NeuronpediaFlavor.V050) with { Slug = name, TokenText = t => t % 2 == 0 ? $"even\n{t}" : $"odd\t{t}" };
            string path = NeuronpediaGraphJson.WriteFiles(_folder, graph, GraphPruning.Prune(graph), options);
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var result = schema.Evaluate(doc.RootElement, new EvaluationOptions { OutputFormat = OutputFormat.List });
            Assert.True(result.IsValid, $"{name}: " + string.Join("; ", (result.Details ?? []).Where(d => d.Errors is not null)
                .SelectMany(d => d.Errors!.Select(e => $"{d.InstanceLocation}: {e.Value}"))));

            var metadata = doc.RootElement.GetProperty("metadata");
            Assert.Equal("even⏎0", metadata.GetProperty("prompt_tokens")[0].GetString());
            var logit = doc.RootElement.GetProperty("nodes").EnumerateArray().First(n => n.GetProperty("feature_type").GetString() == "logit");
            Assert.Equal("Output \"even⏎166\" (p=0.012)", logit.GetProperty("clerp").GetString());
            if (name == "provenance")
            {
                Assert.Equal("Once upon a time", metadata.GetProperty("prompt").GetString());
                Assert.Equal("sha256:abc123", metadata.GetProperty("loupe").GetProperty("model_fingerprint").GetString());
                Assert.Equal("sha256:def456", metadata.GetProperty("loupe").GetProperty("transcoder_fingerprint").GetString());
                Assert.Equal("0.10.0-test", metadata.GetProperty("info").GetProperty("generator").GetProperty("version").GetString());
                Assert.Equal(10, metadata.GetProperty("generation_settings").GetProperty("max_n_logits").GetInt32());
                Assert.False(metadata.GetProperty("generation_settings").TryGetProperty("max_feature_nodes", out _)); // "all" is no integer
                Assert.Equal("all", metadata.GetProperty("loupe").GetProperty("settings").GetProperty("max_feature_nodes").GetString());
                Assert.Equal(0.98, metadata.GetProperty("pruning_settings").GetProperty("edge_threshold").GetDouble());
            }
            else
            {
                Assert.StartsWith("even\n0even\n360even\n480odd\t161", metadata.GetProperty("prompt").GetString());   // the raw text, as circuit-tracer's input_string
            }
        }
        // The validator is live: a node without its required clerp fails.
        var broken = JsonNode.Parse(File.ReadAllBytes(Path.Combine(_folder, "plain.json")))!;
        broken["nodes"]![0]!.AsObject().Remove("clerp");
        using var brokenDoc = JsonDocument.Parse(broken.ToJsonString());
        Assert.False(schema.Evaluate(brokenDoc.RootElement).IsValid);

        var index = JsonNode.Parse(File.ReadAllBytes(Path.Combine(_folder, NeuronpediaGraphJson.IndexFileName)))!;
        Assert.Equal(["plain", "provenance"], index["graphs"]!.AsArray().Select(x => (string)x!["slug"]!));
    }

    [Fact]
    public void TheIndex_ReplacesASlugsEntryAndKeepsTheOthers()
    {
        var g = GraphTestData.FiveNodes();
        var pruning = GraphPruning.Prune(g);
        var options = new NeuronpediaGraphOptions { Slug = "a", Scan = "fixture-model" };
        NeuronpediaGraphJson.WriteFiles(_folder, g, pruning, options);
        NeuronpediaGraphJson.WriteFiles(_folder, g, pruning, options with { Slug = "b" });
        NeuronpediaGraphJson.WriteFiles(_folder, g, pruning, options with { Scan = "other-model" });
        var graphs = JsonNode.Parse(File.ReadAllBytes(Path.Combine(_folder, NeuronpediaGraphJson.IndexFileName)))!["graphs"]!.AsArray();
        Assert.Equal(["b", "a"], graphs.Select(x => (string)x!["slug"]!));
        Assert.Equal("other-model", (string)graphs[1]!["scan"]!);
        Assert.Equal(["a.json", "b.json", "graph-metadata.json"], Directory.GetFiles(_folder).Select(Path.GetFileName).Order());
    }

    [Fact]
    public void FiveNodeGraph_ByHand()
    {
        // Pruned (see GraphPruningTests): e dropped; kept edges f←tok 2, l0←f 3, l0←tok 1, l1←f 1.
        var g = GraphTestData.FiveNodes();
        using var stream = new MemoryStream();
        NeuronpediaGraphJson.Write(stream, g, GraphPruning.Prune(g), new NeuronpediaGraphOptions { Slug = "five", Scan = "m" });
        var root = JsonNode.Parse(stream.ToArray())!;
        Assert.Equal(["0_5_0", "E_7_0", "2_11_0", "2_12_0"], root["nodes"]!.AsArray().Select(n => (string)n!["node_id"]!));
        Assert.Equal(20L, (long)root["nodes"]![0]!["feature"]!);        // cantor(0, 5) = 5·6/2 + 5
        Assert.Equal(["E_7_0→0_5_0:2", "0_5_0→2_11_0:3", "E_7_0→2_11_0:1", "0_5_0→2_12_0:1"],
            root["links"]!.AsArray().Select(l => $"{l!["source"]}→{l["target"]}:{(double)l["weight"]!}"));
        Assert.True((bool)root["nodes"]![2]!["is_target_logit"]!);
        Assert.False((bool)root["nodes"]![3]!["is_target_logit"]!);
        Assert.Equal("Output \"<12>\" (p=0.200)", (string)root["nodes"]![3]!["clerp"]!);
    }

    [Fact]
    public void BadSlugsAndAMissingScan_AreRefused()
    {
        var g = GraphTestData.FiveNodes();
        var pruning = GraphPruning.Prune(g);
        Assert.Throws<ArgumentException>(() => NeuronpediaGraphJson.WriteFiles(_folder, g, pruning, new NeuronpediaGraphOptions { Slug = "../x", Scan = "m" }));
        Assert.Throws<ArgumentException>(() => NeuronpediaGraphJson.WriteFiles(_folder, g, pruning, new NeuronpediaGraphOptions { Slug = "", Scan = "m" }));
        var e = Assert.Throws<ArgumentException>(() => NeuronpediaGraphJson.WriteFiles(_folder, g, pruning, new NeuronpediaGraphOptions { Slug = "x" }));
        Assert.Contains("no scan", e.Message);
        Assert.Empty(Directory.GetFileSystemEntries(_folder));
    }

    [Fact]
    public void AMalformedIndex_IsNamed()
    {
        File.WriteAllText(Path.Combine(_folder, NeuronpediaGraphJson.IndexFileName), "[1, 2]");
        var g = GraphTestData.FiveNodes();
        var e = Assert.Throws<InputError>(() => NeuronpediaGraphJson.WriteFiles(_folder, g, GraphPruning.Prune(g), new NeuronpediaGraphOptions { Slug = "x", Scan = "m" }));
        Assert.Contains("graph-metadata.json", e.Message);
    }

    [Fact]
    public void Error_ids_that_would_equal_a_feature_id_take_the_later_form()
    {
        // Keep every node: layer-0 feature 0 at position 1 is then written beside the error node of layer 0 at position 1,
        // and circuit-tracer's ids for both would be "0_0_1".
        var g = GraphTestData.Fixture;
        var pruning = GraphPruning.Prune(g, nodeThreshold: 1.0, edgeThreshold: 1.0);
        Assert.True(NeuronpediaGraphJson.ErrorIdsCollide(g, pruning.KeptNodes()));
        using var stream = new MemoryStream();
        NeuronpediaGraphJson.Write(stream, g, pruning, new NeuronpediaGraphOptions { Slug = Slug, Scan = "test" });
        var ids = JsonNode.Parse(stream.ToArray())!["nodes"]!.AsArray().Select(n => (string)n!["node_id"]!).ToArray();
        Assert.Equal(ids.Length, ids.Distinct().Count());
        Assert.Contains("0_-1_1", ids);
        Assert.Contains("0_0_1", ids); // the feature keeps its id
    }
}

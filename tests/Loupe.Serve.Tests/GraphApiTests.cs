using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Loupe.Attribution;
using Loupe.Dictionaries.Transcoders;
using Xunit.Abstractions;

namespace Loupe.Serve.Tests;

/// <summary>The Graph and Circuits pages' API against the files and the library: compact graphs, interventions, circuits, and the index's kinds.</summary>
public class GraphApiTests(ITestOutputHelper output)
{
    static async Task<JsonElement> Get(HttpClient client, string path)
    {
        var response = await client.GetAsync(path);
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"{path}: {(int)response.StatusCode} {text}");
        return JsonDocument.Parse(text).RootElement;
    }

    static string IdOf(JsonElement artifacts, string name) =>
        artifacts.EnumerateArray().Single(a => a.GetProperty("name").GetString() == name).GetProperty("id").GetString()!;

    [Fact]
    public async Task The_compact_graph_has_the_files_nodes_and_edges()
    {
        string dir = GraphFixtures.NewFolder("graph");
        File.Copy(GraphFixtures.AttributionGraph, Path.Combine(dir, "fixture.json"));
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { GraphsDir = dir });
        using var client = Servers.Client(host);
        var artifacts = await Get(client, "/api/artifacts");
        Assert.Equal("graph", artifacts.EnumerateArray().Single(a => a.GetProperty("name").GetString() == "fixture.json").GetProperty("kind").GetString());
        var g = await Get(client, $"/api/graph/{IdOf(artifacts, "fixture.json")}");

        using var file = JsonDocument.Parse(File.ReadAllText(GraphFixtures.AttributionGraph));
        var nodes = file.RootElement.GetProperty("nodes").EnumerateArray().ToArray();
        var links = file.RootElement.GetProperty("links").EnumerateArray().ToArray();
        var ids = g.GetProperty("nodes").GetProperty("node_id").EnumerateArray().Select(x => x.GetString()!).ToArray();
        Assert.Equal(nodes.Select(n => n.GetProperty("node_id").GetString()), ids);
        var layer = g.GetProperty("nodes").GetProperty("layer").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var feature = g.GetProperty("nodes").GetProperty("feature").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var activation = g.GetProperty("nodes").GetProperty("activation").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        for (int i = 0; i < nodes.Length; i++)
        {
            var n = nodes[i];
            if (n.GetProperty("feature_type").GetString() != "cross layer transcoder") continue;
            var parts = n.GetProperty("node_id").GetString()!.Split('_');
            Assert.Equal(int.Parse(parts[0]), layer[i]);
            Assert.Equal(int.Parse(parts[1]), feature[i]);
            double expected = n.GetProperty("activation").GetDouble();
            Assert.InRange(activation[i], expected - 1e-6 * Math.Max(1, Math.Abs(expected)), expected + 1e-6 * Math.Max(1, Math.Abs(expected)));
        }
        var source = g.GetProperty("edges").GetProperty("source").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var target = g.GetProperty("edges").GetProperty("target").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var weight = g.GetProperty("edges").GetProperty("weight").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        Assert.Equal(351, links.Length);
        Assert.Equal(links.Length, source.Length);
        for (int e = 0; e < links.Length; e++)
        {
            Assert.Equal(links[e].GetProperty("source").GetString(), ids[source[e]]);
            Assert.Equal(links[e].GetProperty("target").GetString(), ids[target[e]]);
            double w = links[e].GetProperty("weight").GetDouble();
            Assert.InRange(weight[e], w - 1e-6 * Math.Max(1, Math.Abs(w)), w + 1e-6 * Math.Max(1, Math.Abs(w)));
        }
        Assert.Equal(GraphFixtures.AttributionTokens, g.GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(3, g.GetProperty("layers").GetInt32());
    }

    [Fact]
    public async Task Intervention_gives_the_library_top_tokens_and_needs_transcoders()
    {
        var model = Servers.Gpt2;
        await using var host = await Servers.StartAsync(model, new ServeOptions { TranscodersDir = GraphFixtures.Transcoders });
        using var client = Servers.Client(host);
        Assert.True((await Get(client, "/api/graph/capabilities")).GetProperty("interventions").GetBoolean());
        // Ablate layer 0's feature 14 at position 5 (a node of the fixture graph) and scale another up.
        var body = new { tokens = GraphFixtures.AttributionTokens, edits = new object[] { new { layer = 0, position = 5, feature = 14, value = 0f }, new { layer = 1, position = 7, feature = 6, value = 8f, mode = "scale" } }, top_k = 5 };
        var r = await Servers.PostJson(client, "/api/graph/intervene", body);

        var replacement = new ReplacementModel(model, MlpReplacements.Load(GraphFixtures.Transcoders, model.Config.NLayers));
        FeatureIntervention[] edits = [new(0, 5, 14, 0f, InterventionKind.Scale), new(1, 7, 6, 8f, InterventionKind.Scale)];
        var before = replacement.Run(GraphFixtures.AttributionTokens, topK: 5);
        var after = replacement.Run(GraphFixtures.AttributionTokens, edits, topK: 5);
        var shownAfter = r.GetProperty("after").EnumerateArray().ToArray();
        Assert.Equal(after.Top.Select(t => t.Token), shownAfter.Select(t => t.GetProperty("id").GetInt32()));
        Assert.Equal(before.Top.Select(t => t.Token), r.GetProperty("before").EnumerateArray().Select(t => t.GetProperty("id").GetInt32()));
        double p = after.Top[0].Probability;
        Assert.InRange(shownAfter[0].GetProperty("prob").GetDouble(), p - 1e-6, p + 1e-6);
        Assert.NotEqual(before.Top[0].Probability, after.Top[0].Probability);
        output.WriteLine($"top next token after the edits: {after.Top[0].Token} (p {p:F4}; before {before.Top[0].Token}, p {before.Top[0].Probability:F4})");

        // Bad edits are 400s that say why; a server without transcoders says what it needs.
        var bad = await client.PostAsJsonAsync("/api/graph/intervene", new { tokens = GraphFixtures.AttributionTokens, edits = new[] { new { layer = 0, position = 5, feature = 99, value = 0f } } });
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("feature 99", await bad.Content.ReadAsStringAsync());
        await using var plain = await Servers.StartAsync(model);
        using var plainClient = Servers.Client(plain);
        var refused = await plainClient.PostAsJsonAsync("/api/graph/intervene", body);
        Assert.Equal(HttpStatusCode.Conflict, refused.StatusCode);
        Assert.Contains("--transcoders", await refused.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task A_feature_store_gives_the_pinned_features_dashboard()
    {
        var model = Servers.Gpt2;
        string store = GraphFixtures.WriteFeatureStore(model, GraphFixtures.NewFolder("store"));
        await using var host = await Servers.StartAsync(model, new ServeOptions { FeatureStores = [store] });
        using var client = Servers.Client(host);
        var caps = await Get(client, "/api/graph/capabilities");
        Assert.Equal("blocks.0.ln2.hook_normalized", caps.GetProperty("feature_stores")[0].GetProperty("hook").GetString());
        using var s = Loupe.Dictionaries.Features.FeatureStore.Open(store);
        int feature = Enumerable.Range(0, s.DSae).First(f => s.Examples(f, limit: 1).Count > 0);
        var d = await Get(client, $"/api/graph/feature/0/{feature}");
        var expected = s.Examples(feature, limit: 5);
        var shown = d.GetProperty("examples").EnumerateArray().ToArray();
        Assert.Equal(expected.Count, shown.Length);
        double a = expected[0].Activation;
        Assert.InRange(shown[0].GetProperty("activation").GetDouble(), a - 1e-9 * Math.Max(1, Math.Abs(a)), a + 1e-9 * Math.Max(1, Math.Abs(a)));
        Assert.Equal(expected[0].WindowActs.Length, shown[0].GetProperty("tokens").GetArrayLength());
        double density = s.Feature(feature).Density;
        Assert.InRange(d.GetProperty("density").GetDouble(), density - 1e-12, density + 1e-12);
        Assert.Equal(404, (int)(await client.GetAsync("/api/graph/feature/2/0")).StatusCode); // no store for layer 2
        Assert.Equal(404, (int)(await client.GetAsync("/api/graph/feature/0/999")).StatusCode);
    }

    [Fact]
    public async Task Real_patch_and_circuit_files_are_indexed_by_kind_and_served()
    {
        var model = Servers.Gpt2;
        string dir = GraphFixtures.NewFolder("circuits");
        var patch = GraphFixtures.WritePatch(model, Path.Combine(dir, "patch-out"));
        var report = GraphFixtures.WriteCircuit(model, Path.Combine(dir, "circuit-out"));
        // The index classifies by content, not only by name: renamed copies keep their kinds.
        File.Copy(Path.Combine(dir, "patch-out", "patch.json"), Path.Combine(dir, "sweep-a.json"));
        File.Copy(Path.Combine(dir, "circuit-out", "circuit.json"), Path.Combine(dir, "eap-result.json"));
        File.Copy(GraphFixtures.AttributionGraph, Path.Combine(dir, "attr.json"));
        GraphFixtures.WriteSyntheticGraph(Path.Combine(dir, "big.json"), nodes: 20_000, edges: 100_000);
        File.WriteAllText(Path.Combine(dir, "graph-metadata.json"), "{\"graphs\": []}");
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = dir });
        using var client = Servers.Client(host);
        var artifacts = await Get(client, "/api/artifacts");
        var kinds = artifacts.EnumerateArray().ToDictionary(a => a.GetProperty("name").GetString()!.Replace('\\', '/'), a => a.GetProperty("kind").GetString());
        Assert.Equal("patching", kinds["patch-out/patch.json"]);
        Assert.Equal("patching", kinds["sweep-a.json"]);
        Assert.Equal("circuit", kinds["circuit-out/circuit.json"]);
        Assert.Equal("circuit", kinds["eap-result.json"]);
        Assert.Equal("graph", kinds["attr.json"]);
        Assert.Equal("graph", kinds["big.json"]); // its nodes run past the bytes the classifier reads
        Assert.Equal("json", kinds["graph-metadata.json"]);

        var c = await Get(client, $"/api/circuits/{IdOf(artifacts, Path.Combine("circuit-out", "circuit.json"))}");
        Assert.Equal(report.InCircuit.Count(x => x), c.GetProperty("edges_in_graph").GetInt32());
        Assert.Equal(report.Scores.Graph.Edges.Count, c.GetProperty("total_edges").GetInt32());
        var first = c.GetProperty("edges")[0];
        int best = Enumerable.Range(0, report.InCircuit.Length).Where(e => report.InCircuit[e]).MaxBy(e => Math.Abs(report.Scores.Scores[e]));
        Assert.Equal(report.Scores.Graph.Edges[best].Name, first.GetProperty("name").GetString());
        double s = report.Scores.Scores[best];
        Assert.InRange(first.GetProperty("score").GetDouble(), s - 1e-9 * Math.Max(1, Math.Abs(s)), s + 1e-9 * Math.Max(1, Math.Abs(s)));
        var ev = report.Evaluation!.Value;
        double recovered = (ev.Circuit - ev.Corrupted) / (ev.Clean - ev.Corrupted);
        Assert.InRange(c.GetProperty("loupe").GetProperty("evaluation").GetProperty("recovered").GetDouble(), recovered - 1e-9, recovered + 1e-9);
        Assert.Equal(4, c.GetProperty("loupe").GetProperty("faithfulness").GetArrayLength());
        Assert.Contains(c.GetProperty("nodes").EnumerateArray(), n => n.GetProperty("name").GetString() == "a1.h2" && n.GetProperty("layer").GetInt32() == 1 && n.GetProperty("head").GetInt32() == 2);

        var p = await Get(client, $"/api/artifacts/{IdOf(artifacts, Path.Combine("patch-out", "patch.json"))}");
        Assert.InRange(p.GetProperty("clean_value").GetDouble(), patch.CleanValue - 1e-9, patch.CleanValue + 1e-9);

        var clock = Stopwatch.StartNew();
        var big = await Get(client, $"/api/graph/{IdOf(artifacts, "big.json")}");
        output.WriteLine($"compact 20,000-node / 100,000-edge graph served in {clock.ElapsedMilliseconds} ms");
        Assert.Equal(20_000, big.GetProperty("nodes").GetProperty("kind").GetArrayLength());
        Assert.Equal(100_000, big.GetProperty("edges").GetProperty("weight").GetArrayLength());
        Assert.Equal(404, (int)(await client.GetAsync("/api/circuits/0123456789abcdef")).StatusCode);
    }
}

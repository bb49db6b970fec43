using System.Text.Json;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Explain;
using Loupe.Explain.Tests;
using Loupe.Mcp;
using Loupe.Models;
using Loupe.Models.Loading;
using Loupe.Testing;

namespace Loupe.Mcp.Tests;

/// <summary>
/// <c>explain_feature</c> through the SDK client: a served feature store's feature explained by the scripted
/// OpenAI-compatible server configured when the server starts, equal to the library's <c>loupe explain</c> run,
/// stored (feature_lookup shows it), cached (asking again sends nothing), and refused without an explainer.
/// </summary>
public sealed class McpExplainTests : IAsyncLifetime
{
    const string Hook = "blocks.1.hook_resid_post";
    const int DSae = 12;
    readonly string _root = Directory.CreateTempSubdirectory("loupe-mcp-explain").FullName;
    readonly CancellationTokenSource _stop = new();
    readonly List<Task> _servers = [];
    readonly List<ModelContextProtocol.Client.McpClient> _clients = [];
    HookedTransformer _model = null!;

    string SaeDir => Path.Combine(_root, "sae-l1");
    string Store => Path.Combine(SaeDir, FeatureStoreSchema.DefaultFileName);

    public Task InitializeAsync()
    {
        _model = ModelLoader.LoadFolder(McpFixture.ModelDir);
        var dict = new SparseDictionary(SaeShape.Sae(_model.Config.DModel, DSae, applyBDecToInput: false), new ReluActivation());
        dict.Initialize(seed: 5, decoderNorm: 1f);
        for (int f = 0; f < DSae; f++) dict.P.BEnc[f] = -0.05f * f;
        SaeLensFormat.Save(SaeDir, dict, new SaeLensConfig { HookName = Hook });
        var rng = new Random(2);
        var docs = Enumerable.Range(0, 40).Select(_ => Enumerable.Range(0, rng.Next(4, 18)).Select(_ => rng.Next(3, 512)).ToArray()).ToArray();
        var contexts = ContextBuilder.Build(docs, new ContextOptions(16, BosTokenId: 0, SeparatorTokenId: 1), "random ids");
        var (loaded, config) = DictionaryFile.Load(SaeDir);
        FeatureDashboardBuilder.Build(_model, loaded, config, contexts, Store, new FeatureBuildOptions { TopK = 6, Quantiles = 2, QuantileSamples = 3, Window = 4 }, SaeDir);
        return Task.CompletedTask;
    }

    async Task<ModelContextProtocol.Client.McpClient> Connect(McpExplainer? explainer)
    {
        var tools = LoupeMcpServer.Tools(_model, McpArtifacts.Index([SaeDir], null, []), explainer);
        var client = await McpFixture.Connect(tools, _stop.Token, _servers.Add);
        _clients.Add(client);
        return client;
    }

    static McpExplainer Explainer(ScriptedServer server, string root) =>
        new(new EndpointOptions { Endpoint = server.BaseUrl, Model = "scripted", TopLogprobs = 2, Concurrency = 2 }, Path.Combine(root, "prices.json"), BatchSize: 3);

    [Fact]
    public async Task Explain_feature_equals_the_library_run_is_stored_and_asks_nothing_twice()
    {
        int feature;
        using (var db = FeatureStore.Open(Store)) feature = db.Features("feature").First(s => s.NActive > 0).Feature;
        // The library's run on a copy of the store, against its own scripted server: what the tool must give.
        string reference = Path.Combine(_root, "reference.db");
        File.Copy(Store, reference);
        var options = new ExplainOptions { Examples = 5, ScoreExamples = 4, BatchSize = 3, Seed = 1 };
        FeatureOutcome expected;
        using (var libraryServer = new ScriptedServer())
        using (var libraryCache = new RequestCache(Path.Combine(_root, "reference-cache.db")))
        using (var libraryClient = new ChatClient(Explainer(libraryServer, _root).Endpoint, libraryCache))
            expected = Assert.Single((await ExplainRunner.RunAsync(reference, [feature], libraryClient, PriceTable.Load(Path.Combine(_root, "prices.json")), options)).Outcomes);

        using var server = new ScriptedServer();
        var client = await Connect(Explainer(server, _root));
        var tool = Assert.Single(await client.ListToolsAsync(), t => t.Name == "explain_feature");
        Assert.NotNull(tool.ProtocolTool.OutputSchema);
        var args = new Dictionary<string, object?> { ["store"] = "sae-l1", ["feature"] = feature, ["examples"] = 5, ["scoreExamples"] = 4, ["seed"] = 1 };
        var reply = await Mcp.Call(client, "explain_feature", args);
        Assert.Equal(expected.Explanation, reply.GetProperty("explanation").GetString());
        Assert.StartsWith("the token", expected.Explanation);
        Assert.Equal("scripted", reply.GetProperty("explainerModel").GetString());
        Assert.False(reply.GetProperty("alreadyStored").GetBoolean());
        foreach (var (scorer, metrics) in expected.Scores)
            foreach (var (metric, value) in metrics.Values().Where(v => double.IsFinite(v.Value)))
                Mcp.Close(value, reply.GetProperty("scores").GetProperty(scorer).GetProperty(metric).GetDouble(), 1e-9);
        int sent = server.Log.Count;
        Assert.Equal(expected.Usage.Requests, reply.GetProperty("requests").GetInt32());
        Assert.Equal(sent, reply.GetProperty("sentRequests").GetInt32());
        Assert.Equal(server.PromptTokens, reply.GetProperty("promptTokens").GetInt64());
        // The prompts: one explainer request with marked tokens and at most `examples` examples, the rest scorer batches.
        var explainerRequest = Assert.Single(server.Log, r => r.System == Prompts.ExplainerSystem);
        Assert.Contains("<<", explainerRequest.User);
        Assert.InRange(explainerRequest.User.Split('\n').Count(l => l.StartsWith("Example ", StringComparison.Ordinal)), 1, 5);

        // Stored: feature_lookup shows it; asking again (even from a new server over the same store) sends nothing.
        var lookup = await Mcp.Call(client, "feature_lookup", new() { ["store"] = "sae-l1", ["feature"] = feature });
        Assert.Contains(lookup.GetProperty("explanations").EnumerateArray(), e => e.GetProperty("text").GetString() == expected.Explanation);
        var again = await Mcp.Call(await Connect(Explainer(server, _root)), "explain_feature", args);
        Assert.True(again.GetProperty("alreadyStored").GetBoolean());
        Assert.Equal(expected.Explanation, again.GetProperty("explanation").GetString());
        Assert.Equal(sent, server.Log.Count);
        var bodies = server.Log.Select(r => r.Body).ToList();
        Assert.Equal(bodies.Count, bodies.Distinct().Count());

        // A dead feature, an unknown store and a bad count are tool errors; the server keeps serving.
        int? dead;
        using (var db = FeatureStore.Open(Store)) dead = db.Features("feature").FirstOrDefault(s => s.NActive == 0)?.Feature;
        if (dead is int d) Assert.Contains("never activated", await Mcp.CallFails(client, "explain_feature", new() { ["store"] = "sae-l1", ["feature"] = d }));
        Assert.Contains("sae-nope", await Mcp.CallFails(client, "explain_feature", new() { ["store"] = "sae-nope", ["feature"] = feature }));
        Assert.Contains("examples", await Mcp.CallFails(client, "explain_feature", new() { ["store"] = "sae-l1", ["feature"] = feature, ["examples"] = 0 }));
    }

    [Fact]
    public async Task The_embedding_scorer_asks_the_endpoint_nothing()
    {
        int feature;
        using (var db = FeatureStore.Open(Store)) feature = db.Features("feature").Where(s => s.NActive > 0).Skip(1).First().Feature;
        using var server = new ScriptedServer();
        var client = await Connect(Explainer(server, _root));
        var reply = await Mcp.Call(client, "explain_feature", new() { ["store"] = "sae-l1", ["feature"] = feature, ["examples"] = 4, ["scoreExamples"] = 3, ["scorers"] = new[] { "embedding" } });
        var embedding = reply.GetProperty("scores").GetProperty("embedding");
        Assert.InRange(embedding.GetProperty("auroc").GetDouble(), 0, 1);
        Assert.True(embedding.GetProperty("n").GetDouble() >= 3);
        // the explainer's request only
        Assert.Equal(1, reply.GetProperty("sentRequests").GetInt32());
        Assert.Single(server.Log);
        Assert.Contains("simulation and/or embedding", (await Mcp.CallFails(client, "explain_feature", new() { ["store"] = "sae-l1", ["feature"] = feature, ["scorers"] = new[] { "simulate" } })));

        // against similar negatives: scored again (the explanation from the cache), and the scores say so
        reply = await Mcp.Call(client, "explain_feature", new() { ["store"] = "sae-l1", ["feature"] = feature, ["examples"] = 4, ["scoreExamples"] = 3, ["scorers"] = new[] { "embedding" }, ["negatives"] = "similar" });
        Assert.Equal(1.0, reply.GetProperty("scores").GetProperty("embedding").GetProperty("similar_negatives").GetDouble());
        Assert.Equal(0, reply.GetProperty("sentRequests").GetInt32());
        Assert.Contains("negatives", await Mcp.CallFails(client, "explain_feature", new() { ["store"] = "sae-l1", ["feature"] = feature, ["negatives"] = "hard" }));
    }

    [Fact]
    public async Task A_launched_loupe_mcp_asks_the_explainer_it_was_started_with_and_its_key()
    {
        using var server = new ScriptedServer();
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        var transport = new ModelContextProtocol.Client.StdioClientTransport(new ModelContextProtocol.Client.StdioClientTransportOptions
        {
            Name = "loupe",
            Command = dotnet,
            Arguments = [Path.Combine(AppContext.BaseDirectory, "loupe.dll"), "mcp", "--model", McpFixture.ModelDir, "--sae", SaeDir,
                "--explainer-url", server.BaseUrl, "--explainer-model", "scripted", "--explainer-key-env", "LOUPE_MCP_TEST_KEY"],
            EnvironmentVariables = new Dictionary<string, string?> { ["LOUPE_MCP_TEST_KEY"] = "sk-test" },
        });
        await using var client = await ModelContextProtocol.Client.McpClient.CreateAsync(transport);
        int feature;
        using (var db = FeatureStore.Open(Store)) feature = db.Features("feature").First(s => s.NActive > 0).Feature;
        var reply = await Mcp.Call(client, "explain_feature", new() { ["store"] = "sae-l1", ["feature"] = feature, ["examples"] = 4, ["scoreExamples"] = 2 });
        Assert.StartsWith("the token", reply.GetProperty("explanation").GetString());
        Assert.NotEmpty(server.Log);
        Assert.All(server.Log, r => Assert.Equal("Bearer sk-test", r.Authorization));
        using var stored = FeatureStore.Open(Store);
        Assert.Contains(stored.Explanations(feature), e => e.ExplainerModel == "scripted");
    }

    [Fact]
    public async Task Explain_feature_refuses_clearly_without_an_explainer()
    {
        var client = await Connect(explainer: null);
        string error = await Mcp.CallFails(client, "explain_feature", new() { ["store"] = "sae-l1", ["feature"] = 0 });
        Assert.Contains("no explainer endpoint", error);
        Assert.Contains("--explainer-url", error);
    }

    public async Task DisposeAsync()
    {
        foreach (var c in _clients) await c.DisposeAsync();
        await _stop.CancelAsync();
        foreach (var s in _servers) await s.WaitAsync(TimeSpan.FromSeconds(10)).ContinueWith(_ => { });
        _model.Dispose();
        Directory.Delete(_root, recursive: true);
    }
}

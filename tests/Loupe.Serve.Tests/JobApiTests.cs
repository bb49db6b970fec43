using System.Net;
using System.Text.Json;
using Loupe.Causal.Patching;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Metrics;
using Loupe.Testing;

namespace Loupe.Serve.Tests;

/// <summary>The patching-sweep and feature-store jobs: progress streamed, results equal to the library's, registered, cancellable.</summary>
public class JobApiTests
{
    internal const string Clean = "Once upon a time, there was a little girl named Lily. One day,";
    internal const string Corrupt = "Once upon a time, there was a little girl named Tim. One day,";

    internal static async Task<string> Start(HttpClient client, string kind, object body)
    {
        var job = await Servers.PostJson(client, $"/api/jobs/{kind}", body);
        return job.GetProperty("id").GetString()!;
    }

    static Task<List<(string Type, JsonElement Data)>> Events(HttpClient client, string id, Func<string, bool>? stop = null) =>
        SteeringApiTests.ReadEvents(client, $"/api/jobs/{id}/events", stop);

    /// <summary>
    /// Waits for the job's first event of <paramref name="type"/> on a client of its own, then drops that client: disposing a
    /// response mid-stream would make HttpClient drain the rest (wait for the job to end) to reuse the connection.
    /// </summary>
    static async Task FirstEvent(ServeHost host, string id, string type)
    {
        var client = Servers.Client(host);
        var response = await client.GetAsync($"/api/jobs/{id}/events", HttpCompletionOption.ResponseHeadersRead);
        var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        while (await reader.ReadLineAsync() is { } line)
            if (line == $"event: {type}") break;
        client.Dispose();
    }

    static string Folder(string name) => Directory.CreateTempSubdirectory($"loupe-serve-{name}-").FullName;

    [RequiresSharedFact("models/stories260K")]
    public async Task A_patching_sweep_job_streams_each_pass_and_writes_the_library_sweep_as_an_artifact()
    {
        var model = Servers.Stories;
        string graphs = Folder("patch-job");
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs });
        using var client = Servers.Client(host);
        string id = await Start(client, "patching-sweep", new { clean = Clean, corrupt = Corrupt, answer = "Lily", wrong = "Tim", target = "resid_pre", max_rows = 4, name = "lily-tim" });
        var events = await Events(client, id);
        var progress = events.Where(e => e.Type == "progress").Select(e => e.Data.GetProperty("done").GetInt32()).ToArray();
        Assert.Equal("result", events[^1].Type);

        int[] clean = model.Tokenizer!.Encode(Clean), corrupt = model.Tokenizer.Encode(Corrupt);
        int lily = model.Tokenizer.Encode("Lily", addSpecialTokens: false).Single(), tim = model.Tokenizer.Encode("Tim", addSpecialTokens: false).Single();
        var expected = ActivationPatching.Sweep(model, TokenBatch.Single(clean), TokenBatch.Single(corrupt), new LogitDiff(lily, tim, -1), PatchTarget.ResidPre,
            new PatchOptions { MaxRows = 4, LastPositionLogitsOnly = true });
        int cells = model.Config.NLayers * clean.Length;
        Assert.Equal(cells, expected.Cells.Length);
        // One progress event per forward pass of 4 cells, counting up to every cell.
        Assert.Equal(Enumerable.Range(1, (cells + 3) / 4).Select(k => Math.Min(4 * k, cells)), progress);

        var result = events[^1].Data.GetProperty("data");
        string artifact = result.GetProperty("artifact_id").GetString()!;
        Assert.Equal(Path.Combine("patching", "lily-tim", "patch.json"), result.GetProperty("name").GetString());
        var listed = JsonDocument.Parse(await client.GetStringAsync("/api/artifacts")).RootElement.EnumerateArray().Single(a => a.GetProperty("id").GetString() == artifact);
        Assert.Equal("patching", listed.GetProperty("kind").GetString());
        var file = JsonDocument.Parse(await client.GetStringAsync($"/api/artifacts/{artifact}")).RootElement;
        Assert.Equal(expected.CleanValue, file.GetProperty("clean_value").GetDouble(), 9);
        Assert.Equal(expected.CorruptValue, file.GetProperty("corrupt_value").GetDouble(), 9);
        var grid = expected.Grid(expected.Values);
        var shown = file.GetProperty("values");
        for (int r = 0; r < grid.Length; r++)
            for (int c = 0; c < grid[r].Length; c++)
            {
                double want = grid[r][c], got = shown[r][c].GetDouble();
                Assert.InRange(got, want - 1e-5 - 1e-5 * Math.Abs(want), want + 1e-5 + 1e-5 * Math.Abs(want));
            }

        // Bad requests are refused before a job starts.
        foreach (var bad in new object[]
        {
            new { clean = Clean, corrupt = "Once upon a time", answer = "Lily" },
            new { clean = Clean, corrupt = Corrupt, answer = "Lily Tim" },
            new { clean = Clean, corrupt = Corrupt, answer = "Lily", target = "nowhere" },
            new { clean = Clean, corrupt = Corrupt, answer = "Lily", name = "../../etc" },
        })
            Assert.Equal(HttpStatusCode.BadRequest, (await client.PostAsync("/api/jobs/patching-sweep", JsonContent(bad))).StatusCode);
    }

    static StringContent JsonContent(object body) => new(JsonSerializer.Serialize(body), System.Text.Encoding.UTF8, "application/json");

    [RequiresSharedFact("models/stories260K")]
    public async Task A_cancelled_patching_sweep_writes_nothing()
    {
        var model = Servers.Stories;
        string graphs = Folder("patch-cancel");
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs });
        using var client = Servers.Client(host);
        // Head × position over a longer prompt, one cell per pass: 2,240 passes, cancelled after the first.
        string longClean = string.Concat(Enumerable.Repeat(Clean + " ", 3)), longCorrupt = string.Concat(Enumerable.Repeat(Corrupt + " ", 3));
        string id = await Start(client, "patching-sweep", new { clean = longClean, corrupt = longCorrupt, answer = "Lily", wrong = "Tim", target = "head_out_by_pos", max_rows = 1 });
        await FirstEvent(host, id, "progress");
        Assert.Equal(HttpStatusCode.Accepted, (await client.DeleteAsync($"/api/jobs/{id}")).StatusCode);
        var events = await Events(client, id);
        Assert.Equal("cancelled", events[^1].Type);
        Assert.False(Directory.Exists(Path.Combine(graphs, "patching")) && Directory.EnumerateFiles(Path.Combine(graphs, "patching"), "*", SearchOption.AllDirectories).Any());
        // Without --graphs there is nowhere to write: 409.
        await using var bare = await Servers.StartAsync(model);
        using var bareClient = Servers.Client(bare);
        Assert.Equal(HttpStatusCode.Conflict, (await bareClient.PostAsync("/api/jobs/patching-sweep", JsonContent(new { clean = Clean, corrupt = Corrupt, answer = "Lily" }))).StatusCode);
    }

    internal static string[] Texts(HookedTransformer model, int count) =>
        [.. new ModelSampledSource(model, count, 40, seed: 3).Documents()];

    [RequiresSharedFact("models/stories260K")]
    public async Task A_feature_store_job_builds_the_library_store_and_serves_it()
    {
        var model = Servers.Stories;
        string graphs = Folder("store-job");
        string[] texts = Texts(model, 24);
        File.WriteAllText(Path.Combine(graphs, "corpus.txt"), string.Join("\n\n", texts));
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs, SaePath = FeatureStores.SaeFolder });
        using var client = Servers.Client(host);
        Assert.Empty(JsonDocument.Parse(await client.GetStringAsync("/api/features/stores")).RootElement.EnumerateArray());
        string corpus = JsonDocument.Parse(await client.GetStringAsync("/api/artifacts")).RootElement.EnumerateArray()
            .Single(a => a.GetProperty("name").GetString() == "corpus.txt" && a.GetProperty("kind").GetString() == "text").GetProperty("id").GetString()!;

        string id = await Start(client, "feature-store", new { artifact = corpus, context_size = 32, max_contexts = 24, top = 8, name = "served-corpus" });
        var events = await Events(client, id);
        Assert.Equal("result", events[^1].Type);
        Assert.Contains(events, e => e.Type == "progress" && e.Data.GetProperty("message").GetString()!.StartsWith("pass 1/2", StringComparison.Ordinal));
        var result = events[^1].Data.GetProperty("data");
        string storeId = result.GetProperty("store_id").GetString()!;
        string file = Path.Combine(graphs, "stores", "served-corpus.features.db");
        Assert.True(File.Exists(file));

        // The library's build over the same documents and settings.
        var (dict, config) = DictionaryFile.Load(FeatureStores.SaeFolder);
        var contexts = ContextBuilder.ForModel(model, new InMemoryTextSource(texts, "same"), 32, 0, 24);
        string reference = Path.Combine(Folder("store-ref"), "features.db");
        FeatureDashboardBuilder.Build(model, dict, config, contexts, reference, new FeatureBuildOptions { TopK = 8 });
        using var want = FeatureStore.Open(reference);
        Assert.Equal(want.Tokens, result.GetProperty("tokens").GetInt64());
        Assert.Equal(contexts.Count, result.GetProperty("contexts").GetInt32());

        // Served: the Features API lists it and its dashboards are the library's numbers.
        var stores = JsonDocument.Parse(await client.GetStringAsync("/api/features/stores")).RootElement;
        Assert.Equal(storeId, Assert.Single(stores.EnumerateArray()).GetProperty("id").GetString());
        foreach (var row in want.Features("density", 4))
        {
            var dash = JsonDocument.Parse(await client.GetStringAsync($"/api/features/{storeId}/{row.Feature}")).RootElement;
            Assert.Equal(row.NActive, dash.GetProperty("n_active").GetInt64());
            Assert.InRange(dash.GetProperty("max_act").GetDouble(), row.MaxAct - 1e-6 - 1e-6 * row.MaxAct, row.MaxAct + 1e-6 + 1e-6 * row.MaxAct);
        }

        // The same name again is refused; so are both or neither sources.
        Assert.Equal(HttpStatusCode.BadRequest, (await client.PostAsync("/api/jobs/feature-store", JsonContent(new { texts, name = "served-corpus" }))).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await client.PostAsync("/api/jobs/feature-store", JsonContent(new { name = "x" }))).StatusCode);
    }

    [RequiresSharedFact("models/stories260K")]
    public async Task A_cancelled_feature_store_build_leaves_no_store()
    {
        var model = Servers.Stories;
        string graphs = Folder("store-cancel");
        // A served corpus of 4,096 contexts × 128 tokens (two passes over half a million tokens): cancelled at its first progress.
        File.WriteAllText(Path.Combine(graphs, "big.txt"), string.Join("\n\n", Enumerable.Repeat(string.Join(" ", Texts(model, 8)), 3000)));
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs, SaePath = FeatureStores.SaeFolder });
        using var client = Servers.Client(host);
        string corpus = JsonDocument.Parse(await client.GetStringAsync("/api/artifacts")).RootElement.EnumerateArray().Single().GetProperty("id").GetString()!;
        string id = await Start(client, "feature-store", new { artifact = corpus, context_size = 128, max_contexts = 4096, name = "never" });
        await FirstEvent(host, id, "progress");
        await client.DeleteAsync($"/api/jobs/{id}");
        var events = await Events(client, id);
        Assert.Equal("cancelled", events[^1].Type);
        Assert.Empty(JsonDocument.Parse(await client.GetStringAsync("/api/features/stores")).RootElement.EnumerateArray());
        Assert.True(!Directory.Exists(Path.Combine(graphs, "stores")) || !Directory.EnumerateFiles(Path.Combine(graphs, "stores")).Any(),
            "files left: " + string.Join(", ", Directory.Exists(Path.Combine(graphs, "stores")) ? Directory.EnumerateFiles(Path.Combine(graphs, "stores")) : []));
        // Without --sae there is nothing to build: 409.
        await using var bare = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs });
        using var bareClient = Servers.Client(bare);
        Assert.Equal(HttpStatusCode.Conflict, (await bareClient.PostAsync("/api/jobs/feature-store", JsonContent(new { texts = new[] { "Once upon a time" } }))).StatusCode);
    }
}

using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Loupe.Dictionaries.Features;
using Loupe.Testing;
using Xunit.Abstractions;

namespace Loupe.Serve.Tests;

public class FeatureApiTests(ITestOutputHelper output)
{
    static async Task<JsonElement> Get(HttpClient client, string path)
    {
        var response = await client.GetAsync(path);
        string text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"{path}: {(int)response.StatusCode} {text}");
        return JsonDocument.Parse(text).RootElement;
    }

    static void Close(double expected, double actual, double tolerance = 1e-5) =>
        Assert.InRange(actual, expected - tolerance - tolerance * Math.Abs(expected), expected + tolerance + tolerance * Math.Abs(expected));

    [RequiresSharedFact("models/stories260K")]
    public async Task Real_store_dashboard_list_and_searches_match_the_library()
    {
        var model = Servers.Stories;
        await using var host = await Servers.StartAsync(model, new ServeOptions { FeatureStores = [FeatureStores.SaeFolder] });
        using var client = Servers.Client(host);
        using var store = FeatureStore.Open(FeatureStores.Real);

        var stores = await Get(client, "/api/features/stores");
        var view = Assert.Single(stores.EnumerateArray());
        Assert.True(view.GetProperty("has_sae").GetBoolean());
        Assert.Equal(FeatureStores.RealDSae, view.GetProperty("d_sae").GetInt32());
        string id = view.GetProperty("id").GetString()!;

        // The list is the store's order.
        var list = await Get(client, $"/api/features/{id}?order=density&limit=10");
        Assert.Equal(store.Features("density", 10).Select(r => r.Feature), list.GetProperty("rows").EnumerateArray().Select(r => r.GetProperty("feature").GetInt32()));
        int f = store.Features("density", 1)[0].Feature;

        // The dashboard: top examples are FeatureStore.Examples, and the JSON is `loupe features top --json`'s.
        var dashboard = await Get(client, $"/api/features/{id}/{f}?top=20");
        var expected = store.Examples(f, FeatureStoreSchema.Top, 20);
        var shown = dashboard.GetProperty("top").EnumerateArray().ToList();
        Assert.Equal(expected.Count, shown.Count);
        Assert.True(expected.Count > 0);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].ContextId, shown[i].GetProperty("context_id").GetInt32());
            Assert.Equal(expected[i].Position, shown[i].GetProperty("position").GetInt32());
            Assert.Equal(expected[i].WindowTokens, shown[i].GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
            Close(expected[i].Activation, shown[i].GetProperty("activation").GetDouble(), 1e-9);
        }
        Assert.Equal(FeatureDashboardJson.Build(store, f, 20).ToJsonString(), dashboard.GetRawText());
        Assert.Equal(FeatureStores.ExplainedText, dashboard.GetProperty("explanations")[0].GetProperty("text").GetString());
        Close(0.8, dashboard.GetProperty("explanations")[0].GetProperty("scores").GetProperty("detection").GetProperty("accuracy").GetDouble());

        // "Which features fire here?" on a top example's context up to its token shows the stored activation there.
        var top = expected[0];
        int[] prefix = top.ContextTokens[..(top.Position + 1)];
        var search = await Servers.PostJson(client, $"/api/features/{id}/search-text", new { tokens = prefix, per_token = 50 });
        var last = search.GetProperty("features")[prefix.Length - 1].EnumerateArray().ToList();
        var hit = Assert.Single(last, a => a.GetProperty("feature").GetInt32() == f);
        Close(top.Activation, hit.GetProperty("activation").GetDouble(), 1e-3);

        // By token: the feature's top token finds it.
        var byToken = await Get(client, $"/api/features/{id}/search-token?token=id:{top.ContextTokens[top.Position]}");
        Assert.Contains(f, byToken.GetProperty("features").EnumerateArray().Select(h => h.GetProperty("feature").GetInt32()));

        // Bad requests: unknown store, feature out of range.
        Assert.Equal(HttpStatusCode.NotFound, (await client.GetAsync($"/api/features/0000000000000000/{f}")).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await client.GetAsync($"/api/features/{id}/{FeatureStores.RealDSae}")).StatusCode);
    }

    [Fact]
    public async Task A_65536_feature_store_answers_dashboards_and_pages_quickly()
    {
        var clock = Stopwatch.StartNew();
        string path = FeatureStores.Big;
        output.WriteLine($"synthetic store of {FeatureStores.BigDSae:N0} features: {new FileInfo(path).Length / 1e6:F1} MB, made in {clock.Elapsed.TotalSeconds:F1} s");
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { FeatureStores = [path] });
        using var client = Servers.Client(host);
        string id = (await Get(client, "/api/features/stores"))[0].GetProperty("id").GetString()!;
        using var store = FeatureStore.Open(path);

        await Get(client, $"/api/features/{id}/0"); // warm up
        var times = new List<double>();
        foreach (int f in new[] { 65_535, 12_345, 40_000, 7 })
        {
            clock.Restart();
            var d = await Get(client, $"/api/features/{id}/{f}");
            times.Add(clock.Elapsed.TotalMilliseconds);
            Assert.Equal(store.Examples(f, FeatureStoreSchema.Top).Select(e => e.Activation), d.GetProperty("top").EnumerateArray().Select(e => e.GetProperty("activation").GetDouble()));
        }
        clock.Restart();
        var page = await Get(client, $"/api/features/{id}?order=max_act&offset=65500&limit=100");
        double pageMs = clock.Elapsed.TotalMilliseconds;
        Assert.Equal(36, page.GetProperty("rows").GetArrayLength());
        Assert.Equal(store.Features("max_act", 36, 65500).Select(r => r.Feature), page.GetProperty("rows").EnumerateArray().Select(r => r.GetProperty("feature").GetInt32()));
        output.WriteLine($"dashboard API: {string.Join(", ", times.Select(t => $"{t:F1}"))} ms; last page by max_act: {pageMs:F1} ms");
        Assert.All(times, t => Assert.True(t < 1000, $"{t:F0} ms"));
        // No SAE is recorded: text search says so.
        var response = await client.PostAsJsonAsync($"/api/features/{id}/search-text", new { tokens = new[] { 1, 2 } });
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Contains("--sae", await response.Content.ReadAsStringAsync());
    }
}

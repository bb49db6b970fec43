using System.Net;
using System.Text.Json;
using Loupe.Attribution;
using Loupe.Dictionaries.Transcoders;
using Loupe.Testing;
using Microsoft.Playwright;

namespace Loupe.Serve.Tests;

/// <summary>
/// The graph job: a prompt traced by the server (as `loupe attribute`) through transcoders trained in the test; the graph
/// it writes is the library's, and the Graph page's "Trace a prompt" opens it.
/// </summary>
public class GraphJobTests
{
    const string Prompt = "Once upon a time, there was a little girl named Lily. She";
    static readonly Lazy<string> s_transcoders = new(() =>
        StoriesGraphBrowserTests.TrainTranscoders(Servers.Stories, Path.Combine(Directory.CreateTempSubdirectory("loupe-serve-graph-job-").FullName, "transcoders")));

    static StringContent Json(object body) => new(JsonSerializer.Serialize(body), System.Text.Encoding.UTF8, "application/json");

    [RequiresSharedFact("models/stories260K")]
    public async Task A_graph_job_writes_the_library_graph_into_the_served_folder()
    {
        var model = Servers.Stories;
        string graphs = Directory.CreateTempSubdirectory("loupe-serve-graph-job-out-").FullName;
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs, TranscodersDir = s_transcoders.Value });
        using var client = Servers.Client(host);
        Assert.True(JsonDocument.Parse(await client.GetStringAsync("/api/jobs/kinds")).RootElement.GetProperty("graph").GetProperty("available").GetBoolean());

        string id = await JobApiTests.Start(client, "graph", new { prompt = Prompt, max_feature_nodes = 4096, name = "traced" });
        var events = await SteeringApiTests.ReadEvents(client, $"/api/jobs/{id}/events");
        Assert.Equal("result", events[^1].Type);
        Assert.Contains(events, e => e.Type == "progress" && e.Data.GetProperty("message").GetString()!.Contains("feature rows", StringComparison.Ordinal));
        var result = events[^1].Data.GetProperty("data");

        // The library's graph of the same prompt and settings.
        string reference = Directory.CreateTempSubdirectory("loupe-serve-graph-job-ref-").FullName;
        var want = AttributionExperiment.Run(model, MlpReplacements.Load(s_transcoders.Value, model.Config.NLayers), model.Tokenizer!.Encode(Prompt), Prompt,
            new AttributionSettings { MaxFeatureNodes = 4096 }, 0.8, 0.98, reference, "traced");
        Assert.Equal(want.Stats.ActiveFeatures, result.GetProperty("active_features").GetInt32());
        Assert.Equal(want.Pruning.KeptNodes().Length, result.GetProperty("kept_nodes").GetInt32());
        Assert.Equal(want.Scores.Replacement, result.GetProperty("replacement_score").GetDouble(), 1e-9);
        Assert.Equal(want.Scores.Completeness, result.GetProperty("completeness_score").GetDouble(), 1e-9);
        var served = JsonDocument.Parse(File.ReadAllText(Path.Combine(graphs, "graphs", "traced.json"))).RootElement;
        var library = JsonDocument.Parse(File.ReadAllText(want.GraphJson)).RootElement;
        Assert.Equal(library.GetProperty("nodes").GetArrayLength(), served.GetProperty("nodes").GetArrayLength());
        Assert.Equal(library.GetProperty("links").GetArrayLength(), served.GetProperty("links").GetArrayLength());
        // The Graph API serves it by the id the job named.
        string artifact = result.GetProperty("artifact_id").GetString()!;
        var compact = JsonDocument.Parse(await client.GetStringAsync($"/api/graph/{artifact}")).RootElement;
        Assert.Equal(JsonValueKind.Object, compact.ValueKind);

        // The same name again, and a one-token prompt, are refused; without --transcoders there is nothing to trace through.
        Assert.Equal(HttpStatusCode.BadRequest, (await client.PostAsync("/api/jobs/graph", Json(new { prompt = Prompt, name = "traced" }))).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await client.PostAsync("/api/jobs/graph", Json(new { tokens = new[] { 1 } }))).StatusCode);
        // targets: each one token; a logit difference of two
        var refused = await client.PostAsync("/api/jobs/graph", Json(new { prompt = Prompt, targets = new[] { "a whole phrase" } }));
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains("targets", await refused.Content.ReadAsStringAsync());
        refused = await client.PostAsync("/api/jobs/graph", Json(new { prompt = Prompt, targets = new[] { "#99999" } }));
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains("targets: #99999 is outside", await refused.Content.ReadAsStringAsync());
        refused = await client.PostAsync("/api/jobs/graph", Json(new { prompt = Prompt, logit_diff = new[] { "was" } }));
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains("logit_diff", await refused.Content.ReadAsStringAsync());
        await using var bare = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs });
        using var bareClient = Servers.Client(bare);
        Assert.Equal(HttpStatusCode.Conflict, (await bareClient.PostAsync("/api/jobs/graph", Json(new { prompt = Prompt }))).StatusCode);
    }

    [RequiresBrowserFact]
    public async Task Graph_page_traces_a_prompt_and_opens_the_new_graph()
    {
        var model = Servers.Stories;
        string graphs = Directory.CreateTempSubdirectory("loupe-serve-graph-page-").FullName;
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs, TranscodersDir = s_transcoders.Value });
        var (playwright, browser, page, errors) = await Browser.OpenAsync();
        using var _ = playwright;
        await using var __ = browser;

        await page.GotoAsync(new Uri(host.Url!, "/graph").ToString());
        await page.GetByTestId("trace-details").Locator("summary").ClickAsync();
        await page.GetByTestId("trace-prompt").FillAsync(Prompt);
        await page.GetByTestId("trace-name").FillAsync("from-the-page");
        await page.GetByTestId("trace-targets").FillAsync("was|she");   // explain logit(was) − logit(she)
        await page.GetByTestId("trace-run").ClickAsync();
        await page.GetByTestId("graph-canvas").WaitForAsync(new() { Timeout = 60_000 });
        string selected = await page.GetByTestId("graph-select").Locator("option:checked").InnerTextAsync();
        Assert.Contains("from-the-page.json", selected);
        var logits = JsonDocument.Parse(File.ReadAllText(Path.Combine(graphs, "graphs", "from-the-page.json"))).RootElement.GetProperty("nodes").EnumerateArray()
            .Where(n => n.GetProperty("feature_type").GetString() == "logit").ToList();
        var only = Assert.Single(logits);
        Assert.Equal(model.Config.VocabOut, only.GetProperty("feature").GetInt32());   // the first target's virtual id, d_vocab + 0
        Assert.Contains("was)-logit(", only.GetProperty("clerp").GetString());
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("graph-traced.png"), FullPage = true });
        Assert.Empty(errors);
    }
}

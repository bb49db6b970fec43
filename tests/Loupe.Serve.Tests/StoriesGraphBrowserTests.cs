using System.Globalization;
using System.Text.Json;
using Loupe.Attribution;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Dictionaries.Transcoders;
using Loupe.Models.Hooks;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace Loupe.Serve.Tests;

/// <summary>
/// The Graph page end to end on stories260K: per-layer transcoders trained in the test (as Stories260KCltTests trains
/// them, smaller), a real attribution graph made from them (AttributionExperiment, as `loupe attribute`), served with
/// --graphs and --transcoders; the numbers the page shows are the library's graph object's and intervention's.
/// </summary>
public class StoriesGraphBrowserTests(ITestOutputHelper output)
{
    const string Prompt = "Once upon a time, there was a little girl named Lily. She";

    /// <summary>One TopK transcoder per layer (ln2 output → MLP output), 64 features, 40 steps each, saved as SAELens folders layer_0 … layer_4.</summary>
    internal static string TrainTranscoders(Loupe.Models.HookedTransformer model, string dir)
    {
        var contexts = ContextBuilder.ForModel(model, new ModelSampledSource(model, 32, 40, seed: 2), 32, seed: 2, maxContexts: 32);
        int d = model.Config.DModel;
        for (int l = 0; l < model.Config.NLayers; l++)
        {
            var dict = new SparseDictionary(SaeShape.Transcoder(d, 64, d), new TopKActivation(8));
            dict.Initialize(seed: l);
            var rows = new ModelRows(model, contexts, HookNames.NormNormalized(l, "ln2"), HookNames.MlpOut(l), contextsPerWindow: 32).Load(0, 0);
            new SaeTrainer(dict, new SaeTrainingOptions { Steps = 40, BatchSize = 128, LearningRate = 4e-3f, LrWarmupSteps = 5, Seed = 0 }).Train(rows.Inputs, rows.Targets);
            SaeLensFormat.Save(Path.Combine(dir, $"layer_{l}"), dict, new SaeLensConfig
            {
                DIn = d, DSae = 64, DOut = d, HookName = HookNames.NormNormalized(l, "ln2"), HookNameOut = HookNames.MlpOut(l), ApplyBDecToInput = false,
            });
        }
        return dir;
    }

    [RequiresBrowserFact]
    public async Task Graph_page_on_a_stories260K_graph_shows_the_library_numbers_and_intervenes()
    {
        var model = Servers.Stories;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        string root = Directory.CreateTempSubdirectory("loupe-serve-stories-graph-").FullName;
        string transcoders = TrainTranscoders(model, Path.Combine(root, "transcoders"));
        double trainSeconds = clock.Elapsed.TotalSeconds;
        var replacements = MlpReplacements.Load(transcoders, model.Config.NLayers);
        int[] tokens = model.Tokenizer!.Encode(Prompt);
        string graphs = Path.Combine(root, "graphs");
        Directory.CreateDirectory(graphs);
        var made = AttributionExperiment.Run(model, replacements, tokens, Prompt, new AttributionSettings(), 0.8, 0.98, graphs, "stories");
        var graph = made.Graph;
        output.WriteLine($"transcoders trained in {trainSeconds:F1} s; graph: {graph.SelectedFeatures.Length} features of {graph.ActiveFeatures.Length} active, {made.Pruning.KeptNodes().Length} nodes kept, made in {clock.Elapsed.TotalSeconds - trainSeconds:F1} s");

        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs, TranscodersDir = transcoders });
        using var client = Servers.Client(host);
        string graphId = JsonDocument.Parse(await client.GetStringAsync("/api/artifacts")).RootElement.EnumerateArray()
            .Single(a => a.GetProperty("kind").GetString() == "graph").GetProperty("id").GetString()!;
        var compact = JsonDocument.Parse(await client.GetStringAsync($"/api/graph/{graphId}")).RootElement.GetProperty("nodes");
        string[] ids = [.. compact.GetProperty("node_id").EnumerateArray().Select(n => n.GetString()!)];
        int[] kinds = [.. compact.GetProperty("kind").EnumerateArray().Select(k => k.GetInt32())];
        int[] layers = [.. compact.GetProperty("layer").EnumerateArray().Select(k => k.GetInt32())];
        int[] positions = [.. compact.GetProperty("position").EnumerateArray().Select(k => k.GetInt32())];
        int[] features = [.. compact.GetProperty("feature").EnumerateArray().Select(k => k.GetInt32())];
        double[] influence = [.. compact.GetProperty("influence").EnumerateArray().Select(k => k.ValueKind == JsonValueKind.Number ? k.GetDouble() : 0)];

        var (playwright, browser, page, errors) = await Browser.OpenAsync();
        using var _ = playwright;
        await using var __ = browser;
        await page.GotoAsync(new Uri(host.Url!, "/graph").ToString());
        var canvas = page.GetByTestId("graph-canvas");
        await canvas.WaitForAsync();
        async Task Click(string nodeId)
        {
            var at = await page.EvaluateAsync<double[]>("id => window.loupeGraph.screenOf(id)", nodeId);
            var box = (await canvas.BoundingBoxAsync())!;
            await page.Mouse.ClickAsync((float)(box.X + at[0]), (float)(box.Y + at[1]));
            Assert.Equal(nodeId, await page.Locator("[data-fact=node]").InnerTextAsync());
        }
        static string Pct(double p) => p >= 0.001 ? (p * 100).ToString("F1", CultureInfo.InvariantCulture) + "%" : p.ToString("0.0e+0", CultureInfo.InvariantCulture);

        // The top logit: its token and probability are the graph's first logit target.
        int top = Enumerable.Range(0, ids.Length).Single(i => kinds[i] == 3 && features[i] == graph.LogitTokens[0]);
        await Click(ids[top]);
        Assert.Equal(graph.LogitTokens[0].ToString(CultureInfo.InvariantCulture), await page.Locator("[data-fact=token]").InnerTextAsync());
        Assert.Equal(Pct(graph.LogitProbabilities[0]), await page.Locator("[data-fact=probability]").InnerTextAsync());

        // The most influential feature node: its activation is the graph object's.
        int node = Enumerable.Range(0, ids.Length).Where(i => kinds[i] == 1).MaxBy(i => influence[i]);
        var (layer, position, feature) = (layers[node], positions[node], features[node]);
        int active = Array.IndexOf(graph.ActiveFeatures, (layer, position, feature));
        Assert.True(active >= 0, $"{ids[node]} is not among the graph's active features");
        await Click(ids[node]);
        Assert.Contains($"pin={ids[node]}", await Browser.UrlAsync(page));
        Assert.Equal(graph.ActivationValues[active].ToString("F4", CultureInfo.InvariantCulture), await page.Locator("[data-fact=activation]").InnerTextAsync());
        Assert.Equal(feature.ToString(CultureInfo.InvariantCulture), await page.Locator("[data-fact=feature]").InnerTextAsync());

        // Ablate it: the new top tokens are the library's intervention's, in order.
        await page.GetByTestId("intervene-mode").SelectOptionAsync("ablate");
        await page.GetByTestId("intervene").ClickAsync();
        var result = page.GetByTestId("intervene-result");
        await result.WaitForAsync();
        var expected = new ReplacementModel(model, replacements).Run(tokens, [new FeatureIntervention(layer, position, feature, 0f, InterventionKind.Scale)], topK: 8);
        Assert.Equal(string.Join(",", expected.Top.Select(t => t.Token)), await result.GetAttributeAsync("data-after"));
        Assert.Equal(expected.Top[0].Token.ToString(CultureInfo.InvariantCulture), await page.GetByTestId("after-top").GetAttributeAsync("data-token-id"));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("graph-stories260K.png"), FullPage = true });
        output.WriteLine($"whole test body {clock.Elapsed.TotalSeconds:F1} s");
        Assert.Empty(errors);
    }
}

using System.Globalization;
using Loupe.Causal.Patching;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Models.Generation;
using Loupe.Models.Metrics;
using Loupe.Steering;
using Microsoft.Playwright;

namespace Loupe.Serve.Tests;

/// <summary>The job forms (run a sweep, build a store) and the Steering page's mode, positions and sampling, in Debian's Chromium.</summary>
public class JobBrowserTests
{
    static string Folder(string name) => Directory.CreateTempSubdirectory($"loupe-serve-{name}-").FullName;

    [RequiresBrowserFact]
    public async Task Circuits_page_runs_a_sweep_and_shows_its_heat_map()
    {
        var model = Servers.Stories;
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = Folder("sweep-page") });
        var (playwright, browser, page, errors) = await Browser.OpenAsync();
        using var _ = playwright;
        await using var __ = browser;

        await page.GotoAsync(new Uri(host.Url!, "/circuits").ToString());
        await page.GetByTestId("sweep-details").Locator("summary").ClickAsync();
        await page.GetByTestId("sweep-target").SelectOptionAsync("resid_pre");
        await page.GetByTestId("sweep-run").ClickAsync();
        await page.GetByTestId("patch-heatmap").WaitForAsync(new() { Timeout = 60_000 });
        Assert.Contains("artifact=", await Browser.UrlAsync(page));

        int[] clean = model.Tokenizer!.Encode(JobApiTests.Clean), corrupt = model.Tokenizer.Encode(JobApiTests.Corrupt);
        int lily = model.Tokenizer.Encode("Lily", addSpecialTokens: false).Single(), tim = model.Tokenizer.Encode("Tim", addSpecialTokens: false).Single();
        var expected = ActivationPatching.Sweep(model, TokenBatch.Single(clean), TokenBatch.Single(corrupt), new LogitDiff(lily, tim, -1), PatchTarget.ResidPre,
            new PatchOptions { LastPositionLogitsOnly = true });
        string summary = await page.GetByTestId("patch-summary").InnerTextAsync();
        Assert.Contains($"clean {expected.CleanValue.ToString("F4", CultureInfo.InvariantCulture)}", summary);
        Assert.Contains($"corrupt {expected.CorruptValue.ToString("F4", CultureInfo.InvariantCulture)}", summary);
        Assert.Contains("Denoising resid_pre", summary);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("circuits-sweep-job.png"), FullPage = true });
        Assert.Empty(errors);
    }

    [RequiresBrowserFact]
    public async Task Features_page_builds_a_store_cancels_one_and_opens_the_built_store()
    {
        var model = Servers.Stories;
        string graphs = Folder("build-page");
        string[] texts = JobApiTests.Texts(model, 24);
        File.WriteAllText(Path.Combine(graphs, "corpus.txt"), string.Join("\n\n", texts));
        // A large corpus to cancel: 4,096 contexts of 128 tokens, two passes.
        File.WriteAllText(Path.Combine(graphs, "large.txt"), string.Join("\n\n", Enumerable.Repeat(string.Join(" ", texts.Take(8)), 3000)));
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs, SaePath = FeatureStores.SaeFolder });
        var (playwright, browser, page, errors) = await Browser.OpenAsync();
        using var _ = playwright;
        await using var __ = browser;

        await page.GotoAsync(new Uri(host.Url!, "/features").ToString());
        await page.GetByTestId("no-stores").WaitForAsync();
        await page.GetByTestId("build-details").Locator("summary").ClickAsync();

        // Cancel a large build: the page says so and no store appears.
        await page.GetByTestId("build-source").SelectOptionAsync(new SelectOptionValue { Label = (await page.GetByTestId("build-source").Locator("option", new() { HasText = "large.txt" }).InnerTextAsync()).Trim() });
        await page.GetByTestId("build-contexts").FillAsync("4096");
        await page.GetByTestId("build-context-size").FillAsync("128");
        await page.GetByTestId("build-name").FillAsync("large");
        await page.GetByTestId("build-run").ClickAsync();
        await page.Locator("[data-testid=job-status]", new() { HasText = "pass 1/2" }).WaitForAsync(new() { Timeout = 60_000 });
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("features-build-running.png"), FullPage = true });
        await page.GetByTestId("build-details").GetByTestId("job-cancel").ClickAsync();
        await page.GetByTestId("build-details").Locator(".job-runner[data-state=cancelled]").WaitForAsync(new() { Timeout = 60_000 });
        Assert.False(File.Exists(Path.Combine(graphs, "stores", "large.features.db")));

        // Build from the small served corpus: the page opens the new store.
        await page.GetByTestId("build-source").SelectOptionAsync(new SelectOptionValue { Label = (await page.GetByTestId("build-source").Locator("option", new() { HasText = "corpus.txt" }).InnerTextAsync()).Trim() });
        await page.GetByTestId("build-contexts").FillAsync("24");
        await page.GetByTestId("build-context-size").FillAsync("32");
        await page.GetByTestId("build-name").FillAsync("corpus");
        await page.GetByTestId("build-run").ClickAsync();
        await page.GetByTestId("feature-row").First.WaitForAsync(new() { Timeout = 60_000 });
        Assert.Contains("store=", await Browser.UrlAsync(page));
        Assert.Contains("corpus.features.db", await page.GetByTestId("store").InnerTextAsync());
        using (var store = FeatureStore.Open(Path.Combine(graphs, "stores", "corpus.features.db")))
        {
            var densest = store.Features("density", 1)[0];
            Assert.Equal(densest.Feature.ToString(CultureInfo.InvariantCulture), await page.GetByTestId("feature-row").First.GetAttributeAsync("data-feature"));
        }
        await page.GetByTestId("feature-row").First.ClickAsync();
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("features-built-store.png"), FullPage = true });
        Assert.Empty(errors);
    }

    [RequiresBrowserFact]
    public async Task Steering_page_projects_out_at_chosen_positions_and_samples_with_a_seed()
    {
        var model = Servers.Stories;
        const string text = "Once upon a time, there was a little girl named Lily. She";
        await using var host = await Servers.StartAsync(model, new ServeOptions { FeatureStores = [FeatureStores.Real] });
        var (playwright, browser, page, errors) = await Browser.OpenAsync();
        using var _ = playwright;
        await using var __ = browser;
        int[] input = model.Tokenizer!.Encode(text);
        var (dict, _) = DictionaryFile.Load(FeatureStores.SaeFolder);
        float[] direction = dict.P.WDec.AsSpan(3 * 64, 64).ToArray();
        async Task<int[]> Shown(string side) =>
            [.. (await page.GetByTestId($"tok-{side}").EvaluateAllAsync<string[]>("els => els.map(e => e.dataset.id)")).Select(int.Parse)];
        async Task Generate()
        {
            await page.GetByTestId("steer-run").ClickAsync();
            await page.Locator("[data-testid=steer-status][data-done=true]").WaitForAsync();
        }

        await page.GotoAsync(new Uri(host.Url!, "/steering").ToString());
        await page.GetByTestId("steer-prompt").FillAsync(text);
        await page.GetByTestId("steer-feature").FillAsync("3");
        await page.GetByTestId("steer-coeff").FillAsync("1");
        await page.GetByTestId("steer-n").FillAsync("24");
        // Greedy, project out, on the generated tokens only.
        await page.GetByTestId("steer-mode").SelectOptionAsync("project_out");
        await page.GetByTestId("steer-positions").SelectOptionAsync("new");
        await Generate();
        int[] want = SteeringRun.Continue(model, input, new GenerationOptions(24), SteeringRun.Edit(FeatureStores.Hook, direction, 1f, true, SteeringPositions.NewTokens));
        Assert.Equal(want, await Shown("steered"));
        Assert.Equal(model.Generate([input], new GenerationOptions(24))[0], await Shown("unsteered"));
        Assert.Contains("project out", await page.GetByTestId("steer-status").InnerTextAsync());
        Assert.Contains("project_out=true", await Browser.UrlAsync(page));
        Assert.Contains("positions=new", await Browser.UrlAsync(page));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("steering-project-out.png"), FullPage = true });

        // Add at positions from 5 on, sampled at temperature 0.8 with seed 11: the library's sample, both sides.
        await page.GetByTestId("steer-mode").SelectOptionAsync("add");
        await page.GetByTestId("steer-coeff").FillAsync("6");
        await page.GetByTestId("steer-positions").SelectOptionAsync("from");
        await page.GetByTestId("steer-from").FillAsync("5");
        await page.GetByTestId("steer-temperature").FillAsync("0.8");
        await page.GetByTestId("steer-seed").FillAsync("11");
        await Generate();
        var sampling = new GenerationOptions(24, 0.8f, 0, 1f, 11);
        Assert.Equal(SteeringRun.Continue(model, input, sampling, SteeringRun.Edit(FeatureStores.Hook, direction, 6f, false, SteeringPositions.From(5))), await Shown("steered"));
        Assert.Equal(SteeringRun.Continue(model, input, sampling, null), await Shown("unsteered"));
        Assert.Contains("temperature=0.8", await Browser.UrlAsync(page));
        Assert.Contains("seed=11", await Browser.UrlAsync(page));
        // The URL restores the controls.
        await page.ReloadAsync();
        Assert.Equal("from", await page.GetByTestId("steer-positions").InputValueAsync());
        Assert.Equal("5", await page.GetByTestId("steer-from").InputValueAsync());
        Assert.Equal("0.8", await page.GetByTestId("steer-temperature").InputValueAsync());
        Assert.Empty(errors);
    }
}

using System.Globalization;
using Loupe.Dictionaries.Evaluation;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Splice;
using Microsoft.Playwright;

namespace Loupe.Serve.Tests;

/// <summary>The Features page's "Evaluate the SAE" form shows the numbers `loupe sae eval` computes, in Debian's Chromium.</summary>
public class SaeEvalBrowserTests
{
    [RequiresBrowserFact]
    public async Task Features_page_evaluates_the_sae_and_shows_the_library_numbers()
    {
        var model = Servers.Stories;
        string graphs = Directory.CreateTempSubdirectory("loupe-serve-eval-page-").FullName;
        string[] texts = JobApiTests.Texts(model, 12);
        File.WriteAllText(Path.Combine(graphs, "corpus.txt"), string.Join("\n\n", texts));
        await using var host = await Servers.StartAsync(model, new ServeOptions { GraphsDir = graphs, SaePath = FeatureStores.SaeFolder });
        var (playwright, browser, page, errors) = await Browser.OpenAsync();
        using var _ = playwright;
        await using var __ = browser;

        await page.GotoAsync(new Uri(host.Url!, "/features").ToString());
        await page.GetByTestId("eval-details").Locator("summary").ClickAsync();
        await page.GetByTestId("eval-contexts").FillAsync("12");
        await page.GetByTestId("eval-context-size").FillAsync("32");
        await page.GetByTestId("eval-run").ClickAsync();
        await page.GetByTestId("sae-eval-result").WaitForAsync(new() { Timeout = 60_000 });

        // The library's evaluation of the same served file (one document per paragraph), as the job runs it.
        var (splice, _) = SaeSplice.Load(model, FeatureStores.SaeFolder);
        var contexts = ContextBuilder.ForModel(model, new InMemoryTextSource(texts, "same"), 32, 0, 12);
        var want = SaeEvaluator.Evaluate(model, splice, contexts, new SaeEvalOptions { BatchSize = 8 });
        foreach (var (key, value, digits) in new[] { ("l0", want.L0, 2), ("explained_variance", want.ExplainedVariance, 4), ("loss_recovered", want.LossRecovered, 4), ("ce_loss_clean", want.CeLossClean, 4) })
        {
            string shown = (await page.Locator($"[data-testid=sae-eval-result] tr[data-metric={key}] td").InnerTextAsync()).Trim();
            Assert.Equal(value.ToString("F" + digits, CultureInfo.InvariantCulture), shown);
        }
        Assert.Contains("evals/", await page.GetByTestId("sae-eval-result").InnerTextAsync());
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("features-sae-eval.png"), FullPage = true });
        Assert.Empty(errors);
    }
}

using System.Globalization;
using System.Net;
using System.Text.Json;
using Loupe.Dictionaries.Crosscoders;
using Loupe.Dictionaries.Features;
using Loupe.Dictionaries.Harvest;
using Loupe.Dictionaries.Sae;
using Loupe.Models;
using Loupe.Testing;
using Microsoft.Playwright;

namespace Loupe.Serve.Tests;

/// <summary>
/// The Diff page and its API (<c>loupe serve --crosscoder</c>): counts, histograms and latent pages equal the library's
/// <see cref="CrosscoderDiff"/>; a served feature store of the crosscoder's latents is linked; the page in Debian's Chromium.
/// </summary>
public sealed class CrosscoderServeTests : IDisposable
{
    const string Hook = "blocks.1.hook_resid_post";
    const int D = 64;
    readonly string _root = Directory.CreateTempSubdirectory("loupe-serve-crosscoder").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    // A random ReLU crosscoder over gpt2 and llama (the reference fixtures), saved, with unequal decoder halves so that every
    // class has members; and the feature store of its latents built over both models (which records the crosscoder's folder).
    (string Folder, string Store) CrosscoderWithStore()
    {
        var dict = new SparseDictionary(SaeShape.Sae(2 * D, 48, applyBDecToInput: false), new ReluActivation());
        dict.Initialize(5, decoderNorm: 0.5f);
        for (int i = 0; i < 48; i++)
        {
            // latents 0–11 mostly gpt2's, 12–23 mostly llama's, the rest both
            float a = i < 12 ? 1f : i < 24 ? 0.02f : 1f, b = i < 12 ? 0.02f : 1f;
            for (int j = 0; j < D; j++) { dict.P.WDec[i * 2 * D + j] *= a; dict.P.WDec[i * 2 * D + D + j] *= b; }
        }
        var cc = new Crosscoder([new("gpt2", Hook), new("llama", Hook)], D, dict);
        string folder = Path.Combine(_root, "cc");
        CrosscoderFiles.Save(folder, cc);
        using var gpt2 = ModelLoader.LoadFolder(SharedData.TestData("reference/gpt2"));
        using var llama = ModelLoader.LoadFolder(SharedData.TestData("reference/llama"));
        var random = new Random(3);
        var contexts = HarvestContexts.FromRows(Enumerable.Range(0, 6).Select(_ => Enumerable.Range(0, 9).Select(t => t == 0 ? 1 : random.Next(3, 512)).ToArray()).ToArray(), "random tokens", 3);
        string db = Path.Combine(_root, "features.db");
        CrosscoderFeatures.Build(CrosscoderFiles.Load(folder), new PairedActivations(cc.Sources, D, new Dictionary<string, HookedTransformer> { ["gpt2"] = gpt2, ["llama"] = llama }),
            contexts, db, new FeatureBuildOptions { TopK = 3, Window = 2, CheckpointSeconds = null }, crosscoderPath: folder);
        return (folder, db);
    }

    static Task<JsonElement> Get(HttpClient client, string path, HttpStatusCode expected = HttpStatusCode.OK) => Servers.GetJson(client, path, expected);

    [Fact]
    public async Task The_api_serves_the_librarys_diff_and_links_the_store()
    {
        var (folder, db) = CrosscoderWithStore();
        string kissane = SharedData.TestData("crosscoders/kissane");
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { Crosscoders = [folder, kissane], FeatureStores = [db] });
        using var client = Servers.Client(host);

        var list = await Get(client, "/api/crosscoders");
        Assert.Equal(2, list.GetArrayLength());
        var stores = await Get(client, "/api/features/stores");
        string storeId = stores[0].GetProperty("id").GetString()!;
        var mine = list.EnumerateArray().Single(c => c.GetProperty("name").GetString() == "cc");
        var other = list.EnumerateArray().Single(c => c.GetProperty("name").GetString() == "kissane");
        Assert.Equal(storeId, mine.GetProperty("store").GetString());
        Assert.Equal(JsonValueKind.Null, other.GetProperty("store").ValueKind);
        Assert.Equal(["gpt2", "llama"], mine.GetProperty("sources").EnumerateArray().Select(e => e.GetString()));

        var expected = CrosscoderDiff.Compute(CrosscoderFiles.Load(folder));
        string id = mine.GetProperty("id").GetString()!;
        var summary = await Get(client, $"/api/crosscoders/{id}");
        foreach (var (cls, n) in expected.Counts) Assert.Equal(n, summary.GetProperty("crosscoder").GetProperty("counts").GetProperty(cls).GetInt32());
        Assert.Equal(expected.NormDiffHistogram!.Counts, summary.GetProperty("norm_diff_histogram").GetProperty("counts").EnumerateArray().Select(e => e.GetInt64()));
        Assert.Equal(0.9, summary.GetProperty("thresholds").GetProperty("only_second_above").GetDouble());
        Assert.Equal("gpt2 only", summary.GetProperty("classes")[0].GetString());
        Assert.True(expected.Counts["gpt2 only"] >= 10 && expected.Counts["llama only"] >= 10, string.Join(", ", expected.Counts));

        // a class, by Δ largest first: exactly the library's latents of that class in that order
        var page = await Get(client, $"/api/crosscoders/{id}/latents?class={Uri.EscapeDataString("llama only")}&limit=5");
        var want = expected.Latents.Where(l => l.Class == "llama only").OrderByDescending(l => l.NormDiff).ThenBy(l => l.Index).ToArray();
        Assert.Equal(want.Length, page.GetProperty("total").GetInt32());
        Assert.Equal(want.Take(5).Select(l => l.Index), page.GetProperty("rows").EnumerateArray().Select(r => r.GetProperty("index").GetInt32()));
        var row = page.GetProperty("rows")[0];
        Assert.Equal(want[0].Norms[1], row.GetProperty("norms")[1].GetSingle(), 1e-6f);
        // every latent by index, paged
        var byIndex = await Get(client, $"/api/crosscoders/{id}/latents?order=index&offset=40&limit=100");
        Assert.Equal(Enumerable.Range(40, 8), byIndex.GetProperty("rows").EnumerateArray().Select(r => r.GetProperty("index").GetInt32()));

        // bad requests name the parameter; unknown ids are 404
        Assert.Contains("order", (await Get(client, $"/api/crosscoders/{id}/latents?order=bogus", HttpStatusCode.BadRequest)).GetProperty("error").GetString());
        Assert.Contains("class", (await Get(client, $"/api/crosscoders/{id}/latents?class=nope", HttpStatusCode.BadRequest)).GetProperty("error").GetString());
        Assert.Contains("limit", (await Get(client, $"/api/crosscoders/{id}/latents?limit=0", HttpStatusCode.BadRequest)).GetProperty("error").GetString());
        await Get(client, "/api/crosscoders/0123456789abcdef", HttpStatusCode.NotFound);
        await Get(client, "/api/crosscoders/0123456789abcdef/latents", HttpStatusCode.NotFound);
    }

    [Fact]
    public void A_path_that_is_not_a_crosscoder_is_refused_by_name()
    {
        var e = Assert.Throws<InputError>(() => new ServeHost(Servers.Gpt2, new ServeOptions { Crosscoders = [Path.Combine(_root, "missing")], Port = 0 }));
        Assert.Contains("--crosscoder", e.Message);
        Assert.ThrowsAny<Exception>(() => new ServeHost(Servers.Gpt2, new ServeOptions { Crosscoders = [SharedData.TestData("reference/gpt2")], Port = 0 }));
    }

    [RequiresBrowserFact]
    public async Task The_diff_page_filters_by_class_and_opens_a_latents_dashboard()
    {
        var (folder, db) = CrosscoderWithStore();
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { Crosscoders = [folder], FeatureStores = [db] });
        var (playwright, browser, page, errors) = await Browser.OpenAsync();
        using var pw = playwright;
        await using var chromium = browser;
        var expected = CrosscoderDiff.Compute(CrosscoderFiles.Load(folder));

        await page.GotoAsync(new Uri(host.Url!, "/diff").ToString());
        await page.GetByTestId("latent-row").First.WaitForAsync();
        await page.GetByTestId("delta-histogram").WaitForAsync();
        Assert.Equal($"1–{expected.DSae} of {expected.DSae}", await page.GetByTestId("latent-count").InnerTextAsync());

        // hover the histogram's rightmost bar: the llama-only end
        var box = (await page.GetByTestId("delta-histogram").BoundingBoxAsync())!;
        await page.Mouse.MoveAsync(box.X + box.Width - 26, box.Y + box.Height / 2);
        var last = expected.NormDiffHistogram!.Counts[^1];
        Assert.Contains($"Δ 0.98–1.00: {last} latents", await page.GetByTestId("histogram-status").InnerTextAsync());

        // filter to the llama-only latents: the table shows exactly them, most exclusive first, and the URL keeps the class
        await page.Locator("[data-testid=class-chip][data-class='llama only']").ClickAsync();
        int n = expected.Counts["llama only"];
        await Assertions.Expect(page.GetByTestId("latent-count")).ToHaveTextAsync($"1–{n} of {n} (llama only)");
        Assert.Contains("class=llama+only", await Browser.UrlAsync(page));
        int first = expected.Latents.Where(l => l.Class == "llama only").OrderByDescending(l => l.NormDiff).ThenBy(l => l.Index).First().Index;
        var row = page.GetByTestId("latent-row").First;
        Assert.Equal(first.ToString(CultureInfo.InvariantCulture), await row.GetAttributeAsync("data-latent"));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("diff.png"), FullPage = true });

        // the latent opens its dashboard from the crosscoder's feature store
        await row.ClickAsync();
        var dashboard = page.GetByTestId("dashboard");
        await dashboard.WaitForAsync();
        Assert.Equal(first.ToString(CultureInfo.InvariantCulture), await dashboard.GetAttributeAsync("data-feature"));
        Assert.Contains("/features?store=", await Browser.UrlAsync(page));
        Assert.Empty(errors);
    }
}

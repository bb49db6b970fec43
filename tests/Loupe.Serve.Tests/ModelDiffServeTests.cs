using System.Net;
using System.Text.Json;
using Loupe.Dictionaries.Diffing;
using Microsoft.Playwright;

namespace Loupe.Serve.Tests;

/// <summary>
/// The Diff page's model diffs (<c>loupe serve --diff</c>): the API serves what the diff.json holds; bad paths and files are
/// refused at start naming them; the page in Debian's Chromium reads KL by position, the divergent positions in their
/// context with token texts, and every position's difference of a chosen hook.
/// </summary>
public sealed class ModelDiffServeTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("loupe-serve-model-diff").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    static readonly Dictionary<int, string> s_tokens = new() { [3] = " Once", [4] = " upon", [5] = " a", [6] = " time", [7] = " there", [8] = " was", [9] = " Hello", [10] = "!", [11] = " dog" };

    // A diff written as `loupe diff` writes it, with numbers chosen here: 6 positions, position 3 diverging most.
    string DiffFolder()
    {
        string folder = Path.Combine(_root, "chat-vs-base");
        Directory.CreateDirectory(folder);
        static ActivationDifference D(string hook, int position, double norm, int promoted) =>
            new(hook, position, norm, 2 * norm, [new(promoted, 1)], [], [new(promoted, 2), new(11, 1)], [new(10, -1)]);
        var result = new ModelDiffResult
        {
            ModelA = "/models/base", ModelB = "/models/chat", Contexts = 3, ContextSize = 6, MeanKl = 0.75,
            MeanKlByPosition = [0, 0.25, 0.5, 2.5, 0.75, 0.5], KlHistogramEdges = [0, 1, 2, 3], KlHistogramCounts = [15, 2, 1],
            TopPositions =
            [
                new DivergentPosition(1, 3, 2.75, 6, 7, 9, 0.05, 0.8) { Before = [3, 4, 5, 6], Next = 7 },
                new DivergentPosition(0, 4, 1.25, 7, 8, 10, 0.2, 0.5) { Before = [3, 4, 5, 6, 7], Next = 8 },
            ],
            Differences =
            [
                D("blocks.0.hook_resid_post", 0, 0.5, 9), D("blocks.0.hook_resid_post", 1, 0.25, 9), D("blocks.0.hook_resid_post", -1, 1.5, 9),
                D("blocks.1.hook_resid_post", 0, 0.125, 11), D("blocks.1.hook_resid_post", 1, 3, 11), D("blocks.1.hook_resid_post", -1, 4, 11),
            ],
        };
        new ModelDiffFile("base", "chat", result, s_tokens).Write(Path.Combine(folder, "diff.json"));
        return folder;
    }

    static Task<JsonElement> Get(HttpClient client, string path, HttpStatusCode expected = HttpStatusCode.OK) => Servers.GetJson(client, path, expected);

    [Fact]
    public async Task The_api_lists_and_serves_the_diff_file()
    {
        string folder = DiffFolder();
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { ModelDiffs = [folder, Path.Combine(folder, "diff.json")] });
        using var client = Servers.Client(host);
        var list = await Get(client, "/api/diffs");
        Assert.Equal(2, list.GetArrayLength());   // the folder and the file by path: two ids
        var first = list[0];
        Assert.Equal(("chat-vs-base", "base", "chat", "/models/chat"), (first.GetProperty("name").GetString(), first.GetProperty("model_a").GetString(),
            first.GetProperty("model_b").GetString(), first.GetProperty("source_b").GetString()));
        Assert.Equal(0.75, first.GetProperty("mean_kl").GetDouble());
        Assert.Equal(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], first.GetProperty("hooks").EnumerateArray().Select(h => h.GetString()));

        var detail = await Get(client, $"/api/diffs/{first.GetProperty("id").GetString()}");
        var result = detail.GetProperty("result");
        Assert.Equal([0, 0.25, 0.5, 2.5, 0.75, 0.5], result.GetProperty("mean_kl_by_position").EnumerateArray().Select(v => v.GetDouble()));
        var top = result.GetProperty("top_positions")[0];
        Assert.Equal([3, 4, 5, 6], top.GetProperty("before").EnumerateArray().Select(v => v.GetInt32()));
        Assert.Equal(7, top.GetProperty("next").GetInt32());
        Assert.Equal(" Hello", detail.GetProperty("token_strings").GetProperty("9").GetString());
        Assert.Equal(6, result.GetProperty("differences").GetArrayLength());
        await Get(client, "/api/diffs/0123456789abcdef", HttpStatusCode.NotFound);
    }

    [Fact]
    public void A_missing_or_bad_diff_is_refused_at_start_by_name()
    {
        var e = Assert.Throws<InputError>(() => new ServeHost(Servers.Gpt2, new ServeOptions { ModelDiffs = [Path.Combine(_root, "missing")], Port = 0 }));
        Assert.Contains("--diff", e.Message);
        string bad = Path.Combine(_root, "bad");
        Directory.CreateDirectory(bad);
        File.WriteAllText(Path.Combine(bad, "diff.json"), """{"model_a":"a","model_b":"b"}""");
        e = Assert.Throws<InputError>(() => new ServeHost(Servers.Gpt2, new ServeOptions { ModelDiffs = [bad], Port = 0 }));
        Assert.Contains(Path.Combine(bad, "diff.json"), e.Message);
        Assert.Contains("result", e.Message);
    }

    [RequiresBrowserFact]
    public async Task The_diff_page_reads_kl_by_position_the_divergent_positions_and_a_hooks_differences()
    {
        string folder = DiffFolder();
        await using var host = await Servers.StartAsync(Servers.Gpt2, new ServeOptions { ModelDiffs = [folder] });
        var (playwright, browser, page, errors) = await Browser.OpenAsync();
        using var pw = playwright;
        await using var chromium = browser;

        await page.GotoAsync(new Uri(host.Url!, "/diff").ToString());
        await page.GetByTestId("divergent-row").First.WaitForAsync();
        Assert.Contains("chat vs base · 3 contexts × 6 tokens · mean KL(p_chat ‖ p_base) 0.7500 nats", await page.GetByTestId("diff-info").InnerTextAsync());

        // hover the fourth of six bars: position 3
        var box = (await page.GetByTestId("kl-by-position").BoundingBoxAsync())!;
        await page.Mouse.MoveAsync(box.X + 8 + (box.Width - 16) * 3.5f / 6, box.Y + box.Height / 2);
        Assert.Equal("position 3: mean KL 2.500 nats", await page.GetByTestId("kl-by-position-status").InnerTextAsync());
        // and the histogram's bars by keyboard
        await page.GetByTestId("kl-histogram").FocusAsync();
        await page.Keyboard.PressAsync("ArrowRight");
        await page.Keyboard.PressAsync("ArrowRight");
        Assert.Equal("KL 1.00–2.00: 2 positions", await page.GetByTestId("kl-histogram-status").InnerTextAsync());

        // the most divergent position, read in its context with token texts: "… Once upon a [time] → ·there"
        var rows = page.GetByTestId("divergent-row");
        Assert.Equal(2, await rows.CountAsync());
        string row = await rows.First.InnerTextAsync();
        Assert.Contains("1:3", row);
        Assert.Contains(" Once upon a time", row);
        Assert.Contains("→ ·there", row);
        Assert.Contains("·Hello", row);          // the fine-tune's top token
        Assert.Contains("0.050 → 0.80", row);
        Assert.Equal("time", (await rows.First.Locator("mark").InnerTextAsync()).Trim());

        // the hooks: ‖δ_all‖ per hook; the first is open, the second opens with every position, in order, "all" last
        Assert.Equal(2, await page.GetByTestId("hook-row").CountAsync());
        Assert.Contains("1.500", await page.GetByTestId("hook-row").First.InnerTextAsync());
        await page.Locator("[data-testid=hook-row][data-hook='blocks.1.hook_resid_post']").ClickAsync();
        await Assertions.Expect(page.GetByTestId("hook-detail").Locator("h3")).ToHaveTextAsync("blocks.1.hook_resid_post");
        var positions = page.GetByTestId("position-row");
        Assert.Equal(3, await positions.CountAsync());
        Assert.StartsWith("0", await positions.Nth(0).InnerTextAsync());
        Assert.Contains("all past 0", await positions.Nth(2).InnerTextAsync());
        Assert.Contains("50.0%", await positions.Nth(2).InnerTextAsync());   // ‖δ‖ 4 of ‖h_base‖ 8
        Assert.Contains("·dog", await positions.Nth(2).InnerTextAsync());
        Assert.Contains("hook=blocks.1.hook_resid_post", await Browser.UrlAsync(page));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Browser.Screenshot("model-diff.png"), FullPage = true });

        // reloaded, the URL reopens the same hook
        await page.ReloadAsync();
        await Assertions.Expect(page.GetByTestId("hook-detail").Locator("h3")).ToHaveTextAsync("blocks.1.hook_resid_post");
        Assert.Empty(errors);
    }
}

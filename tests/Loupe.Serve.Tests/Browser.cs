using Loupe.Testing;
using Microsoft.Playwright;

namespace Loupe.Serve.Tests;

/// <summary>Debian's Chromium through Playwright (never a downloaded browser), and where screenshots go.</summary>
static class Browser
{
    /// <summary>The path of a screenshot under TestResults/screenshots (the folder is created).</summary>
    /// <summary>
    /// The page's address as the page sees it now. Playwright's <c>IPage.Url</c> follows <c>history.replaceState</c> through
    /// an event that arrives later, so right after a key press it can still hold the previous address.
    /// </summary>
    public static Task<string> UrlAsync(IPage page) => page.EvaluateAsync<string>("() => location.href");

    public static string Screenshot(string name)
    {
        string dir = Path.Combine(SharedData.RepoRoot, "TestResults", "screenshots");
        Directory.CreateDirectory(dir);
        return Path.Combine(dir, name);
    }

    /// <summary>A headless page 1400 × 1000 and the console and page errors it reports (a CSP violation shows there).</summary>
    public static async Task<(IPlaywright, IBrowser, IPage, List<string>)> OpenAsync()
    {
        var playwright = await Playwright.CreateAsync();
        var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = BrowserTests.Chromium,
            Headless = true,
            Args = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"],
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1400, Height = 1000 } });
        var errors = new List<string>();
        page.Console += (_, m) => { if (m.Type == "error") errors.Add(m.Text); };
        page.PageError += (_, e) => errors.Add(e);
        return (playwright, browser, page, errors);
    }
}

using Microsoft.Playwright;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>
/// The pages in a real browser: Debian's chromium driven by Playwright (platform.md §8; nothing downloaded). Screenshots
/// go to bin/…/screenshots/dashboard/ for a human to look at.
/// </summary>
public sealed class DashboardBrowserTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    const string Chromium = "/usr/bin/chromium";
    static readonly string Shots = Path.Combine(AppContext.BaseDirectory, "screenshots", "dashboard");

    static async Task<(IPlaywright, IBrowser)> LaunchAsync()
    {
        if (!File.Exists(Chromium))
            throw new Xunit.Sdk.XunitException($"browser tests need Debian's chromium at {Chromium}: install it with `apt-get install -y chromium` (test.sh does this as root); never `playwright install`");
        Directory.CreateDirectory(Shots);
        var pw = await Playwright.CreateAsync();
        var browser = await pw.Chromium.LaunchAsync(new()
        {
            ExecutablePath = Chromium, Headless = true,
            Args = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        });
        return (pw, browser);
    }

    static async Task LoginAsync(IPage page, string baseUrl, string user)
    {
        await page.GotoAsync($"{baseUrl}/runs");
        Assert.Contains("/login", page.Url); // redirected to the login form
        await page.FillAsync("input[name=user]", user);
        await page.FillAsync("input[name=password]", DashboardFixture.Password);
        await page.ClickAsync("#login button[type=submit]");
        await page.WaitForURLAsync($"{baseUrl}/runs");
    }

    [Fact]
    public async Task Login_see_curves_and_grid_submit_a_spec_cancel_it()
    {
        var (pw, browser) = await LaunchAsync();
        using var _ = pw;
        await using var __ = browser;
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1280, Height = 900 } });
        page.Dialog += (_, d) => d.AcceptAsync(); // the cancel button asks for confirmation
        await LoginAsync(page, f.BaseUrl, "operator");
        Assert.Equal("Runs · ReTok", await page.TitleAsync());
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "runs.png"), FullPage = true });

        // run page: metric curve drawn, PNG grid decoded by the browser
        await page.GotoAsync($"{f.BaseUrl}/runs/{f.TokRun}");
        var curve = page.Locator("#charts figure[data-key='train/loss'] polyline.curve");
        await curve.WaitForAsync();
        var points = (await curve.GetAttributeAsync("points"))!.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(50, points.Length);
        var img = page.Locator("#previews img[alt='samples/grid.png']");
        await img.ScrollIntoViewIfNeededAsync();
        await page.WaitForFunctionAsync("() => { const i = document.querySelector(\"#previews img[alt='samples/grid.png']\"); return i && i.complete && i.naturalWidth > 0; }");
        Assert.Equal(96, await img.EvaluateAsync<int>("i => i.naturalWidth"));
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "run.png"), FullPage = true });

        // compare: curves of two runs overlaid, differing parameters flagged
        await page.GotoAsync($"{f.BaseUrl}/compare?ids={f.TokRun},{f.FailedRun}");
        Assert.Equal(2, await page.Locator("#charts svg").First.Locator("polyline.curve").CountAsync());
        Assert.True(await page.Locator("table.params-diff tr.diff").CountAsync() >= 2);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "compare.png"), FullPage = true });

        // experiments: the paper-shaped table
        await page.GotoAsync($"{f.BaseUrl}/experiments/paper");
        Assert.Contains("2.66", await page.Locator("table.results").InnerTextAsync());

        // submit a bad spec: the validation error with its key path, nothing queued
        await page.GotoAsync($"{f.BaseUrl}/submit");
        await page.FillAsync("textarea[name=yaml]", "kind: selftest\nparams:\n  n: many\n");
        await page.ClickAsync("#submit-form button[type=submit]");
        var errors = await page.Locator("#spec-errors").InnerTextAsync();
        Assert.Contains("params.n:", errors);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "submit-error.png"), FullPage = true });

        // submit the jobs/ spec with an override, land on the new run, cancel it
        await page.FillAsync("textarea[name=yaml]", "");
        await page.SelectOptionAsync("select[name=file]", "selftest.yaml");
        await page.FillAsync("textarea[name=overrides]", "n=12");
        await page.ClickAsync("#submit-form button[type=submit]");
        await page.WaitForURLAsync(new System.Text.RegularExpressions.Regex(@"/runs/\d+\?msg="));
        var id = long.Parse(new Uri(page.Url).AbsolutePath.Split('/')[^1]);
        Assert.Contains("submitted run", await page.Locator("p.ok").InnerTextAsync());
        Assert.Contains("n: 12", await page.Locator("#params").InnerTextAsync());
        await page.ClickAsync("button:has-text('Cancel run')");
        await page.WaitForURLAsync(new System.Text.RegularExpressions.Regex($@"/runs/{id}\?msg=cancelled"));
        Assert.Equal("Cancelled", (await page.Locator("#run-live .st").InnerTextAsync()).Trim());
        Assert.Equal(RunStatus.Cancelled, (await f.Tracker.GetRunAsync(id))!.Status);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "cancelled.png"), FullPage = true });

        // Hangfire's dashboard opens for the logged-in user
        await page.GotoAsync($"{f.BaseUrl}/hangfire");
        Assert.Contains("Hangfire", await page.TitleAsync());
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "hangfire.png") });
    }
}

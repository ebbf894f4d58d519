using Microsoft.Playwright;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>
/// The pages in a real browser: Debian's chromium driven by Playwright (platform.md §8; nothing downloaded). Screenshots
/// go to bin/…/screenshots/dashboard/ for a human to look at.
/// </summary>
public sealed class DashboardBrowserTests(DashboardFixture f, Xunit.Abstractions.ITestOutputHelper log) : IClassFixture<DashboardFixture>
{
    readonly System.Diagnostics.Stopwatch _sw = System.Diagnostics.Stopwatch.StartNew();
    void Step(string what) => log.WriteLine($"{_sw.Elapsed.TotalSeconds,6:F1} s  {what}");

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
        Step("browser launched");
        using var _ = pw;
        await using var __ = browser;
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1280, Height = 900 } });
        // Generous: on the 2-core CI box shared with the whole suite a page load can take seconds; failures still end the test.
        page.SetDefaultTimeout(90_000);
        page.SetDefaultNavigationTimeout(90_000);
        page.Dialog += (_, d) => d.AcceptAsync(); // the cancel button asks for confirmation
        await LoginAsync(page, f.BaseUrl, "operator");
        Assert.Equal("Runs · ReTok", await page.TitleAsync());
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "runs.png"), FullPage = true });

        Step("run page: metric curve drawn, PNG grid decoded by the browser");
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

        Step("compare: curves of two runs overlaid, differing parameters flagged");
        await page.GotoAsync($"{f.BaseUrl}/compare?ids={f.TokRun},{f.FailedRun}");
        Assert.Equal(2, await page.Locator("#charts svg").First.Locator("polyline.curve").CountAsync());
        Assert.True(await page.Locator("table.params-diff tr.diff").CountAsync() >= 2);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "compare.png"), FullPage = true });

        Step("metrics vs K: the eval run's rFID@k=32 and @k=256 as one curve over K");
        await page.GotoAsync($"{f.BaseUrl}/runs/{f.RecRun}");
        Assert.Equal(2, await page.Locator("#k-curves figure[data-key='rfid vs K'] circle.pt").CountAsync());
        await page.Locator("#k-curves").ScreenshotAsync(new() { Path = Path.Combine(Shots, "run-metrics-vs-k.png") });

        Step("experiments: the paper-shaped table");
        await page.GotoAsync($"{f.BaseUrl}/experiments/paper");
        Assert.Contains("2.66", await page.Locator("table.results").InnerTextAsync());

        Step("live status: the page polls /api/runs/live and updates in place, then reloads once the run is finished");
        var live = (await f.Tracker.Runs.InsertAsync(new Run { Kind = "selftest", Name = "live", Status = RunStatus.Queued })).Id;
        await page.GotoAsync($"{f.BaseUrl}/runs/{live}");
        await using (var cmd = f.Tracker.DataSource.CreateCommand(
            "UPDATE retok.runs SET status = 'Running', progress = 0.5, eta_seconds = 125, progress_message = 'step 6/12', started_at = now() WHERE id = @id"))
        {
            cmd.Parameters.AddWithValue("id", live);
            await cmd.ExecuteNonQueryAsync();
        }
        await page.Locator("#run-live .c-message", new() { HasText = "step 6/12" }).WaitForAsync();
        Assert.Equal("2m05s", await page.Locator("#run-live .c-eta").InnerTextAsync());
        Assert.Equal("Running", await page.Locator("#run-live .st").InnerTextAsync());
        await using (var cmd = f.Tracker.DataSource.CreateCommand("UPDATE retok.runs SET status = 'Succeeded', progress = 1, finished_at = now() WHERE id = @id"))
        {
            cmd.Parameters.AddWithValue("id", live);
            await cmd.ExecuteNonQueryAsync();
        }
        await page.Locator("#run-live .st", new() { HasText = "Succeeded" }).WaitForAsync();

        Step("submit a bad spec: the validation error with its key path, nothing queued");
        await page.GotoAsync($"{f.BaseUrl}/submit");
        await page.FillAsync("textarea[name=yaml]", "kind: selftest\nparams:\n  n: many\n");
        await page.ClickAsync("#submit-form button[type=submit]");
        var errors = await page.Locator("#spec-errors").InnerTextAsync();
        Assert.Contains("params.n:", errors);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "submit-error.png"), FullPage = true });

        Step("submit the jobs/ spec with an override, land on the new run, cancel it");
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
        Assert.Equal(RunStatus.Cancelled, (await f.Tracker.Runs.GetAsync(id))!.Status);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "cancelled.png"), FullPage = true });

        Step("images side by side: reconstructions of two runs per K, the slider switches the K column");
        var (ra, rb, rs) = await CompareImagesTests.SeedAsync(f.Tracker);
        await page.GotoAsync($"{f.BaseUrl}/compare/images?ids={ra},{rb},{rs}");
        var slider = page.Locator("#k-slider");
        Assert.Equal("32", await page.Locator("#k-value").InnerTextAsync());
        Assert.Equal(2 * 2, await page.Locator("#recon-grid tbody td[data-k='32']:visible").CountAsync());
        Assert.Equal(0, await page.Locator("#recon-grid tbody td[data-k='64']:visible").CountAsync());
        await slider.FillAsync("1");   // K=64: both runs have it
        Assert.Equal("64", await page.Locator("#k-value").InnerTextAsync());
        Assert.Equal(0, await page.Locator("#recon-grid tbody td[data-k='32']:visible").CountAsync());
        Assert.Equal(2 * 2, await page.Locator("#recon-grid tbody td[data-k='64'] img").CountAsync());
        await page.WaitForFunctionAsync("() => [...document.querySelectorAll('#recon-grid td:not([hidden]) img')].every(i => i.complete && i.naturalWidth > 0)");
        Assert.Equal(2, await page.Locator("#samples-grid tbody tr").CountAsync());
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "compare-images.png"), FullPage = true });

        Step("Hangfire's dashboard opens for the logged-in user");
        await page.GotoAsync($"{f.BaseUrl}/hangfire");
        Assert.Contains("Hangfire", await page.TitleAsync());
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "hangfire.png") });

        Step("done");
    }
}

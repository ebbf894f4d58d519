using Microsoft.Playwright;
using ReTok.Tests.Webhooks;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>
/// The pages in a real browser: Debian's chromium driven by Playwright (platform.md §8; nothing downloaded). Screenshots
/// go to bin/…/screenshots/dashboard/ for a human to look at: one per page (and a few per section), the ones docs/dashboard.md
/// shows are copied from there into docs/img/dashboard/.
/// </summary>
// Runs alone, after the parallel collections: in a full-suite run on 2 busy cores the post-login /runs navigation once
// missed Playwright's 90 s load timeout (2026-12-06), while the test takes ~20 s on a quiet machine.
[Collection("Browser")]
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

    /// <summary>The page area from the top of <paramref name="from"/> to the bottom of <paramref name="to"/>, full width.</summary>
    static async Task<Clip> ClipAsync(IPage page, string from, string to)
    {
        const string Box = "e => { const r = e.getBoundingClientRect(); return [r.top + window.scrollY, r.bottom + window.scrollY]; }";
        var top = (await page.Locator(from).EvaluateAsync<double[]>(Box))[0];
        var bottom = (await page.Locator(to).EvaluateAsync<double[]>(Box))[1];
        return new Clip { X = 0, Y = (float)Math.Max(0, top - 10), Width = 1280, Height = (float)(bottom - top + 20) };
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
        await page.GotoAsync($"{f.BaseUrl}/login");
        Assert.Equal("Log in · ReTok", await page.TitleAsync());
        await page.Locator("#login input[name=password]").WaitForAsync();
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "login.png"), FullPage = true });
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

        Step("experiments: the list with run counts and the results of all experiments");
        await page.GotoAsync($"{f.BaseUrl}/experiments");
        Assert.Equal("Experiments · ReTok", await page.TitleAsync());
        Assert.Contains("paper", await page.Locator("table.experiments tbody tr").First.InnerTextAsync());
        Assert.Contains("2.66", await page.Locator("table.results").InnerTextAsync());
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "experiments.png"), FullPage = true });

        Step("experiment page: the paper-shaped table, metrics vs K, and Notifications with a webhook that delivered a run.failed message");
        await using var receiver = await WebhookReceiver.StartAsync();
        await f.Tracker.Webhooks.AddAsync("paper", receiver.Url("paper-alerts"), [WebhookEvents.RunFailed, WebhookEvents.PipelineFinished], "#paper-alerts", "operator");
        var paper = await f.Tracker.EnsureExperimentAsync("paper");
        var diverged = await f.Tracker.Runs.InsertAsync(new Run { Kind = "selftest", Name = "tok-train-lr3e-4", ExperimentId = paper, Status = RunStatus.Queued, QueuedAt = DateTimeOffset.UtcNow });
        var lease = (await f.Tracker.Runs.TryAcquireLeaseAsync(diverged.Id, new LeaseRequest("browser-test", TimeSpan.FromMinutes(1))))!;
        await f.Tracker.Runs.FailAsync(lease, "JobFailedException: loss became NaN at step 40");
        await page.GotoAsync($"{f.BaseUrl}/experiments/paper");
        Assert.Contains("2.66", await page.Locator("table.results").InnerTextAsync());
        Assert.Contains("#paper-alerts", await page.Locator("table.webhooks tbody tr").First.InnerTextAsync());
        for (var i = 0; i < 60 && await page.Locator("table.deliveries .delivery-delivered").CountAsync() == 0; i++)
        {
            await Task.Delay(500); // the dashboard's dispatcher polls every 5 s
            await page.ReloadAsync();
        }
        Assert.Contains("run.failed", await page.Locator("table.deliveries tbody tr", new() { Has = page.Locator(".delivery-delivered") }).First.InnerTextAsync());
        Assert.Single(receiver.For("paper-alerts"));
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "experiment.png"), FullPage = true });
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "notifications.png"), FullPage = true, Clip = await ClipAsync(page, "#notifications", "table.deliveries") });

        Step("workers: a GPU worker running a run with its GPUs' readings, an idle CPU worker; the run's System section");
        var busy = await f.Tracker.Runs.InsertAsync(new Run
        {
            Kind = "selftest", Name = "tok-train-large", ExperimentId = paper, Status = RunStatus.Running, Progress = 0.42, ProgressMessage = "step 4200/10000",
            EtaSeconds = 3900, StartedAt = DateTimeOffset.UtcNow.AddMinutes(-48), Tags = ["tokenizer=ReTok-L"],
        });
        await f.Tracker.LogMetricsAsync(busy.Id, Enumerable.Range(0, 40).SelectMany(i => new MetricValue[]
        {
            new("train/loss", i * 100, 1.8 / (1 + 0.05 * i)),
            new("sys/gpu0/util_pct", i * 30, 80 + 10 * Math.Sin(i / 3.0)), new("sys/gpu0/mem_used_mib", i * 30, 40960 + 20 * i),
            new("sys/gpu0/mem_total_mib", i * 30, 81920), new("sys/gpu0/temp_c", i * 30, 55 + i / 5.0), new("sys/gpu0/power_w", i * 30, 290 + 25 * Math.Sin(i / 4.0)),
            new("sys/cpu_pct", i * 30, 140 + 15 * Math.Cos(i / 2.0)), new("sys/rss_mib", i * 30, 6100 + 3 * i),
        }).ToList());
        await f.Tracker.Runs.UpsertWorkerAsync(new WorkerInfo
        {
            Id = "gpu-box-1:4121", Host = "gpu-box-1", Queues = "gpu", Devices = "cuda:0,cuda:1", Slots = $"{{\"cuda:0\": {busy.Id}, \"cuda:1\": null}}",
            StartedAt = DateTimeOffset.UtcNow.AddHours(-3),
            System = "{\"sys/gpu0/util_pct\": 87, \"sys/gpu0/mem_used_mib\": 41200, \"sys/gpu0/mem_total_mib\": 81920, \"sys/gpu0/temp_c\": 62, \"sys/gpu0/power_w\": 312, " +
                     "\"sys/gpu1/util_pct\": 0, \"sys/gpu1/mem_used_mib\": 4, \"sys/gpu1/mem_total_mib\": 81920, \"sys/gpu1/temp_c\": 34, \"sys/gpu1/power_w\": 61, " +
                     "\"sys/cpu_pct\": 148, \"sys/rss_mib\": 6220, \"sys/host_mem_used_mib\": 98304, \"sys/host_mem_total_mib\": 515072}",
        });
        await f.Tracker.Runs.UpsertWorkerAsync(new WorkerInfo
        {
            Id = "cpu-box-1:977", Host = "cpu-box-1", Queues = "cpu", Devices = "cpu", Slots = "{\"cpu\": null}", StartedAt = DateTimeOffset.UtcNow.AddHours(-1),
            System = "{\"sys/cpu_pct\": 3, \"sys/rss_mib\": 310, \"sys/host_mem_used_mib\": 11264, \"sys/host_mem_total_mib\": 32768}",
        });
        await page.GotoAsync($"{f.BaseUrl}/workers");
        Assert.Equal("Workers · ReTok", await page.TitleAsync());
        var gpuRow = await page.Locator("table.workers tbody tr", new() { HasText = "gpu-box-1" }).InnerTextAsync();
        Assert.Contains("tok-train-large", gpuRow);
        Assert.Contains("gpu0 87% · 40.2/80.0 GiB · 62 °C · 312 W", gpuRow);
        Assert.Contains("CPU 3%", await page.Locator("table.workers tbody tr", new() { HasText = "cpu-box-1" }).InnerTextAsync());
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "workers.png"), FullPage = true });
        await page.GotoAsync($"{f.BaseUrl}/runs/{busy.Id}");
        Assert.Equal(1, await page.Locator("#system figure[data-key='sys/gpu0/util_pct'] polyline.curve").CountAsync());
        Assert.Contains("seconds", await page.Locator("#system figure[data-key='sys/gpu0/util_pct'] svg").InnerHTMLAsync()); // x: seconds, not steps
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "run-system.png"), FullPage = true, Clip = await ClipAsync(page, "h3:has(+ #system)", "#system") });

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
        Assert.Equal("Submit a job · ReTok", await page.TitleAsync());
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "submit.png"), FullPage = true });
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

        Step("Hangfire's dashboard opens for the logged-in user; a queued run's job is named by the run");
        await page.GotoAsync($"{f.BaseUrl}/submit");
        await page.SelectOptionAsync("select[name=file]", "selftest.yaml");
        await page.ClickAsync("#submit-form button[type=submit]");
        await page.WaitForURLAsync(new System.Text.RegularExpressions.Regex(@"/runs/\d+\?msg="));
        var queued = (await f.Tracker.Runs.GetAsync(long.Parse(new Uri(page.Url).AbsolutePath.Split('/')[^1])))!;
        await page.GotoAsync($"{f.BaseUrl}/hangfire");
        Assert.Contains("Hangfire", await page.TitleAsync());
        await page.GotoAsync($"{f.BaseUrl}/hangfire/jobs/enqueued/{RunPriority.HangfireQueue(queued.Queue, queued.Priority)}");
        await page.Locator("a", new() { HasText = $"selftest · from-jobs · run {queued.Id}" }).WaitForAsync();
        await page.ScreenshotAsync(new() { Path = Path.Combine(Shots, "hangfire.png") });

        Step("done");
    }
}

[CollectionDefinition("Browser", DisableParallelization = true)]
public sealed class BrowserCollection;

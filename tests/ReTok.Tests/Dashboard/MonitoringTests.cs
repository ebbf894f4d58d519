using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.EntityFrameworkCore;
using ReTok.Dashboard.Monitoring;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>Issue 19.6: Prometheus /metrics for SREs, and Hangfire's pages naming the run behind each job.</summary>
public sealed class MonitoringTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    [Fact]
    public async Task Metrics_endpoint_needs_a_viewer_and_reports_the_run_store()
    {
        using var anon = f.Client();
        Assert.NotEqual(HttpStatusCode.OK, (await anon.GetAsync("/metrics")).StatusCode);

        var sub = await f.Client(UserRole.Operator).PostAsync("/api/submit", new StringContent("kind: selftest\nname: waiting\nparams: {n: 3}\n", Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.Created, sub.StatusCode);

        using var c = f.Client(UserRole.Viewer);
        var r = await c.GetAsync("/metrics");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("text/plain", r.Content.Headers.ContentType!.MediaType);
        var text = await r.Content.ReadAsStringAsync();

        await using var db = f.Tracker.CreateDb();
        var runs = await db.Runs.AsNoTracking().ToListAsync();
        foreach (var g in runs.Where(x => x.Status == RunStatus.Queued).GroupBy(x => x.Queue))
            Assert.Equal(g.Count(), Value(text, "retok_queue_depth", ("queue", g.Key)));
        Assert.Equal(runs.Count(x => x.Kind == "selftest" && x.Status == RunStatus.Succeeded),
            Value(text, "retok_runs_finished_total", ("kind", "selftest"), ("status", "succeeded")));
        Assert.Equal(runs.Count(x => x.Kind == "selftest" && x.Status == RunStatus.Failed),
            Value(text, "retok_runs_finished_total", ("kind", "selftest"), ("status", "failed")));
        Assert.Equal(await db.Artifacts.SumAsync(a => a.SizeBytes), Value(text, "retok_artifacts_stored_bytes"));
        Assert.Equal(1, Value(text, "retok_stats_up"));
        Assert.Contains("# HELP retok_lease_takeovers_total", text);
    }

    [Fact]
    public async Task Queue_wait_and_lease_takeovers_are_measured_from_the_run_store()
    {
        using var fleet = new FleetMetrics(f.Tracker, minRefresh: TimeSpan.Zero);
        var waits = new List<(double Seconds, string Kind, string Queue)>();
        long takeovers = -1;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (i, l) => { if (i.Meter.Name == fleet.MeterName) l.EnableMeasurementEvents(i); };
        listener.SetMeasurementEventCallback<double>((i, v, tags, _) =>
        {
            if (i.Name == "retok.run.queue_wait")
                lock (waits) waits.Add((v, Tag(tags, "kind"), Tag(tags, "queue")));
        });
        listener.SetMeasurementEventCallback<long>((i, v, _, _) => { if (i.Name == "retok.lease.takeovers") takeovers = v; });
        listener.Start();

        await fleet.RefreshAsync();   // the watermark: runs started before this are not replayed
        var run = await f.Tracker.Runs.InsertAsync(new Run { Kind = "noop", Name = "waits", Status = RunStatus.Queued, Queue = "metrics-q" });
        await Task.Delay(400);
        Assert.NotNull(await f.Tracker.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("worker-a", TimeSpan.FromSeconds(1))));
        await Task.Delay(1300);   // worker-a's lease expires
        Assert.NotNull(await f.Tracker.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("worker-b", TimeSpan.FromSeconds(1))));
        Assert.NotNull(await f.Tracker.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("worker-b", TimeSpan.FromSeconds(1))));   // own lease: no takeover
        Assert.Equal(1, (await f.Tracker.Runs.GetAsync(run.Id))!.LeaseTakeovers);

        await fleet.RefreshAsync();
        listener.RecordObservableInstruments();
        var w = Assert.Single(waits, x => x.Queue == "metrics-q");
        Assert.Equal("noop", w.Kind);
        Assert.InRange(w.Seconds, 0.3, 60);   // inserted -> first lease, with a 0.4 s pause between
        await using (var db = f.Tracker.CreateDb())
            Assert.Equal(await db.Runs.SumAsync(x => x.LeaseTakeovers), takeovers);

        // the reconciler's re-queue of a long-expired lease counts too, and the same start is not recorded twice
        await Task.Delay(1300);
        Assert.Contains(await f.Tracker.Runs.RequeueExpiredLeasesAsync(TimeSpan.Zero), x => x.RunId == run.Id);
        Assert.Equal(2, (await f.Tracker.Runs.GetAsync(run.Id))!.LeaseTakeovers);
        await fleet.RefreshAsync();
        Assert.Single(waits, x => x.Queue == "metrics-q");
    }

    [Fact]
    public async Task Hangfire_pages_name_the_run_and_link_to_it()
    {
        var sub = await f.Client(UserRole.Operator).PostAsync("/api/submit", new StringContent("kind: selftest\nname: named-in-hangfire\nparams: {n: 3}\n", Encoding.UTF8, "application/yaml"));
        using var doc = JsonDocument.Parse(await sub.Content.ReadAsStringAsync());
        var id = doc.RootElement.GetProperty("runs")[0].GetProperty("run_id").GetInt64();
        var run = await f.Tracker.Runs.GetAsync(id);
        Assert.NotNull(run!.HangfireJobId);

        using var c = f.Client(UserRole.Viewer);
        var details = WebUtility.HtmlDecode(await c.GetStringAsync($"/hangfire/jobs/details/{run.HangfireJobId}"));
        Assert.Contains($"selftest · named-in-hangfire · run {id}", details);
        Assert.Contains($"href=\"/runs/{id}\"", details);
        var queue = WebUtility.HtmlDecode(await c.GetStringAsync($"/hangfire/jobs/enqueued/{RunPriority.HangfireQueue(run.Queue, run.Priority)}"));
        Assert.Contains($"selftest · named-in-hangfire · run {id}", queue);
    }

    [Fact]
    public async Task System_metrics_are_drawn_apart_from_training_curves_and_on_the_workers_page()
    {
        var run = await f.Tracker.Runs.InsertAsync(new Run { Kind = "selftest", Name = "sys-run", Status = RunStatus.Succeeded });
        await f.Tracker.LogMetricsAsync(run.Id, [new("loss", 1, 2.0), new("loss", 2, 1.5), new("sys/gpu0/util_pct", 5, 80), new("sys/gpu0/util_pct", 35, 90)]);
        using var c = f.Client(UserRole.Viewer);
        var page = await c.GetStringAsync($"/runs/{run.Id}");
        var system = page[page.IndexOf("id=\"system\"", StringComparison.Ordinal)..];
        Assert.Contains("data-key=\"sys/gpu0/util_pct\"", system);
        var training = page[page.IndexOf("id=\"charts\"", StringComparison.Ordinal)..page.IndexOf("id=\"system\"", StringComparison.Ordinal)];
        Assert.Contains("data-key=\"loss\"", training);
        Assert.DoesNotContain("sys/gpu0", training);

        await f.Tracker.Runs.UpsertWorkerAsync(new WorkerInfo
        {
            Id = "sys-box", Host = "sys-box", Queues = "gpu", Devices = "cuda:0", Slots = "{\"cuda:0 (gpu)\": null}",
            System = "{\"sys/gpu0/util_pct\": 87, \"sys/gpu0/mem_used_mib\": 40960, \"sys/gpu0/mem_total_mib\": 81920, \"sys/gpu0/temp_c\": 61, \"sys/gpu0/power_w\": 312, \"sys/cpu_pct\": 150}",
        });
        var workers = WebUtility.HtmlDecode(await c.GetStringAsync("/workers"));
        Assert.Contains("<code>gpu0</code> 87% · 40.0/80.0 GiB · 61 °C · 312 W", workers);
        Assert.Contains("CPU 150%", workers);
    }

    static string Tag(ReadOnlySpan<KeyValuePair<string, object?>> tags, string key)
    {
        foreach (var t in tags) if (t.Key == key) return t.Value?.ToString() ?? "";
        return "";
    }

    /// <summary>The sample of <paramref name="name"/> whose labels include all of <paramref name="labels"/> (Prometheus text format).</summary>
    static double Value(string text, string name, params (string Key, string Value)[] labels)
    {
        var lines = text.Split('\n').Where(l => l.StartsWith(name + "{") || l.StartsWith(name + " "))
            .Where(l => labels.All(x => l.Contains($"{x.Key}=\"{x.Value}\""))).ToList();
        var line = Assert.Single(lines);
        var parts = line[(line.LastIndexOf('}') + 1)..].Trim().Split(' ');
        return double.Parse(parts[0], CultureInfo.InvariantCulture);
    }
}

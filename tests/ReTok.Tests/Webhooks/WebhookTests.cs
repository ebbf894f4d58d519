using System.Collections.Concurrent;
using ReTok.Engine;
using ReTok.Tests.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Webhooks;

/// <summary>
/// Issue 19.4: webhooks per experiment through the transactional outbox, against a real HTTP receiver and PostgreSQL.
/// Backoff is shrunk to milliseconds so retries take well under a second.
/// </summary>
public sealed class WebhookTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    const string Dash = "https://retok.lab.example";
    static WebhookOptions Fast(int maxAttempts = 5) => new()
    {
        DashboardUrl = Dash, MaxAttempts = maxAttempts, BackoffBase = TimeSpan.FromMilliseconds(40), MaxBackoff = TimeSpan.FromSeconds(2),
        PollInterval = TimeSpan.FromMilliseconds(50), Timeout = TimeSpan.FromSeconds(5),
    };

    static string Exp(string what) => $"hooks-{what}-{Guid.NewGuid().ToString("N")[..6]}";

    static async Task Until(Func<Task<bool>> cond, string what, double seconds = 30)
    {
        var end = DateTime.UtcNow.AddSeconds(seconds);
        while (!await cond())
        {
            if (DateTime.UtcNow > end) throw new Xunit.Sdk.XunitException($"timed out waiting for {what}");
            await Task.Delay(50);
        }
    }

    /// <summary>A run of the experiment that ends <paramref name="how"/> through the run store's real transitions (lease, then outcome).</summary>
    static async Task<long> EndRunAsync(Tracker t, string experiment, RunStatus how, string name = "r", string? reason = null)
    {
        var exp = await t.EnsureExperimentAsync(experiment);
        var run = await t.Runs.InsertAsync(new Run { Kind = "selftest", Name = name, ExperimentId = exp, Status = RunStatus.Queued, QueuedAt = DateTimeOffset.UtcNow });
        var lease = (await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("test", TimeSpan.FromMinutes(1))))!;
        if (how == RunStatus.Succeeded) await t.Runs.SucceedAsync(lease);
        else if (how == RunStatus.Failed) await t.Runs.FailAsync(lease, reason ?? "boom");
        else await t.Runs.CancelledAsync(lease, "cancelled by request");
        return run.Id;
    }

    [Fact]
    public async Task A_failed_and_a_succeeded_run_on_a_worker_each_deliver_one_message_with_fields_and_link()
    {
        await using var rx = await WebhookReceiver.StartAsync();
        var exp = Exp("e2e");
        var queue = "hooks-" + Guid.NewGuid().ToString("N")[..6];
        var o = TestEngine.Options(db.ConnectionString, "hooks") with { Webhooks = Fast() };
        await using var client = new JobClient(o, JobKindRegistry.Default, db.CreateTracker());
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        await t.Webhooks.AddAsync(exp, rx.Url("e2e"), [WebhookEvents.RunSucceeded, WebhookEvents.RunFailed], "#runs", "test");
        var ok = (await client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nname: fine\nexperiment: {exp}\nqueue: {queue}\nparams: {{n: 2, step_ms: 10}}\n"))).Runs[0].RunId;
        var bad = (await client.SubmitAsync(JobSpecs.Parse(
            $"kind: selftest\nname: broken\nexperiment: {exp}\nqueue: {queue}\nparams: {{n: 3, step_ms: 10, fail_at_step: 1}}\n"))).Runs[0].RunId;
        await using (var worker = new WorkerHost(o, new WorkerOptions { Queues = [queue], CpuWorkers = 2, Name = queue }, log: _ => { }))
        {
            await worker.StartAsync();
            await Until(async () => (await t.Runs.GetManyAsync([ok, bad])).All(r => r.Status.IsTerminal()), "both runs to end");
            await Until(() => Task.FromResult(rx.For("e2e").Count >= 2), "two deliveries");
            await Task.Delay(600);   // several dispatcher polls: nothing more may arrive
        }
        var hits = rx.For("e2e");
        Assert.Equal(2, hits.Count);
        Assert.Equal(2, hits.Select(h => h.IdempotencyKey).Distinct().Count());
        var failed = hits.Single(h => h.Event == WebhookEvents.RunFailed).Json;
        Assert.Equal("run.failed", failed.GetProperty("event").GetString());
        Assert.Equal(bad, failed.GetProperty("run_id").GetInt64());
        Assert.Equal("selftest", failed.GetProperty("kind").GetString());
        Assert.Equal("broken", failed.GetProperty("name").GetString());
        Assert.Equal(exp, failed.GetProperty("experiment").GetString());
        Assert.Equal("Failed", failed.GetProperty("status").GetString());
        Assert.Contains("fail_at_step=1", failed.GetProperty("error").GetString());
        Assert.Equal($"{Dash}/runs/{bad}", failed.GetProperty("link").GetString());
        Assert.True(failed.GetProperty("duration_seconds").GetDouble() >= 0);
        Assert.Contains($"run {bad} 'broken' (selftest) failed", failed.GetProperty("text").GetString());
        Assert.Contains($"{Dash}/runs/{bad}", failed.GetProperty("text").GetString());
        var fine = hits.Single(h => h.Event == WebhookEvents.RunSucceeded).Json;
        Assert.Equal(ok, fine.GetProperty("run_id").GetInt64());
        Assert.Equal("Succeeded", fine.GetProperty("status").GetString());
        Assert.Equal(System.Text.Json.JsonValueKind.Null, fine.GetProperty("error").ValueKind);
        Assert.Equal($"{Dash}/runs/{ok}", fine.GetProperty("link").GetString());
        var rows = await t.Webhooks.DeliveriesAsync(exp);
        Assert.All(rows, d => { Assert.Equal(DeliveryStatus.Delivered, d.Status); Assert.Equal(1, d.Attempts); Assert.Equal(200, d.LastStatus); });
    }

    [Fact]
    public async Task Only_subscribed_events_are_queued_and_a_rolled_back_transition_queues_nothing()
    {
        await using var t = db.CreateTracker();
        var exp = Exp("events");
        await t.Webhooks.AddAsync(exp, "https://hooks.example.com/a/b/c", [WebhookEvents.RunFailed], null, "test");
        await EndRunAsync(t, exp, RunStatus.Succeeded);
        await EndRunAsync(t, exp, RunStatus.Cancelled);
        var failed = await EndRunAsync(t, exp, RunStatus.Failed, reason: "oops Password=hunter2 at step 3\nstack line");
        // a stale executor's outcome (lease lost) changes nothing and notifies nothing
        var exp2 = await t.EnsureExperimentAsync(exp);
        var run = await t.Runs.InsertAsync(new Run { Kind = "selftest", ExperimentId = exp2, Status = RunStatus.Queued });
        var old = (await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("a", TimeSpan.FromMilliseconds(1))))!;
        await Task.Delay(20);
        _ = (await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("b", TimeSpan.FromMinutes(1))))!;
        await Assert.ThrowsAsync<LeaseLostException>(() => t.Runs.FailAsync(old, "stale"));
        var rows = await t.Webhooks.DeliveriesAsync(exp);
        var d = Assert.Single(rows);
        Assert.Equal((WebhookEvents.RunFailed, failed), (d.Event, d.RunId));
        var facts = (await t.Webhooks.ClaimAsync("peek", 10, TimeSpan.FromSeconds(1), d.Id)).Single();
        var payload = WebhookDispatcher.BuildPayload(facts.Event, facts.Id, facts.IdempotencyKey, facts.Facts, null);
        Assert.Equal("oops Password=*** at step 3", payload["error"]!.GetValue<string>());   // redacted, first line only
        Assert.Null(payload["link"]);
    }

    [Fact]
    public async Task A_receiver_answering_500_twice_then_200_gets_three_attempts_with_one_key_and_one_success()
    {
        await using var rx = await WebhookReceiver.StartAsync();
        rx.Answer = (_, n) => n <= 2 ? (500, null) : (200, null);
        await using var t = db.CreateTracker();
        var exp = Exp("flaky");
        await t.Webhooks.AddAsync(exp, rx.Url("flaky"), null, null, "test");
        var run = await EndRunAsync(t, exp, RunStatus.Failed);
        var logs = new ConcurrentQueue<string>();
        using var d = new WebhookDispatcher(t, Fast(), logs.Enqueue);
        await Until(async () => { await d.RunOnceAsync(); return (await t.Webhooks.DeliveriesAsync(exp)).Single().Status != DeliveryStatus.Pending; }, "delivery");
        var row = (await t.Webhooks.DeliveriesAsync(exp)).Single();
        Assert.Equal((DeliveryStatus.Delivered, 3, 200, run), (row.Status, row.Attempts, row.LastStatus, row.RunId));
        var hits = rx.For("flaky");
        Assert.Equal(3, hits.Count);
        Assert.Single(hits.Select(h => h.IdempotencyKey).Distinct());
        Assert.True(hits[2].At - hits[1].At >= TimeSpan.FromMilliseconds(70), "the second retry waits about twice the first");
        Assert.Equal(2, logs.Count(l => l.Contains("HTTP 500")));
        Assert.All(logs, l => { Assert.DoesNotContain(rx.Url("flaky"), l); Assert.DoesNotContain(WebhookReceiver.SecretBody, l); });
    }

    [Fact]
    public async Task Retry_after_of_a_429_is_honoured()
    {
        await using var rx = await WebhookReceiver.StartAsync();
        rx.Answer = (_, n) => n == 1 ? (429, "1") : (200, null);
        await using var t = db.CreateTracker();
        var exp = Exp("429");
        await t.Webhooks.AddAsync(exp, rx.Url("limited"), null, null, "test");
        await EndRunAsync(t, exp, RunStatus.Succeeded);
        using var d = new WebhookDispatcher(t, Fast());
        await Until(async () => { await d.RunOnceAsync(); return (await t.Webhooks.DeliveriesAsync(exp)).Single().Status == DeliveryStatus.Delivered; }, "delivery");
        var hits = rx.For("limited");
        Assert.Equal(2, hits.Count);
        Assert.True(hits[1].At - hits[0].At >= TimeSpan.FromMilliseconds(900), $"Retry-After: 1 was not honoured ({(hits[1].At - hits[0].At).TotalMilliseconds} ms)");
    }

    [Fact]
    public async Task A_dead_receiver_ends_dead_after_N_attempts_with_the_status_recorded_and_an_unreachable_one_with_status_0()
    {
        await using var rx = await WebhookReceiver.StartAsync();
        rx.Answer = (_, _) => (503, null);
        await using var t = db.CreateTracker();
        var exp = Exp("dead");
        await t.Webhooks.AddAsync(exp, rx.Url("down"), null, "down", "test");
        // a port nobody listens on: bind one, note it, close it
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        var port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        await t.Webhooks.AddAsync(exp, $"http://127.0.0.1:{port}/services/T0/B0/gone-token", null, "gone", "test");
        await EndRunAsync(t, exp, RunStatus.Failed);
        var logs = new ConcurrentQueue<string>();
        using var d = new WebhookDispatcher(t, Fast(maxAttempts: 3), logs.Enqueue);
        await Until(async () => { await d.RunOnceAsync(); return (await t.Webhooks.DeliveriesAsync(exp)).All(x => x.Status == DeliveryStatus.Dead); }, "both dead");
        var rows = await t.Webhooks.DeliveriesAsync(exp);
        var down = rows.Single(x => x.Webhook == "down");
        Assert.Equal((3, 503), (down.Attempts, down.LastStatus));
        Assert.Equal("gave up after 3 attempts: HTTP 503 Service Unavailable", down.LastError);
        var gone = rows.Single(x => x.Webhook == "gone");
        Assert.Equal((3, 0), (gone.Attempts, gone.LastStatus));
        Assert.StartsWith("gave up after 3 attempts: ConnectionError", gone.LastError);
        Assert.Equal(3, rx.For("down").Count);
        Assert.All(rows, x => Assert.DoesNotContain("token", x.LastError));
        Assert.Contains(logs, x => x.Contains("dead after attempt 3") && x.Contains("http://127.0.0.1:" + port + "/…/oken"));
        Assert.All(logs, x => { Assert.DoesNotContain("gone-token", x); Assert.DoesNotContain(rx.Url("down"), x); Assert.DoesNotContain(WebhookReceiver.SecretBody, x); });
        Assert.Equal(0, await t.Webhooks.PruneAsync(TimeSpan.FromDays(1)));   // retention keeps recent history
        Assert.True(await t.Webhooks.PruneAsync(TimeSpan.Zero) >= 2);
        Assert.Empty(await t.Webhooks.DeliveriesAsync(exp));
    }

    [Fact]
    public async Task Two_dispatchers_running_at_once_deliver_each_message_once()
    {
        await using var rx = await WebhookReceiver.StartAsync();
        await using var t = db.CreateTracker();
        var exp = Exp("race");
        await t.Webhooks.AddAsync(exp, rx.Url("race"), null, null, "test");
        var runs = new List<long>();
        for (var i = 0; i < 20; i++) runs.Add(await EndRunAsync(t, exp, i % 2 == 0 ? RunStatus.Failed : RunStatus.Succeeded, $"r{i}"));
        using var a = new WebhookDispatcher(t, Fast() with { BatchSize = 3 });
        await using var t2 = db.CreateTracker();
        using var b = new WebhookDispatcher(t2, Fast() with { BatchSize = 3 });
        using var stop = new CancellationTokenSource();
        var loops = new[] { a.RunAsync(stop.Token), b.RunAsync(stop.Token) };
        await Until(async () => (await t.Webhooks.DeliveriesAsync(exp)).All(x => x.Status == DeliveryStatus.Delivered), "20 deliveries");
        await Task.Delay(300);
        stop.Cancel();
        await Task.WhenAll(loops);
        var hits = rx.For("race");
        Assert.Equal(20, hits.Count);
        Assert.Equal(20, hits.Select(h => h.IdempotencyKey).Distinct().Count());
        Assert.Equal(runs.Order(), hits.Select(h => h.Json.GetProperty("run_id").GetInt64()).Order());
        Assert.All(await t.Webhooks.DeliveriesAsync(exp), x => Assert.Equal(1, x.Attempts));
    }

    [Fact]
    public async Task Pipeline_finished_fires_once_when_two_last_steps_end_together_not_for_a_cancelled_leftover_and_again_after_a_retry()
    {
        await using var rx = await WebhookReceiver.StartAsync();
        await using var t = db.CreateTracker();
        var exp = Exp("pipe");
        var expId = await t.EnsureExperimentAsync(exp);
        await t.Webhooks.AddAsync(exp, rx.Url("pipe"), [WebhookEvents.PipelineFinished], null, "test");
        var p = new Pipeline { Name = "chain", ExperimentId = expId };
        Run Step(string step, RunStatus s, params string[] needs) => new()
        {
            Kind = "selftest", Name = step, ExperimentId = expId, Status = s, PipelineStep = step, DependsOn = needs.ToList(),
            QueuedAt = s == RunStatus.Queued ? DateTimeOffset.UtcNow : null,
        };
        var runs = new List<Run> { Step("a", RunStatus.Queued), Step("b", RunStatus.Waiting, "a"), Step("c", RunStatus.Waiting, "a"), Step("d", RunStatus.Waiting, "c") };
        foreach (var r in runs) r.PipelineId = p.Id;
        await t.Runs.CreateAsync(p, runs);
        async Task<Lease> L(long id) => (await t.Runs.TryAcquireLeaseAsync(id, new LeaseRequest("w" + id, TimeSpan.FromMinutes(1))))!;
        var ready = await t.Runs.SucceedAsync(await L(runs[0].Id));
        Assert.Equal(2, ready.Count);
        var (lb, lc) = (await L(runs[1].Id), await L(runs[2].Id));
        await Task.WhenAll(t.Runs.SucceedAsync(lb), t.Runs.FailAsync(lc, "c broke"));   // the two last steps end at the same moment
        Assert.Single(await t.Webhooks.DeliveriesAsync(exp));
        // d waits behind the failure: cancelling it is no new finish
        Assert.Equal([runs[3].Id], (await t.Runs.RequestCancelAsync(runs[3].Id)).CancelledNow);
        Assert.Single(await t.Webhooks.DeliveriesAsync(exp));
        // a retried step that ends again brings the pipeline to rest again: a second message
        Assert.NotNull(await t.Runs.ResetForRetryAsync(runs[2].Id));
        await t.Runs.SucceedAsync(await L(runs[2].Id));
        using var d = new WebhookDispatcher(t, Fast());
        await Until(async () => { await d.RunOnceAsync(); return rx.For("pipe").Count == 2; }, "two pipeline messages");
        var msgs = rx.For("pipe").Select(h => h.Json).OrderBy(j => j.GetProperty("delivery_id").GetInt64()).ToList();
        Assert.Equal(["Failed", "Cancelled"], msgs.Select(m => m.GetProperty("status").GetString()));
        Assert.All(msgs, m =>
        {
            Assert.Equal("pipeline.finished", m.GetProperty("event").GetString());
            Assert.Equal("chain", m.GetProperty("name").GetString());
            Assert.Equal($"{Dash}/runs?pipeline={p.Id}", m.GetProperty("link").GetString());
        });
        Assert.Contains("pipeline chain failed (2/4 runs succeeded)", msgs[0].GetProperty("text").GetString());
        Assert.Contains("pipeline chain cancelled (3/4 runs succeeded)", msgs[1].GetProperty("text").GetString());
    }

    [Fact]
    public async Task A_cancel_cascade_reports_the_cancelled_run_and_the_pipeline_once()
    {
        await using var t = db.CreateTracker();
        var exp = Exp("cancel");
        var expId = await t.EnsureExperimentAsync(exp);
        await t.Webhooks.AddAsync(exp, "https://hooks.example.com/x/y/z", null, null, "test");
        var p = new Pipeline { Name = "two", ExperimentId = expId };
        var runs = new List<Run>
        {
            new() { Kind = "selftest", ExperimentId = expId, Status = RunStatus.Queued, PipelineStep = "a", PipelineId = p.Id, QueuedAt = DateTimeOffset.UtcNow },
            new() { Kind = "selftest", ExperimentId = expId, Status = RunStatus.Waiting, PipelineStep = "b", DependsOn = ["a"], PipelineId = p.Id },
        };
        await t.Runs.CreateAsync(p, runs);
        var o = await t.Runs.RequestCancelAsync(runs[0].Id);
        Assert.Equal(2, o.CancelledNow.Count);
        var rows = await t.Webhooks.DeliveriesAsync(exp);
        Assert.Equal(new (string, long?)[] { (WebhookEvents.PipelineFinished, null), (WebhookEvents.RunCancelled, runs[0].Id) },
            rows.Select(r => (r.Event, r.RunId)).OrderBy(x => x.Item1, StringComparer.Ordinal));
    }

    [Fact]
    public async Task Shards_report_only_failures_and_the_aggregator_reports_the_fan_out()
    {
        await using var t = db.CreateTracker();
        var exp = Exp("shards");
        var expId = await t.EnsureExperimentAsync(exp);
        await t.Webhooks.AddAsync(exp, "https://hooks.example.com/s/h/ards", null, null, "test");
        var parent = await t.Runs.InsertAsync(new Run { Kind = "selftest", ExperimentId = expId, Status = RunStatus.Queued });
        var pl = (await t.Runs.TryAcquireLeaseAsync(parent.Id, new LeaseRequest("p", TimeSpan.FromMinutes(1))))!;
        var child = new ChildRun("selftest", "{}", "", "cpu");
        var (fan, _) = await t.Runs.SpawnShardsAsync(pl.Fence, child, [child, child]);
        await t.Runs.SucceedAsync(pl);   // continued by its aggregator: no message
        async Task<Lease> L(long id) => (await t.Runs.TryAcquireLeaseAsync(id, new LeaseRequest("w" + id, TimeSpan.FromMinutes(1))))!;
        await t.Runs.SucceedAsync(await L(fan.ShardRunIds[0]));   // a shard's success: no message
        await t.Runs.FailAsync(await L(fan.ShardRunIds[1]), "shard broke");
        Assert.NotNull(await t.Runs.ResetForRetryAsync(fan.ShardRunIds[1]));
        Assert.Single(await t.Runs.SucceedAsync(await L(fan.ShardRunIds[1])));
        await t.Runs.SucceedAsync(await L(fan.AggregatorRunId));
        var rows = await t.Webhooks.DeliveriesAsync(exp);
        Assert.Equal(new (string, long?)[] { (WebhookEvents.RunFailed, fan.ShardRunIds[1]), (WebhookEvents.RunSucceeded, fan.AggregatorRunId) },
            rows.OrderBy(r => r.Id).Select(r => (r.Event, r.RunId)));
    }

    [Fact]
    public void Urls_are_validated_naming_the_field_and_masked()
    {
        Assert.Null(WebhookUrl.Validate("https://hooks.slack.com/services/T0/B0/abcdefgh"));
        Assert.Equal("url: scheme 'ftp' is not allowed (http or https only)", WebhookUrl.Validate("ftp://x.example/a"));
        Assert.Equal("url: expected an absolute http:// or https:// URL", WebhookUrl.Validate("/relative/path"));
        Assert.StartsWith("url: required", WebhookUrl.Validate(" "));
        Assert.StartsWith("url: must not carry user:password@", WebhookUrl.Validate("https://u:p@x.example/a"));
        Assert.Equal("url: scheme 'javascript' is not allowed (http or https only)", WebhookUrl.Validate("javascript:alert(1)"));
        Assert.Equal("https://hooks.slack.com/…/WXYZ", WebhookUrl.Mask("https://hooks.slack.com/services/T0AAA/B0BBB/abcdWXYZ"));
        Assert.Equal("http://127.0.0.1:8080/…/oken", WebhookUrl.Mask("http://127.0.0.1:8080/x/y/secret-token"));
        Assert.Equal("https://x.example/…", WebhookUrl.Mask("https://x.example/short"));
        Assert.Equal("https://x.example/", WebhookUrl.Mask("https://x.example"));
    }
}

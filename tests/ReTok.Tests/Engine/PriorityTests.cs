using ReTok.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>Issue 19.5: run priorities (high/normal/low) as Hangfire queue variants, set at submit, changeable while queued.</summary>
public sealed class PriorityTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    [Fact]
    public void Specs_take_a_priority()
    {
        Assert.Equal(RunPriority.High, JobSpecs.Parse("kind: selftest\npriority: high\n").Steps[0].Priority);
        Assert.Equal(RunPriority.Normal, JobSpecs.Parse("kind: selftest\n").Steps[0].Priority);
        var bad = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse("kind: selftest\npriority: urgent\n"));
        Assert.Contains("priority: 'urgent' is not high, normal or low", bad.Errors);
        Assert.Equal(["0-gpu", "1-gpu", "2-gpu", "gpu"], RunPriority.ServedQueues("gpu"));
    }

    [Fact]
    public async Task A_worker_starts_high_before_normal_before_low_and_a_queued_run_can_be_promoted()
    {
        var queue = "prio-" + Guid.NewGuid().ToString("N")[..6];
        var o = TestEngine.Options(db.ConnectionString, "prio");
        var client = new JobClient(o, JobKindRegistry.Default, db.CreateTracker());
        await client.EnsureSchemaAsync();
        async Task<long> Submit(string name, string priority) =>
            (await client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nname: {name}\nqueue: {queue}\npriority: {priority}\nparams: {{n: 2, step_ms: 20}}\n"))).Runs[0].RunId;
        // submitted oldest first, so without priorities they would run a, b, c, d
        var a = await Submit("a-low", "low");
        var b = await Submit("b-normal", "normal");
        var c = await Submit("c-high", "high");
        var d = await Submit("d-promoted", "normal");
        var before = (await client.Tracker.Runs.GetAsync(d))!.HangfireJobId;
        Assert.Equal(RunStatus.Queued, await client.SetPriorityAsync(d, RunPriority.High));
        var moved = await client.Tracker.Runs.GetAsync(d);
        Assert.Equal(RunPriority.High, moved!.Priority);
        Assert.NotEqual(before, moved.HangfireJobId);   // re-enqueued on the high variant; the old job is deleted

        await using (var worker = new WorkerHost(o, new WorkerOptions { Queues = [queue], CpuWorkers = 1, Name = queue }, log: _ => { }))
        {
            await worker.StartAsync();
            var deadline = DateTime.UtcNow.AddSeconds(90);
            List<Run> runs;
            while (!(runs = (await client.Tracker.Runs.GetManyAsync([a, b, c, d]))).All(r => r.Status.IsTerminal()) && DateTime.UtcNow < deadline) await Task.Delay(100);
            Assert.All(runs, r => Assert.Equal(RunStatus.Succeeded, r.Status));
            Assert.Equal(["c-high", "d-promoted", "b-normal", "a-low"], runs.OrderBy(r => r.StartedAt).Select(r => r.Name));
            Assert.All(runs, r => Assert.Equal(1, r.Attempt));   // the deleted job did not run d a second time
        }
        Assert.Null(await client.SetPriorityAsync(a, RunPriority.High));   // started runs keep their place
    }

    [Fact]
    public async Task A_run_cancelled_while_queued_leaves_the_hangfire_queue()
    {
        var queue = "cancelq-" + Guid.NewGuid().ToString("N")[..6];
        var client = new JobClient(TestEngine.Options(db.ConnectionString, "cancelq"), JobKindRegistry.Default, db.CreateTracker());
        await client.EnsureSchemaAsync();
        var id = (await client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nqueue: {queue}\nparams: {{n: 1}}\n"))).Runs[0].RunId;
        var job = (await client.Tracker.Runs.GetAsync(id))!.HangfireJobId!;
        using var conn = client.Storage.GetConnection();
        Assert.Equal("Enqueued", conn.GetStateData(job).Name);
        Assert.Contains(id, (await client.CancelAsync(id)).CancelledNow);
        Assert.Equal(RunStatus.Cancelled, (await client.Tracker.Runs.GetAsync(id))!.Status);
        // Deleted: Hangfire's pages show it so, and a worker that fetches it discards it without starting the executor
        Assert.Equal("Deleted", conn.GetStateData(job).Name);
    }
}

using ReTok.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>Issue 20.1: a run may ask for N devices (`gpus: N`); a worker leases them together or not at all.</summary>
public sealed class MultiDeviceTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    [Fact]
    public async Task The_pool_hands_out_all_asked_slots_at_once_first_come_first_served()
    {
        var pool = new DevicePool(["cuda:0", "cuda:1", "cuda:2"]);
        using var a = await pool.AcquireAsync(1, default);
        var b = pool.AcquireAsync(2, default, count: 3);   // needs all three: waits for a
        var c = pool.AcquireAsync(3, default, count: 1);   // would fit now, but b came first
        await Task.Delay(100);
        Assert.False(b.IsCompleted);
        Assert.False(c.IsCompleted);
        Assert.Equal(1, pool.Snapshot().Count(kv => kv.Value is not null));   // nobody holds a part of what it waits for
        a.Dispose();
        using (var bSlots = await b.WaitAsync(TimeSpan.FromSeconds(5)))
        {
            Assert.Equal(["cuda:0", "cuda:1", "cuda:2"], bSlots.Devices);
            Assert.Equal("cuda:0", bSlots.Device);
            Assert.All(pool.Snapshot().Values, v => Assert.Equal(2, v));
            Assert.False(c.IsCompleted);
        }
        using var cSlot = await c.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Single(cSlot.Devices);

        var tooMany = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => pool.AcquireAsync(4, default, count: 4));
        Assert.Contains("4 device(s) asked, this server has 3 (cuda:0, cuda:1, cuda:2)", tooMany.Message);
    }

    [Fact]
    public async Task Two_runs_that_each_need_the_whole_pool_never_deadlock_and_a_cancelled_waiter_lets_others_in()
    {
        var pool = new DevicePool(["cuda:0", "cuda:1"]);
        for (int round = 0; round < 50; round++)
        {
            var x = pool.AcquireAsync(10, default, count: 2);
            var y = pool.AcquireAsync(11, default, count: 2);
            (await x.WaitAsync(TimeSpan.FromSeconds(5))).Dispose();
            (await y.WaitAsync(TimeSpan.FromSeconds(5))).Dispose();
        }
        using var held = await pool.AcquireAsync(1, default);
        using var cts = new CancellationTokenSource();
        var big = pool.AcquireAsync(2, cts.Token, count: 2);
        var small = pool.AcquireAsync(3, default, count: 1);
        await Task.Delay(50);
        Assert.False(small.IsCompleted);   // behind the big request
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => big);
        using var s = await small.WaitAsync(TimeSpan.FromSeconds(5));   // served once the head left
        Assert.Equal("cuda:1", s.Device);
    }

    [Fact]
    public void Specs_take_gpus_as_a_whole_number()
    {
        var plan = JobSpecs.Parse("kind: selftest\nqueue: gpu-h100\ngpus: 4\nparams: {n: 2}\n");
        Assert.Equal(4, plan.Steps[0].Gpus);
        Assert.Equal(1, JobSpecs.Parse("kind: selftest\nparams: {n: 2}\n").Steps[0].Gpus);
        var bad = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse("pipeline: p\nsteps:\n  a: {kind: selftest, gpus: two}\n  b: {kind: selftest, gpus: 0}\n"));
        Assert.Contains("steps.a.gpus: 'two' is not a whole number from 1 to 64", bad.Errors);
        Assert.Contains("steps.b.gpus: '0' is not a whole number from 1 to 64", bad.Errors);
    }

    [Fact]
    public async Task A_worker_leases_n_slots_for_one_run_and_submit_refuses_what_no_worker_has()
    {
        var queue = "multi-" + Guid.NewGuid().ToString("N")[..6];
        var o = TestEngine.Options(db.ConnectionString, "multi");
        var client = new JobClient(o, JobKindRegistry.Default, db.CreateTracker());
        await client.EnsureSchemaAsync();
        // accepted while no worker serves the queue (a fleet may be scaling up); the worker then refuses it with the reason
        var tooBig = (await client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nqueue: {queue}\ngpus: 3\nparams: {{n: 2}}\n"))).Runs[0].RunId;

        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = [queue], CpuWorkers = 2, Name = queue }, log: _ => { });
        await worker.StartAsync();
        var two = (await client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nqueue: {queue}\ngpus: 2\nparams: {{n: 4, step_ms: 20}}\n"))).Runs[0].RunId;
        var refused = await Assert.ThrowsAsync<SpecValidationException>(() => client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nqueue: {queue}\ngpus: 5\nparams: {{n: 2}}\n")));
        Assert.Contains($"gpus: 5 devices asked, but the largest live worker on queue '{queue}' ({queue}) has 2 (cpu#0, cpu#1)", Assert.Single(refused.Errors));

        var t = worker.Client.Tracker;
        var deadline = DateTime.UtcNow.AddSeconds(60);
        Run? ok = null, bad = null;
        while (DateTime.UtcNow < deadline)
        {
            (ok, bad) = (await t.Runs.GetAsync(two), await t.Runs.GetAsync(tooBig));
            if (ok!.Status.IsTerminal() && bad!.Status.IsTerminal()) break;
            await Task.Delay(100);
        }
        Assert.Equal(RunStatus.Succeeded, ok!.Status);
        Assert.Equal("cpu,cpu", ok.Device);   // both slots recorded on the run
        Assert.Contains(await t.GetLogsAsync(two), l => l.Message == "devices: cpu, cpu");
        Assert.Equal(RunStatus.Failed, bad!.Status);
        Assert.Contains($"gpus: 3 devices asked, but worker {queue} serves queue '{queue}' with 2 (cpu, cpu)", bad.FailureReason);
    }
}

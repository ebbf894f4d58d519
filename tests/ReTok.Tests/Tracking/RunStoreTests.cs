using ReTok.Tracking;

namespace ReTok.Tests.Tracking;

/// <summary><see cref="RunStore"/>: the transition table, the fan-in counter and pipeline advance under concurrent completion, cancel cascades; against PostgreSQL.</summary>
public sealed class RunStoreTests : IClassFixture<TestDatabase>
{
    readonly TestDatabase _db;
    public RunStoreTests(TestDatabase db) => _db = db;

    [Fact]
    public void TransitionTableHasFinalSucceededAndRetriesFromFailedOrCancelledOnly()
    {
        Assert.Equal(Enum.GetValues<RunStatus>().Order(), RunStore.Transitions.Keys.Order());
        Assert.Empty(RunStore.Transitions[RunStatus.Succeeded]);
        Assert.True(RunStore.IsAllowed(RunStatus.Running, RunStatus.Running)); // lease takeover
        Assert.False(RunStore.IsAllowed(RunStatus.Waiting, RunStatus.Running)); // a waiting run is queued first
        Assert.False(RunStore.IsAllowed(RunStatus.Queued, RunStatus.Succeeded));
        foreach (var from in Enum.GetValues<RunStatus>())
            Assert.Equal(from is RunStatus.Failed or RunStatus.Cancelled, RunStore.IsAllowed(from, RunStatus.Waiting));
        Assert.Equal([RunStatus.Waiting, RunStatus.Queued], RunStore.Initial.Order());
    }

    [Fact]
    public async Task ASubmissionCreatesItsRunsWaitingOrQueuedOnly()
    {
        await using var t = _db.CreateTracker();
        var ok = new Run { Kind = "x" };
        await Assert.ThrowsAsync<InvalidOperationException>(() => t.Runs.CreateAsync(null, [ok, new Run { Kind = "x", Status = RunStatus.Running }]));
        Assert.Equal(0, ok.Id);
        await t.Runs.CreateAsync(null, [ok]);
        Assert.Equal(RunStatus.Queued, (await t.Runs.GetAsync(ok.Id))!.Status);
    }

    [Fact]
    public async Task ConcurrentShardCompletionsQueueTheAggregatorExactlyOnce()
    {
        await using var t = _db.CreateTracker();
        const int n = 24;
        var agg = await t.Runs.InsertAsync(new Run { Kind = "agg", Status = RunStatus.Waiting, PendingChildren = n });
        var leases = new List<Lease>();
        for (var i = 0; i < n; i++)
        {
            var s = await t.Runs.InsertAsync(new Run { Kind = "shard", FanInRunId = agg.Id, ShardIndex = i });
            leases.Add((await t.Runs.TryAcquireLeaseAsync(s.Id, new LeaseRequest($"w{i}", TimeSpan.FromMinutes(1))))!);
        }
        // All shards complete at once, each on its own connection and transaction.
        using var go = new ManualResetEventSlim();
        var tasks = leases.Select(l => Task.Run(async () => { go.Wait(); return await t.Runs.SucceedAsync(l); })).ToList();
        go.Set();
        var ready = (await Task.WhenAll(tasks)).SelectMany(r => r).ToList();
        Assert.Equal([agg.Id], ready.Select(r => r.RunId));
        var a = await t.Runs.GetAsync(agg.Id);
        Assert.Equal((RunStatus.Queued, 0), (a!.Status, a.PendingChildren));

        // A re-delivered shard (stale lease) cannot complete, or decrement, a second time.
        await Assert.ThrowsAsync<LeaseLostException>(() => t.Runs.SucceedAsync(leases[0]));
        Assert.Equal(0, (await t.Runs.GetAsync(agg.Id))!.PendingChildren);
    }

    [Fact]
    public async Task FailedShardLeavesTheAggregatorWaitingUntilItsRetrySucceeds()
    {
        await using var t = _db.CreateTracker();
        var agg = await t.Runs.InsertAsync(new Run { Kind = "agg", Status = RunStatus.Waiting, PendingChildren = 2 });
        var s0 = await t.Runs.InsertAsync(new Run { Kind = "shard", FanInRunId = agg.Id, ShardIndex = 0 });
        var s1 = await t.Runs.InsertAsync(new Run { Kind = "shard", FanInRunId = agg.Id, ShardIndex = 1 });
        var l0 = (await t.Runs.TryAcquireLeaseAsync(s0.Id, new LeaseRequest("a", TimeSpan.FromMinutes(1))))!;
        var l1 = (await t.Runs.TryAcquireLeaseAsync(s1.Id, new LeaseRequest("b", TimeSpan.FromMinutes(1))))!;
        Assert.Empty(await t.Runs.SucceedAsync(l0));
        await t.Runs.FailAsync(l1, "disk full");
        var a = await t.Runs.GetAsync(agg.Id);
        Assert.Equal((RunStatus.Waiting, 1), (a!.Status, a.PendingChildren));
        Assert.Contains("disk full", a.FailureReason);
        // Retry the failed shard alone (what `retok runs retry` does), then it succeeds.
        await using (var cmd = t.DataSource.CreateCommand("UPDATE retok.runs SET status = 'Queued' WHERE id = @id"))
        { cmd.Parameters.AddWithValue("id", s1.Id); await cmd.ExecuteNonQueryAsync(); }
        var l1b = (await t.Runs.TryAcquireLeaseAsync(s1.Id, new LeaseRequest("c", TimeSpan.FromMinutes(1))))!;
        Assert.Equal([agg.Id], (await t.Runs.SucceedAsync(l1b)).Select(r => r.RunId));
        Assert.Equal(RunStatus.Succeeded, (await t.Runs.GetAsync(s0.Id))!.Status);
        Assert.Equal(1, (await t.Runs.GetAsync(s0.Id))!.Attempt);
        Assert.Null((await t.Runs.GetAsync(agg.Id))!.FailureReason);
    }

    [Fact]
    public async Task TwoStepsFinishingTogetherQueueTheirCommonDependentOnce()
    {
        await using var t = _db.CreateTracker();
        for (var round = 0; round < 5; round++)
        {
            var pid = Guid.NewGuid();
            await using (var db = t.CreateDb()) { db.Pipelines.Add(new Pipeline { Id = pid, Name = "p" }); await db.SaveChangesAsync(); }
            var b = await t.Runs.InsertAsync(new Run { Kind = "x", PipelineId = pid, PipelineStep = "b" });
            var c = await t.Runs.InsertAsync(new Run { Kind = "x", PipelineId = pid, PipelineStep = "c" });
            var d = await t.Runs.InsertAsync(new Run { Kind = "x", PipelineId = pid, PipelineStep = "d", Status = RunStatus.Waiting, DependsOn = ["b", "c"] });
            var lb = (await t.Runs.TryAcquireLeaseAsync(b.Id, new LeaseRequest("1", TimeSpan.FromMinutes(1))))!;
            var lc = (await t.Runs.TryAcquireLeaseAsync(c.Id, new LeaseRequest("2", TimeSpan.FromMinutes(1))))!;
            var results = await Task.WhenAll(Task.Run(() => t.Runs.SucceedAsync(lb)), Task.Run(() => t.Runs.SucceedAsync(lc)));
            Assert.Equal([d.Id], results.SelectMany(r => r).Select(r => r.RunId));
            Assert.Equal(RunStatus.Queued, (await t.Runs.GetAsync(d.Id))!.Status);
        }
    }

    [Fact]
    public async Task CancelCascadesToShardsAggregatorAndWaitingDownstreamSteps()
    {
        await using var t = _db.CreateTracker();
        var pid = Guid.NewGuid();
        await using (var db = t.CreateDb()) { db.Pipelines.Add(new Pipeline { Id = pid, Name = "p" }); await db.SaveChangesAsync(); }
        var parent = await t.Runs.InsertAsync(new Run { Kind = "x", PipelineId = pid, PipelineStep = "a" });
        var agg = await t.Runs.InsertAsync(new Run { Kind = "agg", Status = RunStatus.Waiting, PendingChildren = 2, ParentRunId = parent.Id, PipelineId = pid, PipelineStep = "a" });
        var s0 = await t.Runs.InsertAsync(new Run { Kind = "s", ParentRunId = parent.Id, FanInRunId = agg.Id, ShardIndex = 0 });
        var s1 = await t.Runs.InsertAsync(new Run { Kind = "s", ParentRunId = parent.Id, FanInRunId = agg.Id, ShardIndex = 1 });
        await t.Runs.TryAcquireLeaseAsync(s1.Id, new LeaseRequest("w", TimeSpan.FromMinutes(1)));
        var next = await t.Runs.InsertAsync(new Run { Kind = "x", PipelineId = pid, PipelineStep = "b", Status = RunStatus.Waiting, DependsOn = ["a"] });
        var last = await t.Runs.InsertAsync(new Run { Kind = "x", PipelineId = pid, PipelineStep = "c", Status = RunStatus.Waiting, DependsOn = ["b"] });
        var other = await t.Runs.InsertAsync(new Run { Kind = "x" });
        await using (var cmd = t.DataSource.CreateCommand("UPDATE retok.runs SET status = 'Succeeded', continued_by_run_id = @a WHERE id = @p"))
        { cmd.Parameters.AddWithValue("a", agg.Id); cmd.Parameters.AddWithValue("p", parent.Id); await cmd.ExecuteNonQueryAsync(); }

        var o = await t.Runs.RequestCancelAsync(parent.Id);
        Assert.Equal(new[] { agg.Id, s0.Id, next.Id, last.Id }.Order(), o.CancelledNow.Order());
        Assert.Equal([s1.Id], o.CancelRequested);
        Assert.Equal(RunStatus.Queued, (await t.Runs.GetAsync(other.Id))!.Status);
        Assert.Equal(RunStatus.Succeeded, (await t.Runs.GetAsync(parent.Id))!.Status);
        Assert.True((await t.Runs.GetAsync(s1.Id))!.CancelRequested);
    }
}

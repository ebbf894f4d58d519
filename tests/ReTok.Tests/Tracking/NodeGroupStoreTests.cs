using System.Diagnostics;
using ReTok.Tracking;

namespace ReTok.Tests.Tracking;

/// <summary>Node groups in <see cref="RunStore"/> against PostgreSQL: rank runs spawned once, and the rendezvous (publish,
/// join, wait with a timeout, a new generation per rank-0 execution, never a stale one).</summary>
public sealed class NodeGroupStoreTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    static LeaseRequest Req(string owner) => new(owner, TimeSpan.FromMinutes(1));

    [Fact]
    public async Task RankZeroSpawnsItsRanksOnceInItsPipelineButInNoStep()
    {
        await using var t = db.CreateTracker();
        var leader = await t.Runs.InsertAsync(new Run { Kind = "train-generator", Name = "gpt", Nodes = 3, Queue = "gpu", Parameters = """{"a": 1}""", Tags = ["x"] });
        var lease = (await t.Runs.TryAcquireLeaseAsync(leader.Id, Req("w0")))!;
        var (ranks, created) = await t.Runs.SpawnRanksAsync(lease.Fence, """{"codes": "run:1/codes.npz"}""");
        Assert.True(created);
        Assert.Equal([1, 2], ranks.Select(r => r.Rank));
        var again = await t.Runs.SpawnRanksAsync(lease.Fence, "{}");
        Assert.False(again.Created);
        Assert.Equal(ranks.Select(r => r.RunId), again.Ranks.Select(r => r.RunId));
        var r2 = (await t.Runs.GetAsync(ranks[1].RunId))!;
        Assert.Equal((3, 2, leader.Id, "gpt/rank-2", RunStatus.Queued, "gpu", """{"a": 1}""", (string?)null),
            (r2.Nodes, r2.NodeRank, r2.ParentRunId, r2.Name, r2.Status, r2.Queue, r2.Parameters, r2.PipelineStep));
        Assert.Contains("codes.npz", r2.Inputs);
        Assert.Equal([0, 1, 2], (await t.Runs.GetNodeGroupAsync(leader.Id)).Select(x => x.Rank));
        // only the rank 0 of a group spawns
        var rankLease = (await t.Runs.TryAcquireLeaseAsync(r2.Id, Req("w2")))!;
        await Assert.ThrowsAsync<InvalidOperationException>(() => t.Runs.SpawnRanksAsync(rankLease.Fence, "{}"));
    }

    [Fact]
    public async Task RanksJoinEachGenerationOnceAndWaitForTheNextOne()
    {
        await using var t = db.CreateTracker();
        var leader = await t.Runs.InsertAsync(new Run { Kind = "k", Nodes = 2 });
        var l0 = (await t.Runs.TryAcquireLeaseAsync(leader.Id, Req("w0")))!;
        var rank = (await t.Runs.SpawnRanksAsync(l0.Fence, "{}")).Ranks.Single();
        var l1 = (await t.Runs.TryAcquireLeaseAsync(rank.RunId, Req("w1")))!;

        Assert.Null(await t.Runs.TryJoinRendezvousAsync(l1.Fence, leader.Id, 1));   // nothing published yet
        // a waiting rank gets the address as soon as rank 0 publishes it
        var wait = t.Runs.WaitRendezvousAsync(l1.Fence, leader.Id, 1, TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(50));
        await Task.Delay(300);
        Assert.False(wait.IsCompleted);
        Assert.Equal(l0.Generation, await t.Runs.PublishRendezvousAsync(l0.Fence, "10.0.0.1:4000/aa"));
        Assert.Equal(new RendezvousJoin(l0.Generation, "10.0.0.1:4000/aa"), await wait.WaitAsync(TimeSpan.FromSeconds(10)));

        // the rank fails and runs again while rank 0 is still in that generation: it must not rejoin it, and times out
        var l1b = (await t.Runs.TryAcquireLeaseAsync(rank.RunId, Req("w1")))!;
        Assert.Null(await t.Runs.TryJoinRendezvousAsync(l1b.Fence, leader.Id, 1));
        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<TimeoutException>(() => t.Runs.WaitRendezvousAsync(l1b.Fence, leader.Id, 1, TimeSpan.FromSeconds(1), TimeSpan.FromMilliseconds(50)));
        Assert.InRange(sw.Elapsed.TotalSeconds, 0.9, 10);
        Assert.Contains($"rank 1 waited 1 s for rank 0 (run {leader.Id}", e.Message);

        // rank 0's next execution publishes a new generation; its previous execution is fenced out
        var l0b = (await t.Runs.TryAcquireLeaseAsync(leader.Id, Req("w0")))!;
        Assert.True(l0b.Generation > l0.Generation);
        await Assert.ThrowsAsync<LeaseLostException>(() => t.Runs.PublishRendezvousAsync(l0.Fence, "stale"));
        await t.Runs.PublishRendezvousAsync(l0b.Fence, "10.0.0.2:4001/bb");
        Assert.Equal(new RendezvousJoin(l0b.Generation, "10.0.0.2:4001/bb"), await t.Runs.TryJoinRendezvousAsync(l1b.Fence, leader.Id, 1));
        // a join is fenced by the rank's own lease too
        await Assert.ThrowsAsync<LeaseLostException>(() => t.Runs.TryJoinRendezvousAsync(l1.Fence, leader.Id, 1));
    }

    [Fact]
    public async Task AWaitStopsAtOnceWhenRankZeroHasEnded()
    {
        await using var t = db.CreateTracker();
        var leader = await t.Runs.InsertAsync(new Run { Kind = "k", Nodes = 2 });
        var l0 = (await t.Runs.TryAcquireLeaseAsync(leader.Id, Req("w0")))!;
        var rank = (await t.Runs.SpawnRanksAsync(l0.Fence, "{}")).Ranks.Single();
        var l1 = (await t.Runs.TryAcquireLeaseAsync(rank.RunId, Req("w1")))!;
        await t.Runs.FailAsync(l0, "out of memory");
        var e = await Assert.ThrowsAsync<RendezvousAbandonedException>(() => t.Runs.WaitRendezvousAsync(l1.Fence, leader.Id, 1, TimeSpan.FromSeconds(30)));
        Assert.Equal($"node group {leader.Id}: rank 0 is Failed (out of memory); rank 1 stops", e.Message);
    }
}

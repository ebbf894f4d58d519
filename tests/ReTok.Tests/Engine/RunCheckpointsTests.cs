using ReTok.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>Issue 16.5: checkpoints (latest, state, parts) are engine policy, every write fenced by the run lease.</summary>
public sealed class RunCheckpointsTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    [Fact]
    public async Task A_stale_lease_cannot_write_a_checkpoint_or_a_part_and_an_aggregator_releases_only_its_shards_parts()
    {
        await using var t = db.CreateTracker();
        var run = await t.Runs.InsertAsync(new Run { Kind = "selftest" });
        var first = (await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("w", TimeSpan.FromMinutes(1))))!;
        var second = (await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("w", TimeSpan.FromMinutes(1))))!;   // a takeover
        Assert.True(second.Generation > first.Generation);
        var scratch = Directory.CreateTempSubdirectory("ckpt-fence").FullName;
        var stale = new RunCheckpoints(t, first.Fence, scratch);
        var current = new RunCheckpoints(t, second.Fence, scratch);

        await current.SaveStateAsync(5, new { next = 5 });
        await Assert.ThrowsAsync<LeaseLostException>(() => stale.SaveStateAsync(9, new { next = 9 }));
        await Assert.ThrowsAsync<LeaseLostException>(() => stale.SaveAsync(9, dir => File.WriteAllTextAsync(Path.Combine(dir, "x"), "x"), milestone: true));
        Assert.Equal(5, (await current.LoadAsync())!.Value.Step);   // the successor's checkpoint stands
        Assert.Null(await t.GetArtifactAsync(run.Id, RunCheckpoints.MilestoneName(9)));

        var part = Path.Combine(scratch, "part.bin");
        await File.WriteAllBytesAsync(part, [1, 2, 3]);
        await Assert.ThrowsAsync<LeaseLostException>(() => stale.SavePartAsync("p0", part));
        await current.SavePartAsync("p0", part);
        await Assert.ThrowsAsync<LeaseLostException>(() => stale.ReleasePartsAsync(["p0"]));
        Assert.Equal(3, (await t.GetArtifactAsync(run.Id, RunCheckpoints.PartPrefix + "p0"))!.SizeBytes);
        Assert.Equal([1, 2, 3], await File.ReadAllBytesAsync(await current.FetchPartAsync(run.Id, "p0", scratch)));

        // an aggregator may release its shards' parts (fenced by its own lease), no other run's
        var stranger = await t.Runs.InsertAsync(new Run { Kind = "selftest" });
        await Assert.ThrowsAsync<InvalidOperationException>(() => current.ReleasePartsAsync(["p0"], stranger.Id));
        var shard = await t.Runs.InsertAsync(new Run { Kind = "selftest", FanInRunId = run.Id, ShardIndex = 0 });
        var shardLease = (await t.Runs.TryAcquireLeaseAsync(shard.Id, new LeaseRequest("s", TimeSpan.FromMinutes(1))))!;
        await new RunCheckpoints(t, shardLease.Fence, scratch).SavePartAsync("p1", part);
        await Assert.ThrowsAsync<LeaseLostException>(() => stale.ReleasePartsAsync(["p1"], shard.Id));
        await current.ReleasePartsAsync(["p1"], shard.Id);
        Assert.Equal(0, (await t.GetArtifactAsync(shard.Id, RunCheckpoints.PartPrefix + "p1"))!.SizeBytes);
        await current.ReleasePartsAsync(["p0"]);
        await Assert.ThrowsAsync<JobFailedException>(() => current.FetchPartAsync(run.Id, "p0", Directory.CreateTempSubdirectory("ckpt-fence").FullName));
    }
}

using System.Security.Cryptography;
using System.Text;
using ReTok.Tracking;
using ReTok.Tracking.Artifacts;

namespace ReTok.Tests.Tracking;

/// <summary>The tracking schema and <see cref="Tracker"/> against a real PostgreSQL (one database for the class).</summary>
public sealed class TrackingSchemaTests : IClassFixture<TestDatabase>
{
    readonly TestDatabase _db;
    public TrackingSchemaTests(TestDatabase db) => _db = db;

    async Task<Run> NewRunAsync(Tracker t, string kind = "selftest") =>
        await t.Runs.InsertAsync(new Run { Kind = kind, Parameters = """{"n": 40, "trainer": {"lr": 0.0001}}""", ConfigHash = "abc", Seed = 0 });

    [Fact]
    public async Task RunRoundTripsWithJsonbParametersAndTags()
    {
        await using var t = _db.CreateTracker();
        var exp = await t.EnsureExperimentAsync("tracking-test");
        Assert.Equal(exp, await t.EnsureExperimentAsync("tracking-test"));
        var run = await t.Runs.InsertAsync(new Run
        {
            Kind = "selftest", ExperimentId = exp, Name = "r1", Parameters = """{"n": 40, "trainer": {"lr": 0.0001}}""",
            ConfigHash = "0123", Seed = 7, CodeVersion = "deadbeef", Tags = new() { "a", "b" }, DependsOn = new() { "extract" },
            Inputs = """{"data": "extract/dataset.npz"}""",
        });
        Assert.True(run.Id > 0);
        var back = await t.Runs.GetAsync(run.Id);
        Assert.NotNull(back);
        Assert.Equal(RunStatus.Queued, back!.Status);
        Assert.Equal(new[] { "a", "b" }, back.Tags);
        Assert.Equal(new[] { "extract" }, back.DependsOn);
        Assert.Equal(7, back.Seed);
        // jsonb: the database can query into the parameters.
        await using var cmd = t.DataSource.CreateCommand("SELECT parameters #>> '{trainer,lr}', inputs ->> 'data' FROM retok.runs WHERE id = @id");
        cmd.Parameters.AddWithValue("id", run.Id);
        await using var rd = await cmd.ExecuteReaderAsync();
        Assert.True(await rd.ReadAsync());
        Assert.Equal(0.0001, double.Parse(rd.GetString(0), System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal("extract/dataset.npz", rd.GetString(1));
        Assert.Contains(await t.Runs.ListAsync(new RunFilter(ExperimentId: exp)), r => r.Id == run.Id);
    }

    [Fact]
    public async Task MetricUpsertNeverDuplicatesAPoint()
    {
        await using var t = _db.CreateTracker();
        var run = await NewRunAsync(t);
        await t.LogMetricsAsync(run.Id, Enumerable.Range(0, 10).Select(i => new MetricValue("loss", i, 10 - i)).ToList());
        // A resumed job re-logs steps 5..9 with other values, plus a duplicate (key, step) within one batch: last wins.
        var again = Enumerable.Range(5, 5).Select(i => new MetricValue("loss", i, 100 + i)).Append(new MetricValue("loss", 9, -1)).ToList();
        await t.LogMetricsAsync(run.Id, again);
        await t.LogMetricsAsync(run.Id, new[] { new MetricValue("acc", 3, 0.5) });
        var loss = await t.GetMetricsAsync(run.Id, "loss");
        Assert.Equal(Enumerable.Range(0, 10).Select(i => (long)i), loss.Select(m => m.Step));
        Assert.Equal(10 - 4.0, loss[4].Value);
        Assert.Equal(105.0, loss[5].Value);
        Assert.Equal(-1.0, loss[9].Value);
        var latest = await t.GetLatestMetricsAsync([run.Id]);
        Assert.Equal(new[] { ("acc", 3L, 0.5), ("loss", 9L, -1.0) }, latest.Select(m => (m.Key, m.Step, m.Value)));
        // several runs in one query (compare page, results table): by run, then key; a run without metrics adds nothing
        var other = await NewRunAsync(t);
        await t.LogMetricsAsync(other.Id, new[] { new MetricValue("loss", 1, 7), new MetricValue("loss", 2, 8) });
        var empty = await NewRunAsync(t);
        Assert.Equal(new[] { (run.Id, "acc", 3L), (run.Id, "loss", 9L), (other.Id, "loss", 2L) },
            (await t.GetLatestMetricsAsync([other.Id, empty.Id, run.Id, run.Id])).Select(m => (m.RunId, m.Key, m.Step)));
    }

    [Fact]
    public async Task ArtifactSaveIsIdempotentConflictsWithoutOverwriteAndVerifiesOnRead()
    {
        await using var t = _db.CreateTracker();
        var run = await NewRunAsync(t);
        var v1 = Encoding.UTF8.GetBytes("""{"total": 820}""");
        var a = await t.SaveArtifactAsync(run.Id, "result.json", new MemoryStream(v1), new ArtifactSaveOptions { Kind = "json" });
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(v1)), a.Sha256);
        Assert.Equal(v1.Length, a.SizeBytes);
        // Same name, same bytes: same row, no second object left in the store.
        var again = await t.SaveArtifactAsync(run.Id, "result.json", new MemoryStream(v1));
        Assert.Equal(a.Id, again.Id);
        Assert.Equal(a.StorageUri, again.StorageUri);
        Assert.Single(await ListObjects(t, run.Id));
        // Different bytes without Overwrite: refused, nothing changes.
        await Assert.ThrowsAsync<ArtifactConflictException>(() => t.SaveArtifactAsync(run.Id, "result.json", new MemoryStream(Encoding.UTF8.GetBytes("other"))));
        Assert.Single(await ListObjects(t, run.Id));
        Assert.Equal(a.Sha256, (await t.GetArtifactAsync(run.Id, "result.json"))!.Sha256);

        // Overwrite (checkpoints/latest): the row moves to the new object, the old object is deleted.
        var c1 = await t.SaveArtifactAsync(run.Id, "checkpoints/latest", new MemoryStream(new byte[] { 1, 2, 3 }), new ArtifactSaveOptions { Kind = "checkpoint", Overwrite = true, MetadataJson = """{"step": 10}""" });
        var c2 = await t.SaveArtifactAsync(run.Id, "checkpoints/latest", new MemoryStream(new byte[] { 4, 5, 6, 7 }), new ArtifactSaveOptions { Kind = "checkpoint", Overwrite = true, MetadataJson = """{"step": 20}""" });
        Assert.Equal(c1.Id, c2.Id);
        Assert.NotEqual(c1.StorageUri, c2.StorageUri);
        Assert.False(await t.Store.ExistsAsync(c1.StorageUri));
        Assert.Contains("20", c2.Metadata);
        await using (var s = await t.OpenArtifactAsync(c2)) { var ms = new MemoryStream(); await s.CopyToAsync(ms); Assert.Equal(new byte[] { 4, 5, 6, 7 }, ms.ToArray()); }
        Assert.Equal(new[] { "checkpoints/latest", "result.json" }, (await t.ListArtifactsAsync(run.Id)).Select(x => x.Name));

        // Lineage: a consumer run records its use; recording twice stays one edge.
        var consumer = await NewRunAsync(t, "consumer");
        await t.RecordUseAsync(consumer.Id, a.Id, "data");
        await t.RecordUseAsync(consumer.Id, a.Id, "data");
        var inputs = await t.GetInputsAsync(consumer.Id);
        Assert.Single(inputs);
        Assert.Equal(("data", "result.json", run.Id), (inputs[0].Use.Role, inputs[0].Artifact.Name, inputs[0].Artifact.RunId));
        Assert.Equal(new[] { consumer.Id }, (await t.GetConsumersAsync(a.Id)).Select(u => u.RunId));
    }

    [Fact]
    public async Task ArtifactIsInvisibleUntilItsBytesAreCompleteAndBadNamesAreRejected()
    {
        await using var t = _db.CreateTracker();
        var run = await NewRunAsync(t);
        await Assert.ThrowsAsync<IOException>(() => t.SaveArtifactAsync(run.Id, "half.bin", new BrokenStream()));
        Assert.Null(await t.GetArtifactAsync(run.Id, "half.bin"));
        Assert.Empty(await ListObjects(t, run.Id));
        await Assert.ThrowsAsync<ArgumentException>(() => t.SaveArtifactAsync(run.Id, "../x", new MemoryStream(new byte[1])));
    }

    [Fact]
    public async Task CorruptStoredArtifactIsRefusedOnDownload()
    {
        await using var t = _db.CreateTracker();
        var run = await NewRunAsync(t);
        var a = await t.SaveArtifactAsync(run.Id, "data.bin", new MemoryStream(Enumerable.Range(0, 4096).Select(i => (byte)i).ToArray()));
        var path = ((ReTok.Tracking.Artifacts.FileSystemArtifactStore)t.Store).LocalPath(a.StorageUri);
        var bytes = File.ReadAllBytes(path); bytes[100] ^= 1; File.WriteAllBytes(path, bytes);
        var dest = Path.Combine(Directory.CreateTempSubdirectory("dl").FullName, "data.bin");
        var ex = await Assert.ThrowsAsync<ReTok.Tracking.Artifacts.ArtifactIntegrityException>(() => t.DownloadArtifactAsync(a, dest));
        Assert.Contains("sha256 mismatch", ex.Message);
        Assert.False(File.Exists(dest));
    }

    [Fact]
    public async Task SecondExecutorIsRefusedAndStaleExecutorCannotWriteAfterTakeover()
    {
        await using var t = _db.CreateTracker();
        var run = await NewRunAsync(t);
        var a = await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("worker-a", TimeSpan.FromMinutes(5), "host-a", "cpu"));
        Assert.NotNull(a);
        Assert.Equal(1, a!.Generation);
        Assert.Null(await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("worker-b", TimeSpan.FromMinutes(5))));
        await t.LogMetricsAsync(run.Id, new[] { new MetricValue("x", 1, 1) }, a.Fence);
        Assert.True((await t.Runs.RenewLeaseAsync(a, TimeSpan.FromMinutes(5), new ProgressSnapshot(0.25, "step 1", 30, DateTimeOffset.UtcNow))).Held);
        Assert.Equal(0.25, (await t.Runs.GetAsync(run.Id))!.Progress);

        // Worker A stops heartbeating: expire its lease, B takes over with the next generation.
        await using (var cmd = t.DataSource.CreateCommand("UPDATE retok.runs SET lease_expires_at = now() - interval '1 second' WHERE id = @id"))
        { cmd.Parameters.AddWithValue("id", run.Id); await cmd.ExecuteNonQueryAsync(); }
        var b = await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("worker-b", TimeSpan.FromMinutes(5), "host-b", "cpu"));
        Assert.Equal(2, b!.Generation);
        Assert.Equal(2, b.Attempt);

        // Every write of A is refused now; B's go through.
        await Assert.ThrowsAsync<LeaseLostException>(() => t.LogMetricsAsync(run.Id, new[] { new MetricValue("x", 2, 99) }, a.Fence));
        await Assert.ThrowsAsync<LeaseLostException>(() => t.SaveArtifactAsync(run.Id, "stale.bin", new MemoryStream(new byte[] { 1 }), fence: a.Fence));
        await Assert.ThrowsAsync<LeaseLostException>(() => t.LogAsync(run.Id, "info", "stale", a.Fence));
        Assert.False((await t.Runs.RenewLeaseAsync(a, TimeSpan.FromMinutes(5))).Held);
        Assert.False(await t.Runs.ReleaseToQueueAsync(a));
        Assert.Null(await t.GetArtifactAsync(run.Id, "stale.bin"));
        Assert.Empty(await ListObjects(t, run.Id)); // the stale bytes were removed again
        await t.LogMetricsAsync(run.Id, new[] { new MetricValue("x", 2, 2) }, b.Fence);
        Assert.Equal(new[] { 1.0, 2.0 }, (await t.GetMetricsAsync(run.Id, "x")).Select(m => m.Value));
        Assert.Equal("host-b", (await t.Runs.GetAsync(run.Id))!.Host);
    }

    [Fact]
    public async Task LogsRoundTripInOrder()
    {
        await using var t = _db.CreateTracker();
        var run = await NewRunAsync(t);
        await t.LogAsync(run.Id, new[] { new LogLine("info", "one"), new LogLine("warn", "two") });
        await t.LogAsync(run.Id, "error", "three");
        var logs = await t.GetLogsAsync(run.Id);
        Assert.Equal(new[] { "one", "two", "three" }, logs.Select(l => l.Message));
        Assert.Equal(new[] { "three" }, (await t.GetLogsAsync(run.Id, afterId: logs[1].Id)).Select(l => l.Message));
    }

    [Fact]
    public async Task UnreachableDatabaseGivesAnErrorNamingHostAndPort()
    {
        // Port 1 on loopback: nothing listens there.
        var ex = await Assert.ThrowsAsync<DatabaseUnreachableException>(() =>
            TrackingDb.CheckReachableAsync("Host=127.0.0.1;Port=1;Username=postgres;Database=retok"));
        Assert.Contains("127.0.0.1:1", ex.Message);
        Assert.Contains("retok", ex.Message);
    }

    static async Task<List<string>> ListObjects(Tracker t, long runId)
    {
        var l = new List<string>();
        await foreach (var u in t.Store.ListAsync($"runs/{runId}/")) l.Add(u);
        return l;
    }

    sealed class BrokenStream : Stream
    {
        int _n;
        public override int Read(byte[] buffer, int offset, int count) => _n++ < 3 ? Math.Min(count, 1000) : throw new IOException("connection reset");
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => 0; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long o, SeekOrigin s) => throw new NotSupportedException();
        public override void SetLength(long v) => throw new NotSupportedException();
        public override void Write(byte[] b, int o, int c) => throw new NotSupportedException();
    }
}

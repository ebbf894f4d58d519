using System.Text.Json;
using ReTok.Engine;
using ReTok.Evaluation.Images;
using ReTok.Jobs.Kinds.ExtractDataset;
using ReTok.Jobs.Kinds.Selftest;
using ReTok.Models.IO;
using ReTok.Tests.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using ReTok.Tracking.Artifacts;

namespace ReTok.Tests.Hardening;

/// <summary>The data-roots policy on its own: realpath semantics, confinement of every path parameter, submit-time errors.</summary>
public sealed class DataRootsTests
{
    static (string Root, string Outside) Folders()
    {
        var top = Directory.CreateTempSubdirectory("retok-roots").FullName;
        var root = Directory.CreateDirectory(Path.Combine(top, "root")).FullName;
        var outside = Directory.CreateDirectory(Path.Combine(top, "outside")).FullName;
        File.WriteAllText(Path.Combine(outside, "secret.txt"), "s3cret");
        File.WriteAllText(Path.Combine(root, "labels.txt"), "1\n");
        return (root, outside);
    }

    [Fact]
    public void Links_and_dotdot_resolve_like_the_kernel_so_no_path_escapes_a_root()
    {
        var (root, outside) = Folders();
        var roots = new DataRoots([root], "test");
        File.CreateSymbolicLink(Path.Combine(root, "to-outside"), outside);
        Directory.CreateSymbolicLink(Path.Combine(root, "to-etc"), "/etc");
        Assert.True(roots.Contains(Path.Combine(root, "labels.txt"), out _));
        Assert.True(roots.Contains(root, out _));
        Assert.False(roots.Contains(Path.Combine(root, "to-outside", "secret.txt"), out var real));
        Assert.Equal(Path.Combine(outside, "secret.txt"), real);
        Assert.False(roots.Contains(Path.Combine(root, "to-etc", "passwd"), out _));
        // Lexically root/to-etc/../labels.txt is inside; the kernel opens /labels.txt (the link target's parent).
        Assert.False(roots.Contains(Path.Combine(root, "to-etc", "..", "labels.txt"), out real));
        Assert.Equal("/labels.txt", real);
        Assert.False(roots.Contains(root + "-sibling/x", out _)); // a prefix of the name is not a parent folder
        Assert.False(roots.Contains("/etc/passwd", out _));
        Assert.False(roots.Contains("/proc/self/environ", out _));
    }

    [Fact]
    public void Worker_side_confinement_names_the_parameter_hands_back_the_real_path_and_never_reads_the_file()
    {
        var (root, outside) = Folders();
        var roots = new DataRoots([root], "test");
        File.CreateSymbolicLink(Path.Combine(root, "labels-link.txt"), Path.Combine(outside, "secret.txt"));
        var ok = new ExtractDatasetParams { Source = root + "/./", ValLabels = Path.Combine(root, "labels.txt") };
        roots.Confine(ok);
        Assert.Equal(root, ok.Source);

        var bad = new ExtractDatasetParams { Source = "/usr/share/pixmaps", ValLabels = "/etc/passwd", DevkitMeta = Path.Combine(root, "labels-link.txt") };
        var ex = Assert.Throws<JobFailedException>(() => roots.Confine(bad));
        Assert.Contains("source: /usr/share/pixmaps is outside the data roots", ex.Message);
        Assert.Contains("val_labels: /etc/passwd is outside the data roots", ex.Message);
        Assert.Contains($"devkit_meta: {root}/labels-link.txt (resolves to {outside}/secret.txt) is outside", ex.Message);
        Assert.DoesNotContain("s3cret", ex.Message);
        Assert.DoesNotContain("root:x:", ex.Message);

        // Nested sections are walked: a record holding eval-reconstruction's tokenizer source and settings.
        var shard = new NestedPaths
        {
            Tokenizer = new() { Checkpoint = "/etc/shadow", ConfigPath = "/etc/hosts" }, Settings = new() { WeightsDir = "/root" },
        };
        var e2 = Assert.Throws<JobFailedException>(() => roots.Confine(shard));
        foreach (var key in new[] { "tokenizer.checkpoint: /etc/shadow", "tokenizer.config_path: /etc/hosts", "settings.weights_dir: /root" })
            Assert.Contains(key, e2.Message);
    }

    /// <summary>
    /// Every string parameter of every job kind is either a [DataPath] or known not to be a path, so a new kind or
    /// parameter that reads a local file cannot skip the policy unnoticed.
    /// </summary>
    [Fact]
    public void Every_string_parameter_of_every_kind_is_classified()
    {
        var notPaths = new HashSet<string>
        {
            "ArtifactRef.Name", "TokenizerSource.Preset", "TokenizerSource.Prefer", "EvalReconstructionParams.Preset", "EvalReconstructionParams.Prefer",
            "SampleGfidParams.CfgSchedule", "TrainGeneratorParams.GptModel", "TrainGeneratorParams.DecayType",
            "TrainTokenizerParams.MixedPrecision", "SampleGfidParams.Precision", "ValLossParams.Precision", "DataParallelConfig.Backend", "TrainerSection.LrScheduler", "TrainerSection.Optimizer", "TrainerSection.DistillModel",
            "LossSection.LossCls", "VqLossParams.DiscType", "VqLossParams.DiscLoss", "VqLossParams.Norm", "VqLossParams.GenAdvLoss", "VqLossParams.ReconstructionLoss",
        };
        var unclassified = new List<string>();
        var seen = new HashSet<Type>();
        void Walk(Type t)
        {
            if (!seen.Add(t)) return;
            foreach (var p in t.GetProperties())
            {
                if (p.PropertyType == typeof(string) && p.GetCustomAttributes(typeof(DataPathAttribute), true).Length == 0 && !notPaths.Contains($"{t.Name}.{p.Name}"))
                    unclassified.Add($"{t.Name}.{p.Name}");
                else if (DataRoots.IsParamsRecord(p.PropertyType)) Walk(p.PropertyType);
            }
        }
        foreach (var k in JobKindRegistry.Default.All) Walk(k.ParamsType);
        Assert.True(unclassified.Count == 0, "string parameters neither [DataPath] nor listed as non-paths: " + string.Join(", ", unclassified));
    }

    [Fact]
    public async Task Submit_refuses_a_path_outside_the_roots_with_the_key_path()
    {
        var (root, _) = Folders();
        // Validation runs before anything touches the database (port 1: nothing listens).
        await using var client = new JobClient(new EngineOptions
        {
            Db = "Host=127.0.0.1;Port=1;Username=x;Database=x;Timeout=1", Artifacts = root, DataRoots = new DataRoots([root], "test"),
        });
        var ex = await Assert.ThrowsAsync<SpecValidationException>(() =>
            client.SubmitAsync("extract-dataset", new ExtractDatasetParams { Source = root, ValLabels = "/etc/passwd" }));
        Assert.StartsWith("params.val_labels: /etc/passwd is outside the data roots", Assert.Single(ex.Errors));
        var plan = JobSpecs.Parse("pipeline: p\nsteps:\n  a: {kind: extract-dataset, params: {source: /usr/share/pixmaps}}\n");
        var ex2 = await Assert.ThrowsAsync<SpecValidationException>(() => client.SubmitAsync(plan));
        Assert.StartsWith("steps.a.params.source: /usr/share/pixmaps is outside", Assert.Single(ex2.Errors));
    }

    [Fact]
    public void Default_roots_cover_the_data_folders_of_the_home_but_not_its_secrets()
    {
        var home = Directory.CreateTempSubdirectory("retok-home").FullName;
        var saved = Environment.GetEnvironmentVariable("RETOK_DATA_ROOTS");
        DataRoots roots;
        try { Environment.SetEnvironmentVariable("RETOK_DATA_ROOTS", null); roots = DataRoots.FromEnvironment(home); }
        finally { Environment.SetEnvironmentVariable("RETOK_DATA_ROOTS", saved); }
        Assert.True(roots.Contains(Path.Combine(home, "quickstart", "images", "n01", "a.png"), out _));
        Assert.True(roots.Contains(Path.Combine(home, "weights", "vgg.pth"), out _));
        Assert.True(roots.Contains(Path.Combine(home, "data", "imagenet"), out _));
        foreach (var secret in new[] { "quickstart/admin-password.txt", "dashboard-keys/key.xml", "artifacts/runs/1/x", "scratch/runs/1", "." })
            Assert.False(roots.Contains(Path.Combine(home, secret), out _), secret);
    }
}

/// <summary>Faults that used to loop or retry: classification of malformed input, a truncated checkpoint.</summary>
public sealed class FailureClassificationTests
{
    [Fact]
    public void Malformed_or_truncated_input_is_deterministic()
    {
        foreach (var e in new Exception[] { new EndOfStreamException(), new InvalidDataException("x"), new FormatException(), new JsonException(), new System.Text.DecoderFallbackException() })
            Assert.False(FailureClassifier.IsTransient(e), e.GetType().Name);
        Assert.True(FailureClassifier.IsTransient(new IOException("flaky mount")));
    }

    [Fact]
    public void Truncated_safetensors_checkpoint_names_the_file_and_is_not_retried()
    {
        var dir = Directory.CreateTempSubdirectory("retok-trunc").FullName;
        var path = Path.Combine(dir, "cut.safetensors");
        var bytes = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenizer", "tiny.safetensors"));
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        var ex = Assert.ThrowsAny<Exception>(() => StateDictFile.Read(path));
        Assert.Contains(path, ex.Message);
        Assert.False(FailureClassifier.IsTransient(ex), $"{ex.GetType().Name}: {ex.Message}");
    }
}

/// <summary>Text PostgreSQL cannot store (NUL, SQLSTATE 22021) is cleaned on every write of user-visible text.</summary>
public sealed class PoisonTextTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    [Fact]
    public async Task Nul_and_control_characters_in_reasons_logs_metric_keys_and_names_are_stored_cleaned()
    {
        await using var t = db.CreateTracker();
        var exp = await t.EnsureExperimentAsync("exp\0x");
        var run = await t.Runs.InsertAsync(new Run { Kind = "selftest", Parameters = "{}", ConfigHash = "x", ExperimentId = exp });
        var lease = (await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("w", TimeSpan.FromMinutes(1))))!;
        const string poison = "PATH=/usr/bin\0HOME=/root\u001b[2J\ud800";
        await t.LogAsync(run.Id, "error", poison, lease.Fence);
        await t.LogMetricsAsync(run.Id, [new MetricValue("loss\0x", 1, 1.0)], lease.Fence);
        Assert.True((await t.Runs.RenewLeaseAsync(lease, TimeSpan.FromMinutes(1), new ProgressSnapshot(0.5, poison, null, DateTimeOffset.UtcNow))).Held);
        Assert.True(await t.Runs.ReleaseToQueueAsync(lease, poison, poison));
        lease = (await t.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("w", TimeSpan.FromMinutes(1))))!;
        await t.Runs.FailAsync(lease, poison);

        var back = (await t.Runs.GetAsync(run.Id))!;
        Assert.Equal(RunStatus.Failed, back.Status);
        const string clean = "PATH=/usr/bin\uFFFDHOME=/root\uFFFD[2J\uFFFD";
        Assert.Equal(clean, back.FailureReason);
        Assert.Equal(clean, back.ProgressMessage);
        Assert.Equal(clean, (await t.GetLogsAsync(run.Id)).Single().Message);
        Assert.Equal("loss\uFFFDx", (await t.GetMetricsAsync(run.Id)).Single().Key);
    }
}

/// <summary>The attacks and faults of issue 14 end to end, against a real `retok worker` process.</summary>
public sealed class HardeningWorkerTests(EngineEnvironment env) : IClassFixture<EngineEnvironment>
{
    static readonly SemaphoreSlim Lock = new(1, 1);
    static Task? _worker;

    async Task WorkerAsync()
    {
        await Lock.WaitAsync();
        try { _worker ??= env.StartWorker("harden-w", "harden", 2).WaitReadyAsync(); await _worker; }
        finally { Lock.Release(); }
    }

    /// <summary>A client whose own roots allow everything: it stands for a spec that got past (or around) the submit check.</summary>
    JobClient Unchecked() => new(env.Options with { DataRoots = new DataRoots(["/"], "test: everything") });

    [Fact]
    public async Task Worker_refuses_paths_outside_its_roots_even_when_submit_was_bypassed()
    {
        await WorkerAsync();
        var root = Directory.CreateTempSubdirectory("harden-roots").FullName;
        Directory.CreateSymbolicLink(Path.Combine(root, "etc"), "/etc");
        await using var client = Unchecked();
        var passwd = await client.SubmitAsync("extract-dataset", new ExtractDatasetParams { Source = root, ValLabels = "/etc/passwd" }, queue: "harden");
        var pixmaps = await client.SubmitAsync("extract-dataset", new ExtractDatasetParams { Source = "/usr/share/pixmaps", Layout = DatasetLayout.Flat }, queue: "harden");
        var viaLink = await client.SubmitAsync("extract-dataset", new ExtractDatasetParams { Source = root, ValLabels = Path.Combine(root, "etc", "passwd") }, queue: "harden");

        foreach (var (id, expect) in new[] { (passwd, "val_labels: /etc/passwd is outside the data roots"), (pixmaps, "source: /usr/share/pixmaps is outside the data roots"),
                                             (viaLink, $"val_labels: {root}/etc/passwd (resolves to /etc/passwd) is outside the data roots") })
        {
            var r = await env.WaitTerminalAsync(id);
            Assert.Equal(RunStatus.Failed, r.Status);
            Assert.StartsWith(expect, r.FailureReason);
            Assert.DoesNotContain("root:x:", r.FailureReason);
            Assert.Equal(1, r.Attempt);
            Assert.Empty(await env.Tracker.ListArtifactsAsync(id));
        }
    }

    /// <summary>
    /// The /proc/self/environ poison run: a labels file full of NUL-separated text. Its contents once went into the
    /// failure reason, PostgreSQL refused the NUL, the run stayed Running and was re-queued forever. Now the reason names
    /// file and line only, and the run fails at its first attempt.
    /// </summary>
    [Fact]
    public async Task Labels_file_with_nul_bytes_fails_once_naming_file_and_line_without_its_contents()
    {
        await WorkerAsync();
        var root = Directory.CreateTempSubdirectory("harden-poison").FullName;
        var labels = Path.Combine(root, "environ");
        File.WriteAllText(labels, "\n\nPATH=/usr/bin\0SECRET_TOKEN=hunter2\0HOME=/root\0");
        var id = await env.Client.SubmitAsync("extract-dataset", new ExtractDatasetParams { Source = root, ValLabels = labels }, queue: "harden");
        var r = await env.WaitTerminalAsync(id, 60);
        Assert.Equal(RunStatus.Failed, r.Status);
        Assert.Equal(1, r.Attempt);
        Assert.Contains($"{labels}:3: expected an ILSVRC2012_ID", r.FailureReason);
        Assert.DoesNotContain("hunter2", r.FailureReason);
        Assert.DoesNotContain("hunter2", string.Join("\n", (await env.Tracker.GetLogsAsync(id)).Select(l => l.Message)));
    }

    /// <summary>
    /// A run whose executions keep dying without an outcome (here: already at MaxAttempts when the reconciler hands it
    /// out again) ends Failed with the reason instead of being executed a 4th, 5th, ... 20th time.
    /// </summary>
    [Fact]
    public async Task Reacquisition_is_capped_at_max_attempts()
    {
        await WorkerAsync();
        var max = JobKindRegistry.Default.Get("selftest").MaxAttempts;
        var run = await env.Tracker.Runs.InsertAsync(new Run
        {
            Kind = "selftest", Parameters = ParamBinder.ToJson(new SelftestParams { N = 1, StepMs = 0 }), ConfigHash = "x", Queue = "harden",
            Status = RunStatus.Queued, QueuedAt = DateTimeOffset.UtcNow, Attempt = max, ProgressMessage = "re-queued by reconciler: lease of w expired",
        });
        await env.Client.EnqueueAsync(run.Id, "harden");
        var r = await env.WaitTerminalAsync(run.Id, 60);
        Assert.Equal(RunStatus.Failed, r.Status);
        Assert.StartsWith($"gave up after {max} attempts (max {max})", r.FailureReason);
        Assert.Contains("re-queued by reconciler", r.FailureReason);
        Assert.Null(await env.Tracker.GetArtifactAsync(run.Id, "result.json")); // the handler never ran again
    }
}

/// <summary>Item 8 of issue 14: outputs registered as one unit, and orphan objects swept — on the filesystem store and on Azurite.</summary>
public sealed class ArtifactHygieneTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    async Task<(Tracker T, Func<Task> Cleanup)> TrackerAsync(string store)
    {
        if (store == "file")
        {
            var t = db.CreateTracker(new ReTok.Tracking.Artifacts.FileSystemArtifactStore(Directory.CreateTempSubdirectory("hygiene-fs").FullName));
            return (t, async () => await t.DisposeAsync());
        }
        var blob = new ReTok.Tracking.Artifacts.BlobArtifactStore(TestServers.Blob, $"retok-h-{Guid.NewGuid():N}");
        await blob.EnsureContainerAsync();
        var tb = db.CreateTracker(blob);
        return (tb, async () => { await blob.Container.DeleteIfExistsAsync(); await tb.DisposeAsync(); });
    }

    static async Task<List<string>> Objects(Tracker t, long runId)
    {
        var l = new List<string>();
        await foreach (var u in t.Store.ListAsync($"runs/{runId}/")) l.Add(u);
        return l;
    }

    static string File_(string text)
    {
        var p = Path.Combine(Directory.CreateTempSubdirectory("hygiene").FullName, "f");
        File.WriteAllText(p, text);
        return p;
    }

    /// <summary>
    /// A failure while registering outputs registers none of them (extract-dataset used to save them one by one, so a
    /// failed run kept class_names.json, preview.png, pngs.tar) and leaves no object behind.
    /// </summary>
    [Theory, InlineData("file"), InlineData("blob")]
    public async Task Outputs_register_together_or_not_at_all(string store)
    {
        var (t, cleanup) = await TrackerAsync(store);
        try
        {
            var run = await t.Runs.InsertAsync(new Run { Kind = "extract-dataset", Parameters = "{}", ConfigHash = "x" });
            await t.SaveArtifactFileAsync(run.Id, "dataset.npz", File_("old"), new ArtifactSaveOptions());
            var json = new ArtifactSaveOptions { Kind = "json" };
            await Assert.ThrowsAsync<ArtifactConflictException>(() => t.SaveArtifactFilesAsync(run.Id,
                [("class_names.json", File_("[]"), json), ("preview.png", File_("png"), json), ("dataset.npz", File_("new"), new ArtifactSaveOptions())]));
            Assert.Equal(["dataset.npz"], (await t.ListArtifactsAsync(run.Id)).Select(a => a.Name));
            Assert.Single(await Objects(t, run.Id));

            var ok = await t.SaveArtifactFilesAsync(run.Id,
                [("class_names.json", File_("[]"), json), ("dataset.npz", File_("new"), new ArtifactSaveOptions { Overwrite = true })]);
            Assert.Equal(2, ok.Count);
            Assert.Equal(["class_names.json", "dataset.npz"], (await t.ListArtifactsAsync(run.Id)).Select(a => a.Name).Order());
            Assert.Equal(2, (await Objects(t, run.Id)).Count); // the replaced bytes were deleted
        }
        finally { await cleanup(); }
    }

    /// <summary>Objects uploaded before a kill (no row) are deleted by the sweep once older than the grace period; referenced ones never.</summary>
    [Theory, InlineData("file"), InlineData("blob")]
    public async Task Sweep_deletes_unreferenced_objects_after_the_grace_period(string store)
    {
        var (t, cleanup) = await TrackerAsync(store);
        try
        {
            var run = await t.Runs.InsertAsync(new Run { Kind = "selftest", Parameters = "{}", ConfigHash = "x" });
            var kept = await t.SaveArtifactFileAsync(run.Id, "result.json", File_("{}"), new ArtifactSaveOptions());
            var orphan = await t.Store.PutAsync($"runs/{run.Id}/deadbeef0000/dataset.npz", new MemoryStream([1, 2, 3])); // the kill came before the row
            Assert.Equal(0, await t.SweepOrphanObjectsAsync(TimeSpan.FromHours(1)));  // too young: its row may still be coming
            Assert.True(await t.Store.ExistsAsync(orphan.Uri));
            await Task.Delay(1100);
            Assert.True(await t.SweepOrphanObjectsAsync(TimeSpan.FromSeconds(1)) >= 1);
            Assert.False(await t.Store.ExistsAsync(orphan.Uri));
            Assert.True(await t.Store.ExistsAsync(kept.StorageUri));
            Assert.Equal(kept.Sha256, (await t.GetArtifactAsync(run.Id, "result.json"))!.Sha256);
        }
        finally { await cleanup(); }
    }
}

/// <summary>
/// Item 8: a worker process holds one connection pool (Hangfire draws from the tracker's data source). Measured peak of
/// open connections: Hangfire's server processes (heartbeat, watchdog, schedulers, expiration, counters: ~7, a burst at
/// start-up that the pool keeps idle) plus one per slot plus the per-job heartbeats; docs/deploy.md sizes pools from it.
/// </summary>
public sealed class ConnectionPoolTests(TestDatabase db, Xunit.Abstractions.ITestOutputHelper log) : IClassFixture<TestDatabase>
{
    [Theory, InlineData(1), InlineData(3)]
    public async Task A_worker_stays_within_the_documented_connection_budget(int slots)
    {
        var app = $"retok-pool-{slots}";
        var root = Directory.CreateTempSubdirectory("pool").FullName;
        var o = new EngineOptions
        {
            Db = db.ConnectionString + $";Application Name={app}", Artifacts = Path.Combine(root, "artifacts"), Scratch = Path.Combine(root, "scratch"),
            QueuePollInterval = TimeSpan.FromMilliseconds(150), Heartbeat = TimeSpan.FromMilliseconds(300), LeaseTtl = TimeSpan.FromSeconds(3),
            ReconcileInterval = TimeSpan.FromSeconds(1), SchedulePollInterval = TimeSpan.FromMilliseconds(250), InvisibilityTimeout = TimeSpan.FromSeconds(5),
        };
        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = [app], CpuWorkers = slots, Name = app }, log: _ => { });
        await worker.StartAsync();
        await using var observer = db.CreateTracker();
        async Task<int> Count()
        {
            await using var cmd = observer.DataSource.CreateCommand("SELECT count(*) FROM pg_stat_activity WHERE application_name = @a");
            cmd.Parameters.AddWithValue("a", app);
            return Convert.ToInt32(await cmd.ExecuteScalarAsync());
        }
        var ids = new List<long>();
        for (int i = 0; i < slots; i++) ids.Add(await worker.Client.SubmitAsync("selftest", new SelftestParams { N = 30, StepMs = 50, CheckpointEvery = 5 }, queue: app));
        int peak = 0;
        while (true)
        {
            peak = Math.Max(peak, await Count());
            var runs = await Task.WhenAll(ids.Select(id => observer.Runs.GetAsync(id)));
            if (runs.All(r => r!.Status.IsTerminal())) { Assert.All(runs, r => Assert.Equal(RunStatus.Succeeded, r!.Status)); break; }
            await Task.Delay(50);
        }
        for (int i = 0; i < 20; i++) { peak = Math.Max(peak, await Count()); await Task.Delay(50); }
        log.WriteLine($"{slots} slot(s): peak {peak} connections");
        Assert.True(peak <= 2 * slots + 8, $"peak {peak} connections for {slots} slots (budget 2 x slots + 8)");
    }
}

/// <summary>Parameters with nested path-bearing sections (eval-reconstruction's tokenizer source and its params).</summary>
public sealed record NestedPaths
{
    public ReTok.Jobs.Kinds.EvalReconstruction.TokenizerSource Tokenizer { get; init; } = new();
    public ReTok.Jobs.Kinds.EvalReconstruction.EvalReconstructionParams Settings { get; init; } = new();
}

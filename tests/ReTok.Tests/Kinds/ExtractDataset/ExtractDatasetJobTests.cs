using System.Diagnostics;
using System.Text.Json;
using ReTok.Engine;
using ReTok.Evaluation.Images;
using ReTok.Jobs.Kinds.ExtractDataset;
using ReTok.Models.IO;
using ReTok.Models.Images;
using ReTok.Tests.Engine;
using ReTok.Tracking;
using Xunit.Abstractions;
using static ReTok.Tests.Kinds.Support.EvalJobSupport;

namespace ReTok.Tests.Kinds.ExtractDataset;

/// <summary>
/// extract-dataset end to end with real `retok worker` processes on PostgreSQL: content (rows = Pillow-exact ADM crops
/// of the selection, labels = class folders), on_corrupt skip/fail, seeded determinism, and resume after SIGKILL and
/// after cancel + retry (the final npz is byte-identical to an uninterrupted run).
/// </summary>
public sealed class ExtractDatasetJobTests : IClassFixture<EngineEnvironment>
{
    readonly EngineEnvironment _env;
    readonly ITestOutputHelper _log;
    static readonly SemaphoreSlim WorkerLock = new(1, 1);
    static readonly Dictionary<EngineEnvironment, Task> Workers = new();

    public ExtractDatasetJobTests(EngineEnvironment env, ITestOutputHelper log) => (_env, _log) = (env, log);

    /// <summary>One long-lived worker process on queue "extract" with 2 slots.</summary>
    async Task WorkerAsync()
    {
        await WorkerLock.WaitAsync();
        try
        {
            if (!Workers.TryGetValue(_env, out var t)) Workers[_env] = t = _env.StartWorker("extract-w", "extract", 2).WaitReadyAsync();
            await t;
        }
        finally { WorkerLock.Release(); }
    }

    Task<long> Submit(ExtractDatasetParams p, string queue = "extract") => _env.Client.SubmitAsync("extract-dataset", p, queue: queue);

    [Fact]
    public async Task SkipAndFailOnCorruptFilesDeterministicOrderAndPillowExactRows()
    {
        var sw = Stopwatch.StartNew();
        await WorkerAsync();
        _log.WriteLine($"worker ready after {sw.Elapsed.TotalSeconds:F1} s");
        var root = Directory.CreateTempSubdirectory("jobs-eval-extract").FullName;
        var source = MakeSource(root);
        var p = new ExtractDatasetParams { Source = source, OnCorrupt = OnCorrupt.Skip, Seed = 1, ChunkSize = 9, PreviewImages = 8 };
        var skip1 = await Submit(p);
        var skip2 = await Submit(p);
        var fail = await Submit(p with { OnCorrupt = OnCorrupt.Fail });
        var subset = await Submit(p with { Seed = 2, PerClass = 2, Limit = 5 });
        foreach (var id in new[] { skip1, skip2, subset }) await SucceededAsync(_env, id);
        _log.WriteLine($"worker ready and 4 runs done after {sw.Elapsed.TotalSeconds:F1} s");
        foreach (var id in new[] { skip1, skip2, fail, subset })
            if (await _env.Tracker.Runs.GetAsync(id) is { } r)
                _log.WriteLine($"run {id}: queued {(r.StartedAt - r.CreatedAt)?.TotalSeconds:F1} s, ran {(r.FinishedAt - r.StartedAt)?.TotalSeconds:F1} s");

        // Rows are the ADM crops of the seeded selection without the two corrupt files; labels are the class folders.
        var sel = DatasetExtractor.Select(p);
        Assert.Equal(18, sel.Images.Count);
        var kept = sel.Images.Where(i => !i.RelativePath.Contains("_corrupt")).ToList();
        var npz = await DownloadAsync(_env.Tracker, skip1, "dataset.npz", root);
        var arr = Npz.LoadKey(npz, "arr_0");
        Assert.Equal(new long[] { 16, 256, 256, 3 }, arr.Shape);
        Assert.Equal(kept.Select(i => (long)i.Label), Npz.LoadKey(npz, "labels").As<long>());
        int per = 256 * 256 * 3;
        for (int k = 0; k < kept.Count; k++)
            Assert.True(arr.Data.AsSpan(k * per, per).SequenceEqual(AdmCrop.CenterCropArr(ImageIO.LoadRgb(kept[k].Path), 256).Pixels), $"row {k} ({kept[k].RelativePath})");
        Assert.NotEqual(sel.Images.Select(i => i.RelativePath).Order(StringComparer.Ordinal), sel.Images.Select(i => i.RelativePath)); // shuffled

        var names = JsonSerializer.Deserialize<string[]>(File.ReadAllText(await DownloadAsync(_env.Tracker, skip1, "class_names.json", root)))!;
        Assert.Equal(ReTok.Jobs.Quickstart.SyntheticDataset.ClassNames[..3], names);
        var report = JsonDocument.Parse(File.ReadAllText(await DownloadAsync(_env.Tracker, skip1, "extract_report.json", root))).RootElement;
        Assert.Equal(2, report.GetProperty("skipped_count").GetInt32());
        Assert.All(report.GetProperty("skipped").EnumerateArray(), s => Assert.Contains("_corrupt", s.GetProperty("file").GetString()));
        Assert.Equal(2, (await _env.Tracker.GetMetricsAsync(skip1, "extract/skipped")).Single().Value);
        using (var preview = SkiaSharp.SKBitmap.Decode(await DownloadAsync(_env.Tracker, skip1, "preview.png", root)))
            Assert.Equal((8 * 258 + 2, 258 + 2), (preview.Width, preview.Height));

        // Same seed -> the same bytes (hash from the tracker).
        Assert.Equal(await ShaAsync(_env.Tracker, skip1, "dataset.npz"), await ShaAsync(_env.Tracker, skip2, "dataset.npz"));

        // on_corrupt: fail -> Failed at once, naming the file, and no output registered (only checkpoints).
        var f = await _env.WaitTerminalAsync(fail);
        Assert.Equal(RunStatus.Failed, f.Status);
        Assert.Equal(1, f.Attempt);
        Assert.Contains("_corrupt", f.FailureReason);
        Assert.Contains("on_corrupt: fail", f.FailureReason);
        Assert.All(await _env.Tracker.ListArtifactsAsync(fail), a => Assert.StartsWith("checkpoints/", a.Name));

        // per_class 2, then another seed's order, then limit 5: 5 of the full set's rows, at most 2 per class.
        var subNpz = await DownloadAsync(_env.Tracker, subset, "dataset.npz", root);
        var sub = Npz.LoadKey(subNpz, "labels").As<long>();
        Assert.Equal(5, sub.Length);
        Assert.All(sub.GroupBy(x => x), g => Assert.True(g.Count() <= 2));
        Assert.Subset(Rows(arr).ToHashSet(), Rows(Npz.LoadKey(subNpz, "arr_0")).ToHashSet());

        // Parts were released (storage freed) once the outputs were registered.
        var parts = (await _env.Tracker.ListArtifactsAsync(skip1)).Where(a => a.Name.StartsWith(RunCheckpoints.PartPrefix)).ToList();
        Assert.Equal(2, parts.Count); // 18 images in chunks of 9
        Assert.All(parts, a => Assert.Equal(0, a.SizeBytes));
        _log.WriteLine($"4 extraction runs in {sw.Elapsed.TotalSeconds:F1} s");
    }

    static IEnumerable<string> Rows(NpyArray a)
    {
        int per = (int)(a.Count / a.Shape[0]);
        for (int i = 0; i < a.Shape[0]; i++) yield return Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(a.Data.AsSpan(i * per, per)));
    }

    [Fact]
    public async Task KilledWorkerAndCancelledRunResumeToTheBytesOfAnUninterruptedRun()
    {
        var sw = Stopwatch.StartNew();
        // Two workers on their own queue, started together with the shared one; the job goes to one of them.
        var w = new[] { _env.StartWorker("extract-kill-1", "extract-kill"), _env.StartWorker("extract-kill-2", "extract-kill") };
        await Task.WhenAll(w.Select(x => x.WaitReadyAsync()).Append(WorkerAsync()));
        var root = Directory.CreateTempSubdirectory("jobs-eval-resume").FullName;
        var source = MakeSource(root);
        var p = new ExtractDatasetParams { Source = source, OnCorrupt = OnCorrupt.Skip, Seed = 3, ChunkSize = 2, SavePngs = true };
        var plain = await Submit(p);
        var slow = p with { ThrottleMs = 1000 };
        var killed = await Submit(slow, "extract-kill");

        // SIGKILL mid-run: the other worker takes over after the lease expires and resumes from the last chunk.
        var running = await _env.WaitRunAsync(killed, r => r.Status == RunStatus.Running && r.LeaseOwner is not null, "Running");
        var a = w.Single(x => running.LeaseOwner!.StartsWith(x.Name + "/"));
        var b = w.Single(x => x != a);
        await _env.WaitRunAsync(killed, r => r.Progress >= 0.3, "30 % progress");
        var ckAtKill = await CheckpointStepAsync(_env.Tracker, killed);
        a.Kill();
        Assert.True(ckAtKill >= 4 && ckAtKill < 18, $"checkpoint at image {ckAtKill}");
        var cancelled = await Submit(slow); // on the shared worker, while the killed run waits for its lease to expire
        await SucceededAsync(_env, plain);
        var want = await ShaAsync(_env.Tracker, plain, "dataset.npz");

        // Cancel mid-run, then retry: resumes from its checkpoint.
        await _env.WaitRunAsync(cancelled, r => r.Status == RunStatus.Running && r.Progress >= 0.3, "30 % progress");
        await _env.Client.CancelAsync(cancelled);
        var c = await _env.WaitTerminalAsync(cancelled);
        Assert.Equal(RunStatus.Cancelled, c.Status);
        Assert.Null(await _env.Tracker.GetArtifactAsync(cancelled, "dataset.npz"));
        var ckAtCancel = await CheckpointStepAsync(_env.Tracker, cancelled);
        Assert.True(ckAtCancel >= 6 && ckAtCancel < 18, $"cancelled at image {ckAtCancel}, expected mid-run");
        Assert.Equal(RunStatus.Queued, await _env.Client.RetryAsync(cancelled));

        var k = await SucceededAsync(_env, killed);
        await SucceededAsync(_env, cancelled);
        Assert.True(k.Attempt >= 2, $"attempt {k.Attempt}");
        Assert.Equal(want, await ShaAsync(_env.Tracker, killed, "dataset.npz"));
        Assert.Equal(want, await ShaAsync(_env.Tracker, cancelled, "dataset.npz"));
        var resumedAt = int.Parse(System.Text.RegularExpressions.Regex.Match(await LogsAsync(_env.Tracker, killed), @"resuming at image (\d+)/").Groups[1].Value);
        Assert.True(resumedAt >= ckAtKill && resumedAt < 18, $"resumed at image {resumedAt}, checkpoint at kill {ckAtKill}");
        Assert.Contains($"resuming at image {ckAtCancel}", await LogsAsync(_env.Tracker, cancelled));
        Assert.Contains("resuming from checkpoint", b.Output);
        // PNGs: row k of the npz is {k:06d}.png
        Assert.Equal(await ShaAsync(_env.Tracker, plain, "pngs.tar"), await ShaAsync(_env.Tracker, killed, "pngs.tar"));
        _log.WriteLine($"kill at image {ckAtKill}, cancel at image {ckAtCancel}; {sw.Elapsed.TotalSeconds:F1} s");
    }
}

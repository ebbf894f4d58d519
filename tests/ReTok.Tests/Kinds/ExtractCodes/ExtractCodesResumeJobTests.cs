using System.Diagnostics;
using System.Text.RegularExpressions;
using ReTok.Jobs.Kinds.ExtractCodes;
using ReTok.Jobs.Quickstart;
using ReTok.Models.IO;
using ReTok.Tests.Engine;
using ReTok.Tests.Kinds.Support;
using ReTok.Tracking;
using Xunit.Abstractions;
using static ReTok.Tests.Kinds.Support.EvalJobSupport;

namespace ReTok.Tests.Kinds.ExtractCodes;

/// <summary>
/// extract-codes interrupted mid-run with two real `retok worker` processes on PostgreSQL, for both ways it reads images:
/// the input `data` (dataset.npz) run loses its worker to SIGKILL and the other worker resumes it after the engine's
/// dead-worker detection; the params.source (image folder) run is cancelled and retried. Both resume from their
/// checkpointed codes (chunk_images 1: one image per checkpoint) and end with the codes, labels and image_index of an
/// uninterrupted run. debug_batch_delay_ms slows the interrupted runs so that the kill and the cancel land mid-run.
/// Center view (ten_crop false) and the tiny tokenizer: ten-crop costs 10 encodes per image, and the view code is the
/// same for both paths (GenPipelineTests checks the ten-crop rows).
/// </summary>
public sealed class ExtractCodesResumeJobTests(EngineEnvironment env, ITestOutputHelper log) : IClassFixture<EngineEnvironment>
{
    const int Images = 6;

    static ExtractCodesParams P(int delayMs, string? source = null) => new()
    {
        TenCrop = false, Tokens = 8, BatchSize = 1, ChunkImages = 1, Source = source, DebugBatchDelayMs = delayMs,
    };

    async Task<Dictionary<string, NpyArray>> CodesAsync(long run, string dir) => Npz.Load(await DownloadAsync(env.Tracker, run, "codes.npz", dir));

    static int ResumedAt(string logs) => int.Parse(Regex.Match(logs, @"resuming at image (\d+)/").Groups[1].Value);

    [Fact]
    public async Task KilledDataRunAndCancelledSourceRunResumeToTheCodesOfUninterruptedRuns()
    {
        var sw = Stopwatch.StartNew();
        const string queue = "codes-resume";
        var root = Directory.CreateDirectory(Path.Combine(env.Root, queue)).FullName;
        var inputs = await GenTestInputs.CreateAsync(env.Tracker, root, images: Images, inceptionWeights: false);
        var source = Directory.CreateDirectory(Path.Combine(root, "source")).FullName;
        Assert.Equal(Images, SyntheticDataset.Generate(source, classes: 2, perClass: Images / 2, seed: 5));
        var model = new Dictionary<string, string> { ["tokenizer"] = inputs.Ref("tokenizer.safetensors"), ["tokenizer_config"] = inputs.Ref("tokenizer.yaml") };
        var withData = new Dictionary<string, string>(model) { ["data"] = inputs.Ref("dataset.npz") };
        var w = new[] { env.StartWorker($"{queue}-1", queue), env.StartWorker($"{queue}-2", queue) };
        await Task.WhenAll(w.Select(x => x.WaitReadyAsync()));
        log.WriteLine($"workers ready after {sw.Elapsed.TotalSeconds:F1} s");

        // data path: SIGKILL the worker holding the run after its second checkpoint; the other worker takes it over
        var killed = await env.Client.SubmitAsync("extract-codes", P(1500), inputs: withData, queue: queue);
        var running = await env.WaitRunAsync(killed, r => r.Status == RunStatus.Running && r.LeaseOwner is not null, "Running");
        var a = w.Single(x => running.LeaseOwner!.StartsWith(x.Name + "/"));
        var b = w.Single(x => x != a);
        // progress 3/6 is reported after image 3: the checkpoint of image 2 is written by then
        await env.WaitRunAsync(killed, r => r.Progress >= 0.5 - 1e-9, "image 3 of 6");
        var ckAtKill = await CheckpointStepAsync(env.Tracker, killed);
        a.Kill();
        log.WriteLine($"killed {a.Name} at checkpoint image {ckAtKill} after {sw.Elapsed.TotalSeconds:F1} s");
        Assert.InRange(ckAtKill, 2, Images - 1);

        // source path: cancel mid-run (the survivor runs it while the killed run waits for its lease to expire), then retry
        var cancelled = await env.Client.SubmitAsync("extract-codes", P(1500, source), inputs: model, queue: queue);
        await env.WaitRunAsync(cancelled, r => r.Status == RunStatus.Running && r.Progress >= 0.5 - 1e-9, "image 3 of 6", 180);
        await env.Client.CancelAsync(cancelled);
        var c = await env.WaitTerminalAsync(cancelled, 120);
        Assert.Equal(RunStatus.Cancelled, c.Status);
        Assert.Null(await env.Tracker.GetArtifactAsync(cancelled, "codes.npz"));
        var ckAtCancel = await CheckpointStepAsync(env.Tracker, cancelled);
        Assert.InRange(ckAtCancel, 2, Images - 1);
        Assert.Equal(RunStatus.Queued, await env.Client.RetryAsync(cancelled));
        log.WriteLine($"cancelled the source run at checkpoint image {ckAtCancel} after {sw.Elapsed.TotalSeconds:F1} s");

        // the uninterrupted runs, on the surviving worker
        var plainData = await env.Client.SubmitAsync("extract-codes", P(0), inputs: withData, queue: queue);
        var plainSource = await env.Client.SubmitAsync("extract-codes", P(0, source), inputs: model, queue: queue);
        var k = await SucceededAsync(env, killed, 240);
        await SucceededAsync(env, cancelled, 240);
        await SucceededAsync(env, plainData, 240);
        await SucceededAsync(env, plainSource, 240);
        log.WriteLine($"all four runs done after {sw.Elapsed.TotalSeconds:F1} s");

        Assert.True(k.Attempt >= 2, $"attempt {k.Attempt}");
        Assert.Contains($"[run {killed}] info: resuming from checkpoint at step", b.Output);
        var killedLogs = await LogsAsync(env.Tracker, killed);
        int resumedAt = ResumedAt(killedLogs);
        Assert.True(resumedAt >= ckAtKill && resumedAt < Images, $"resumed at image {resumedAt}, checkpoint at kill {ckAtKill}\n{killedLogs}");
        Assert.Equal((int)ckAtCancel, ResumedAt(await LogsAsync(env.Tracker, cancelled)));

        var dataCodes = await CodesAsync(plainData, root);
        var sourceCodes = await CodesAsync(plainSource, root);
        Assert.Equal(new long[] { Images, 8 }, dataCodes["codes"].Shape);
        Assert.Equal(new long[] { Images, 8 }, sourceCodes["codes"].Shape);
        AssertSameCodes(dataCodes, await CodesAsync(killed, root), "data path, killed and resumed");
        AssertSameCodes(sourceCodes, await CodesAsync(cancelled, root), "source path, cancelled and retried");
        // the two paths read different images: the comparison is not vacuous
        Assert.False(dataCodes["codes"].As<long>().SequenceEqual(sourceCodes["codes"].As<long>()));
        Assert.Equal(new long[] { 0, 0, 0, 1, 1, 1 }, sourceCodes["labels"].As<long>());
        log.WriteLine($"kill at image {ckAtKill} (resumed at {resumedAt}), cancel at image {ckAtCancel}; {sw.Elapsed.TotalSeconds:F1} s");
    }
}

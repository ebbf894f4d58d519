using System.Diagnostics;
using ReTok.Jobs.Kinds.SampleGfid;
using ReTok.Jobs.Kinds.TrainGenerator;
using ReTok.Tests.Engine;
using ReTok.Tests.Kinds.Support;
using ReTok.Tracking;
using Xunit.Abstractions;

namespace ReTok.Tests.Kinds;

/// <summary>
/// sample-gfid and train-generator with two real `retok worker` processes on PostgreSQL: the worker running a job is
/// SIGKILLed after the job's first checkpoint, the other worker resumes it (after the engine's dead-worker detection),
/// and the outputs are byte-identical to an uninterrupted run. The jobs are slowed down by their debug_*_delay_ms hooks
/// (the delay does not change any result) so that the kill lands mid-job.
/// </summary>
public sealed class GenWorkerProcessTests(EngineEnvironment env, ITestOutputHelper log) : IClassFixture<EngineEnvironment>
{
    async Task<GenTestInputs> InputsAsync(string name) =>
        await GenTestInputs.CreateAsync(env.Tracker, Path.Combine(env.Root, name), images: 2, inceptionWeights: false);

    async Task<long> CheckpointStepAsync(long runId) => await EvalJobSupport.CheckpointStepAsync(env.Tracker, runId);

    /// <summary>Starts two workers on <paramref name="queue"/>, waits until <paramref name="victim"/> returns a run that is
    /// Running and has a checkpoint at step >= 1, kills the worker holding its lease; returns (killed, survivor, step).</summary>
    async Task<(WorkerProcess Killed, WorkerProcess Survivor, long Step)> KillAfterFirstCheckpointAsync(string queue, Func<Task<long?>> victim, Stopwatch sw)
    {
        var a = env.StartWorker($"{queue}-a", queue);
        var b = env.StartWorker($"{queue}-b", queue);
        await Task.WhenAll(a.WaitReadyAsync(), b.WaitReadyAsync());
        var deadline = DateTime.UtcNow.AddSeconds(240);
        while (DateTime.UtcNow < deadline)
        {
            if (await victim() is { } id && await CheckpointStepAsync(id) >= 1 && (await env.Tracker.Runs.GetAsync(id))!.LeaseOwner is { } owner)
            {
                var (killed, survivor) = owner.StartsWith(a.Name + "/") ? (a, b) : (b, a);
                var step = await CheckpointStepAsync(id);
                killed.Kill();
                log.WriteLine($"killed {killed.Name} holding run {id} at checkpoint step {step} after {sw.Elapsed.TotalSeconds:F0} s");
                return (killed, survivor, step);
            }
            await Task.Delay(100);
        }
        throw new TimeoutException($"no checkpoint to kill at\n{env.WorkerLogs()}");
    }

    [Fact]
    public async Task ShardKilledMidSampling_ResumesOnTheOtherWorker_SamplesByteIdentical()
    {
        var sw = Stopwatch.StartNew();
        const string queue = "gen-shard";
        var inputs = await InputsAsync(queue);
        SampleGfidParams P(int delay) => new()
        {
            NumSamples = 8, NumShards = 2, Tokens = 8, BatchSize = 1, CheckpointEvery = 1, CfgScale = 2.0, Seed = 4,
            WeightsDir = inputs.WeightsDir, DebugBatchDelayMs = delay,
        };
        var killedRoot = await env.Client.SubmitAsync("sample-gfid", P(1500), inputs: inputs.SampleInputs(), queue: queue);
        async Task<long?> Shard0()
        {
            await using var db = env.Tracker.CreateDb();
            var agg = db.Runs.Where(r => r.Id == killedRoot).Select(r => r.ContinuedByRunId).Single();
            return db.Runs.Where(r => r.FanInRunId == agg && agg != null && r.ShardIndex == 0 && r.Status == RunStatus.Running).Select(r => (long?)r.Id).FirstOrDefault();
        }
        var (_, survivor, step) = await KillAfterFirstCheckpointAsync(queue, Shard0, sw);
        Assert.InRange(step, 1, 3); // mid-shard: 4 batches per shard

        var agg = await FinalAsync(killedRoot);
        var shard0 = (await ShardsAsync(agg.Id))[0];
        Assert.True(shard0.Attempt >= 2, $"shard 0 attempt {shard0.Attempt}");
        Assert.Contains($"[run {shard0.Id}] info: resuming from checkpoint at step {step}", survivor.Output);
        log.WriteLine($"resumed run done after {sw.Elapsed.TotalSeconds:F0} s");

        var whole = await FinalAsync(await env.Client.SubmitAsync("sample-gfid", P(0), inputs: inputs.SampleInputs(), queue: queue));
        log.WriteLine($"uninterrupted run done after {sw.Elapsed.TotalSeconds:F0} s");
        var a = (await env.Tracker.GetArtifactAsync(agg.Id, "samples.npz"))!;
        var w = (await env.Tracker.GetArtifactAsync(whole.Id, "samples.npz"))!;
        Assert.Equal(w.Sha256, a.Sha256);
        Assert.Equal(w.SizeBytes, a.SizeBytes);
        foreach (var s in await ShardsAsync(whole.Id)) Assert.Equal(1, s.Attempt);
    }

    [Fact]
    public async Task TrainGeneratorKilledMidRun_ResumesBitIdenticalWeightsAndLosses()
    {
        var sw = Stopwatch.StartNew();
        const string queue = "gen-train";
        var inputs = await InputsAsync(queue);
        TrainGeneratorParams P(int delay) => new()
        {
            GptModel = null, Dim = 32, NLayer = 1, NHead = 2, NumClasses = 4, MaxSteps = 8, WarmupSteps = 2, GlobalBatchSize = 2,
            CheckpointEvery = 2, Lr = 1e-3, Seed = 3, DebugStepDelayMs = delay, Ema = true, EmaDecay = 0.9,
        };
        var codes = new Dictionary<string, string> { ["codes"] = inputs.Ref("codes.npz") };
        var killed = await env.Client.SubmitAsync("train-generator", P(1000), inputs: codes, queue: queue);
        var (_, survivor, step) = await KillAfterFirstCheckpointAsync(queue, async () =>
            (await env.Tracker.Runs.GetAsync(killed))!.Status == RunStatus.Running ? killed : null, sw);
        Assert.InRange(step, 2, 6);
        var k = await env.WaitTerminalAsync(killed, 240);
        Assert.True(k.Status == RunStatus.Succeeded, $"{k.Status}: {k.FailureReason}\n{env.WorkerLogs()}");
        Assert.True(k.Attempt >= 2, $"attempt {k.Attempt}");
        Assert.Contains($"[run {killed}] info: resuming from checkpoint at step {step}", survivor.Output);

        // uninterrupted, on the surviving worker process (a fresh process for this run would not matter: the default
        // generator is seeded at the start of the run)
        var whole = await env.Client.SubmitAsync("train-generator", P(0), inputs: codes, queue: queue);
        var w = await env.WaitTerminalAsync(whole, 240);
        Assert.True(w.Status == RunStatus.Succeeded, $"{w.Status}: {w.FailureReason}\n{env.WorkerLogs()}");
        log.WriteLine($"both runs done after {sw.Elapsed.TotalSeconds:F0} s");

        Assert.Equal((await env.Tracker.GetArtifactAsync(whole, "generator.safetensors"))!.Sha256,
                     (await env.Tracker.GetArtifactAsync(killed, "generator.safetensors"))!.Sha256);
        // the EMA travels in the checkpoint: the resumed run's EMA equals the uninterrupted one's
        Assert.Equal((await env.Tracker.GetArtifactAsync(whole, "generator_ema.safetensors"))!.Sha256,
                     (await env.Tracker.GetArtifactAsync(killed, "generator_ema.safetensors"))!.Sha256);
        Assert.NotEqual((await env.Tracker.GetArtifactAsync(whole, "generator.safetensors"))!.Sha256,
                        (await env.Tracker.GetArtifactAsync(whole, "generator_ema.safetensors"))!.Sha256);
        foreach (var key in new[] { "loss", "grad_norm", "lr" })
        {
            var mk = await env.Tracker.GetMetricsAsync(killed, key);
            var mw = await env.Tracker.GetMetricsAsync(whole, key);
            Assert.Equal(Enumerable.Range(1, 8).Select(i => (long)i), mk.Select(m => m.Step));
            Assert.Equal(mw.Select(m => m.Value), mk.Select(m => m.Value));
        }
        var losses = (await env.Tracker.GetMetricsAsync(whole, "loss")).Select(m => m.Value).ToList();
        Assert.All(losses, l => Assert.True(double.IsFinite(l) && l > 0));
        Assert.NotEqual(losses[0], losses[^1]); // it trained
    }

    async Task<Run> FinalAsync(long id)
    {
        var r = await env.WaitTerminalAsync(id, 300);
        Assert.True(r.Status == RunStatus.Succeeded, $"run {id} ({r.Kind}): {r.Status} {r.FailureReason}\n{env.WorkerLogs()}");
        return r.ContinuedByRunId is { } next ? await FinalAsync(next) : r;
    }

    async Task<List<Run>> ShardsAsync(long aggregator)
    {
        await using var db = env.Tracker.CreateDb();
        return db.Runs.Where(r => r.FanInRunId == aggregator).OrderBy(r => r.ShardIndex).ToList();
    }
}

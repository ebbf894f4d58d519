using System.Diagnostics;
using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Tracking;
using Xunit.Abstractions;

namespace ReTok.Tests.Engine;

/// <summary>
/// The engine end to end with real `retok worker` processes on a real PostgreSQL: SIGKILL and resume, SIGTERM and
/// re-queue, cancellation, fan-out/fan-in, a three-step pipeline with lineage, failure classification, spec errors.
/// Each scenario uses its own queue so the workers of one test never take another test's jobs.
/// </summary>
public sealed class WorkerProcessTests : IClassFixture<EngineEnvironment>
{
    readonly EngineEnvironment _env;
    readonly ITestOutputHelper _log;
    public WorkerProcessTests(EngineEnvironment env, ITestOutputHelper log) => (_env, _log) = (env, log);

    async Task<long> SubmitAsync(string yaml, params string[] sets) => (await _env.Client.SubmitAsync(JobSpecs.Parse(yaml, sets))).Runs[0].RunId;

    static long Sum(long n) => n * (n + 1) / 2;

    async Task<long> CheckpointStepAsync(long runId) =>
        await _env.Tracker.GetArtifactAsync(runId, RunCheckpoints.Latest) is { } a ? JsonNode.Parse(a.Metadata)!["step"]!.GetValue<long>() : -1;

    /// <summary>Starts two workers on <paramref name="queue"/>; returns (the one that took run <paramref name="id"/>, the other).</summary>
    async Task<(WorkerProcess Holder, WorkerProcess Other, long RunId)> TwoWorkersAndAJobAsync(string prefix, string queue, string yaml)
    {
        var w = new[] { _env.StartWorker($"{prefix}-1", queue), _env.StartWorker($"{prefix}-2", queue) };
        await Task.WhenAll(w.Select(x => x.WaitReadyAsync()));
        var id = await SubmitAsync(yaml);
        var run = await _env.WaitRunAsync(id, r => r.Status == RunStatus.Running && r.LeaseOwner is not null, "Running");
        var holder = w.Single(x => run.LeaseOwner!.StartsWith(x.Name + "/"));
        return (holder, w.Single(x => x != holder), id);
    }

    [Fact]
    public async Task KilledWorkerJobResumesFromCheckpointOnAnotherWorkerWithoutDuplicateMetrics()
    {
        var (a, b, id) = await TwoWorkersAndAJobAsync("kill", "killtest", "kind: selftest\nqueue: killtest\nparams: {n: 40, step_ms: 100, checkpoint_every: 5}");
        var before = await _env.WaitRunAsync(id, r => r.Progress >= 0.3, "30 % progress");
        var ckAtKill = await CheckpointStepAsync(id);
        a.Kill();
        var killedAt = Stopwatch.StartNew();
        Assert.True(before.Status == RunStatus.Running && ckAtKill >= 10, $"expected a running job with a checkpoint before the kill, got {before.Status}, step {ckAtKill}");

        var run = await _env.WaitTerminalAsync(id);
        _log.WriteLine($"run {id}: {run.Status} {killedAt.Elapsed.TotalSeconds:F1} s after SIGKILL of {a.Name} (checkpoint at kill: step {ckAtKill})");
        Assert.Equal(RunStatus.Succeeded, run.Status);
        Assert.True(run.Attempt >= 2 && run.LeaseGeneration >= 2, $"attempt {run.Attempt}, generation {run.LeaseGeneration}");
        var result = JsonNode.Parse(await _env.ResultJsonAsync(id))!;
        Assert.Equal(Sum(40), result["total"]!.GetValue<double>());
        Assert.True(result["resumed_from"]!.GetValue<long>() >= ckAtKill, $"resumed from {result["resumed_from"]}, checkpoint was at {ckAtKill}");
        // Exactly one point per step, each with the value of an uninterrupted run.
        var points = await _env.Tracker.GetMetricsAsync(id, "selftest/sum");
        Assert.Equal(Enumerable.Range(1, 40).Select(i => (long)i), points.Select(p => p.Step));
        Assert.All(points, p => Assert.Equal(Sum(p.Step), p.Value));
        Assert.Contains("resuming from checkpoint", b.Output);
    }

    [Fact]
    public async Task GracefulShutdownCheckpointsRequeuesAndAnotherWorkerResumes()
    {
        var (c, d, id) = await TwoWorkersAndAJobAsync("term", "termtest", "kind: selftest\nqueue: termtest\nparams: {n: 100, step_ms: 50, checkpoint_every: 1000}");
        var before = await _env.WaitRunAsync(id, r => r.Progress >= 0.1, "10 % progress");
        c.Terminate();
        Assert.True(await c.WaitExitAsync(TimeSpan.FromSeconds(60)), $"worker did not exit after SIGTERM\n{c.Output}");
        Assert.True(c.ExitCode == 0, $"exit code {c.ExitCode}\n{c.Output}");
        Assert.True(before.Status == RunStatus.Running, $"the job ended before SIGTERM ({before.Status})");
        Assert.Contains("re-queued for another worker (graceful shutdown)", c.Output);
        var ck = await CheckpointStepAsync(id);
        Assert.True(ck >= (long)(before.Progress * 100), $"checkpoint at step {ck}, progress before SIGTERM {before.Progress:P0}"); // saved on SIGTERM (no periodic one)

        var run = await _env.WaitTerminalAsync(id);
        Assert.Equal(RunStatus.Succeeded, run.Status);
        var result = JsonNode.Parse(await _env.ResultJsonAsync(id))!;
        Assert.Equal(Sum(100), result["total"]!.GetValue<double>());
        Assert.Equal(ck, result["resumed_from"]!.GetValue<long>());
        Assert.Contains($"resuming from checkpoint at step {ck}", d.Output);
        Assert.Equal(100, (await _env.Tracker.GetMetricsAsync(id, "selftest/sum")).Count);
        Assert.Equal(1, run.Attempt); // a graceful re-queue does not use up MaxAttempts (only crashes and transient faults do)
    }

    [Fact]
    public async Task CancelFromTheCliStopsTheHandlerAfterACheckpoint()
    {
        await _env.SharedWorkersAsync();
        var id = await SubmitAsync("kind: selftest\nqueue: shared\nparams: {n: 2000, step_ms: 20, checkpoint_every: 1000}");
        await _env.WaitRunAsync(id, r => r.Status == RunStatus.Running && r.Progress > 0.01, "1 % progress");
        var (code, output) = await _env.CliAsync("runs", "cancel", $"{id}");
        Assert.True(code == 0, output);
        Assert.Contains("cancel requested", output);
        var run = await _env.WaitTerminalAsync(id);
        Assert.Equal(RunStatus.Cancelled, run.Status);
        Assert.Equal("cancelled by request", run.FailureReason);
        var ck = await CheckpointStepAsync(id);
        var points = await _env.Tracker.GetMetricsAsync(id, "selftest/sum");
        Assert.True(ck > 0 && ck < 2000, $"checkpoint step {ck}");
        Assert.Equal(ck, points.Max(p => p.Step)); // it stopped where it checkpointed
        Assert.Null(await _env.Tracker.GetArtifactAsync(id, "result.json"));
        Assert.Equal(1, run.Attempt);
    }

    [Fact]
    public async Task FanOutAggregatorRunsExactlyOnceAndAFailedShardIsRetriedAlone()
    {
        // Two worker processes, five slots: the six shards finish concurrently across processes.
        await _env.SharedWorkersAsync();
        var (w1, w2) = (_env.Worker("shared-1"), _env.Worker("shared-2"));
        var parent = await SubmitAsync("kind: selftest\nqueue: shared\nparams: {n: 10, step_ms: 30, shards: 6, first_shard_transient_failures: 1}");
        var p = await _env.WaitTerminalAsync(parent);
        Assert.Equal(RunStatus.Succeeded, p.Status);
        Assert.NotNull(p.ContinuedByRunId);
        var agg = await _env.WaitTerminalAsync(p.ContinuedByRunId!.Value);
        Assert.Equal(RunStatus.Succeeded, agg.Status);
        // Exactly once: one aggregator, acquired once, and its total is the sum over all shards.
        Assert.Equal((1, 1L), (agg.Attempt, agg.LeaseGeneration));
        Assert.Single(await _env.Tracker.Runs.ListAsync(new RunFilter(Kind: "selftest-aggregate", ParentRunId: parent)));
        Assert.Equal(21.0 * Sum(10), JsonNode.Parse(await _env.ResultJsonAsync(agg.Id))!["total"]!.GetValue<double>()); // scales 1..6
        var shards = (await _env.Tracker.Runs.ListAsync(new RunFilter(ParentRunId: parent))).Where(r => r.FanInRunId == agg.Id).OrderBy(r => r.ShardIndex).ToList();
        Assert.Equal(6, shards.Count);
        Assert.All(shards, s => Assert.Equal(RunStatus.Succeeded, s.Status));
        Assert.Equal(2, shards[0].Attempt);                   // the transient fault was retried, alone
        Assert.All(shards.Skip(1), s => Assert.Equal(1, s.Attempt));
        Assert.Contains("simulated transient fault", string.Join("\n", (await _env.Tracker.GetLogsAsync(shards[0].Id)).Select(l => l.Message)));
        Assert.Equal(6, (await _env.Tracker.GetInputsAsync(agg.Id)).Count); // lineage: the aggregator read every shard
        _log.WriteLine($"executions so far: shared-1 {w1.Output.Split("selftest attempt").Length - 1}, shared-2 {w2.Output.Split("selftest attempt").Length - 1}");
    }

    [Fact]
    public async Task ThreeStepPipelineRunsInOrderAndRecordsLineage()
    {
        await _env.SharedWorkersAsync();
        var r = await _env.Client.SubmitAsync(JobSpecs.Parse("""
            pipeline: chain
            steps:
              produce: {kind: selftest, queue: shared, params: {n: 10, step_ms: 10}}
              transform: {kind: selftest, queue: shared, inputs: {data: produce/result.json}, params: {n: 5, step_ms: 10, scale: 2}}
              report: {kind: selftest, queue: shared, needs: [transform], inputs: {data: transform/result.json}, params: {n: 3, step_ms: 10}}
            """));
        Assert.NotNull(r.PipelineId);
        Assert.Equal([RunStatus.Queued, RunStatus.Waiting, RunStatus.Waiting], r.Runs.Select(x => x.Status));
        var ids = r.Runs.ToDictionary(x => x.Step, x => x.RunId);
        var report = await _env.WaitTerminalAsync(ids["report"]);
        Assert.Equal(RunStatus.Succeeded, report.Status);
        var produce = (await _env.Tracker.Runs.GetAsync(ids["produce"]))!;
        var transform = (await _env.Tracker.Runs.GetAsync(ids["transform"]))!;
        Assert.True(transform.StartedAt >= produce.FinishedAt && report.StartedAt >= transform.FinishedAt);
        Assert.Equal(55 + 2 * 15 + 6, JsonNode.Parse(await _env.ResultJsonAsync(report.Id))!["total"]!.GetValue<double>());
        var tIn = Assert.Single(await _env.Tracker.GetInputsAsync(transform.Id));
        Assert.Equal(("data", produce.Id, "result.json"), (tIn.Use.Role, tIn.Artifact.RunId, tIn.Artifact.Name));
        var rIn = Assert.Single(await _env.Tracker.GetInputsAsync(report.Id));
        Assert.Equal((transform.Id, "result.json"), (rIn.Artifact.RunId, rIn.Artifact.Name));
        Assert.Empty(await _env.Tracker.GetInputsAsync(produce.Id));

        // The CLI downloads the final artifact with its hash checked.
        var dest = Path.Combine(_env.Root, "report.json");
        var (code, output) = await _env.CliAsync("artifacts", "get", $"{report.Id}", "result.json", "--out", dest);
        Assert.True(code == 0, output);
        Assert.Contains("(verified)", output);
        Assert.Equal(await _env.ResultJsonAsync(report.Id), await File.ReadAllTextAsync(dest));
    }

    [Fact]
    public async Task DeterministicFailureFailsAtOnceAndRetryRequeuesIt()
    {
        await _env.SharedWorkersAsync();
        var id = await SubmitAsync("kind: selftest\nqueue: shared\nparams: {n: 10, step_ms: 10, fail_at_step: 3}");
        var run = await _env.WaitTerminalAsync(id);
        Assert.Equal(RunStatus.Failed, run.Status);
        Assert.Equal(1, run.Attempt); // not retried
        Assert.Contains("fail_at_step=3 reached", run.FailureReason);
        Assert.Equal(2, (await _env.Tracker.GetMetricsAsync(id, "selftest/sum")).Count);
        // `runs retry` re-queues it; it fails the same way (deterministic), as a new attempt series.
        Assert.Equal(RunStatus.Queued, await _env.Client.RetryAsync(id));
        var again = await _env.WaitRunAsync(id, r => r.Status == RunStatus.Failed && r.LeaseGeneration == 2, "second failure");
        Assert.Equal(1, again.Attempt);
    }

    [Fact]
    public async Task SubmitRejectsABadSpecNamingKeyPathAndExpectedType()
    {
        var spec = Path.Combine(_env.Root, "bad.yaml");
        await File.WriteAllTextAsync(spec, "kind: selftest\nparams:\n  n: lots\n  stepms: 5\n");
        var before = (await _env.Tracker.Runs.ListAsync(new RunFilter(Limit: 100_000))).Count;
        var (code, output) = await _env.CliAsync("submit", spec, "--set", "checkpoint_every=0.5");
        Assert.Equal(2, code);
        Assert.Contains("params.n: expected an integer (int), got 'lots'", output);
        Assert.Contains("params.stepms: unknown key (did you mean 'step_ms'?)", output);
        Assert.Contains("params.checkpoint_every: expected an integer (int), got '0.5'", output);
        Assert.Equal(before, (await _env.Tracker.Runs.ListAsync(new RunFilter(Limit: 100_000))).Count); // nothing was created
    }
}

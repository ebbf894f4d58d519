using System.Diagnostics;
using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Jobs.Kinds.TrainGenerator;
using ReTok.Models.Distributed;
using ReTok.Models.IO;
using ReTok.Tests.Engine;
using ReTok.Tracking;
using TorchSharp;
using Xunit.Abstractions;

namespace ReTok.Tests.Kinds.TrainGenerator;

/// <summary>
/// train-generator with <c>nodes: 2</c> (backend tcp) on real worker processes, one rank run on each: the result equals
/// the single-process 2-replica cpu run, and after a SIGKILL of rank 1's or rank 0's worker mid-run the group fails
/// cleanly, resumes from rank 0's checkpoint and ends with the weights of the uninterrupted run.
/// </summary>
public sealed class MultiNodeJobTests(EngineEnvironment env, ITestOutputHelper log) : IClassFixture<EngineEnvironment>
{
    const string Queue = "mnode";

    static readonly TrainGeneratorParams Tiny = new()
    {
        GptModel = null, Dim = 32, NLayer = 1, NHead = 2, NumClasses = 4, VocabSize = 64, MaxSteps = 6, WarmupSteps = 2,
        GlobalBatchSize = 4, CheckpointEvery = 2, Lr = 1e-3, ClassDropoutProb = 0, TokenDropoutP = 0, DropoutP = 0,
    };

    async Task<Dictionary<string, torch.Tensor>> WeightsAsync(long runId)
    {
        var file = Path.Combine(env.Root, $"{runId}.safetensors");
        await env.Tracker.DownloadArtifactAsync((await env.Tracker.GetArtifactAsync(runId, "generator.safetensors"))!, file);
        return StateDictFile.Read(file);
    }

    static double MaxDiff(Dictionary<string, torch.Tensor> a, Dictionary<string, torch.Tensor> b)
    {
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        return a.Max(kv => (kv.Value - b[kv.Key]).abs().max().item<float>());
    }

    [Fact]
    public async Task TwoNodesMatchTwoReplicasAndAKilledRankResumesFromTheCheckpoint()
    {
        // one slot each; two are SIGKILLed below, and every group needs two
        var workers = Enumerable.Range(1, 4).Select(i => env.StartWorker($"mn-{i}", Queue)).ToArray();
        var codes = torch.randint(0, 64, new long[] { 8, 8 }, torch.ScalarType.Int64, generator: new torch.Generator(1));
        var npz = Path.Combine(env.Root, "mn-codes.npz");
        Npz.Save(npz, new Dictionary<string, NpyArray> { ["codes"] = NpyArray.FromTensor(codes), ["labels"] = NpyArray.FromTensor(torch.arange(8L) % 4) });
        var src = await env.Tracker.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        await env.Tracker.SaveArtifactFileAsync(src.Id, "codes.npz", npz);
        var inputs = new Dictionary<string, string> { ["codes"] = $"run:{src.Id}/codes.npz" };
        await Task.WhenAll(workers.Select(w => w.WaitReadyAsync()));

        async Task<Run> Succeeded(long id)
        {
            var r = await env.WaitTerminalAsync(id, 300);
            Assert.True(r.Status == RunStatus.Succeeded, $"run {id}: {r.Status}: {r.FailureReason}\n{env.WorkerLogs()}");
            return r;
        }

        var reference = await Succeeded(await env.Client.SubmitAsync("train-generator", Tiny with { DataParallel = new(2) }, inputs: inputs, queue: Queue));
        var tcp = new DataParallelConfig(1, "tcp") { TimeoutS = 60 };
        var group = await Succeeded(await env.Client.SubmitAsync("train-generator", Tiny with { DataParallel = tcp }, inputs: inputs, queue: Queue, nodes: 2));
        var ranks = await env.Tracker.Runs.GetNodeGroupAsync(group.Id);
        await Succeeded(ranks[1].RunId);
        ranks = await env.Tracker.Runs.GetNodeGroupAsync(group.Id);
        Assert.Equal([(0, RunStatus.Succeeded), (1, RunStatus.Succeeded)], ranks.Select(r => (r.Rank, r.Status)));
        var rank1 = (await env.Tracker.Runs.GetAsync(ranks[1].RunId))!;
        // one rank run per worker process (each has one slot; rank 0 holds its slot while it waits for rank 1)
        Assert.NotEqual(workers.Single(w => w.Output.Contains($"[run {group.Id}] succeeded")), workers.Single(w => w.Output.Contains($"[run {rank1.Id}] succeeded")));
        var (code, shown) = await env.CliAsync("runs", "show", rank1.Id.ToString());
        Assert.True(code == 0, shown);
        Assert.Contains($"rank 1 of 2: rank 0 run {group.Id} Succeeded, rank 1 run {rank1.Id} Succeeded", shown.ReplaceLineEndings(" "));
        // rank 0 writes the outputs and checkpoints, rank 1 none
        Assert.Null(await env.Tracker.GetArtifactAsync(rank1.Id, "generator.safetensors"));
        Assert.Null(await env.Tracker.GetArtifactAsync(rank1.Id, RunCheckpoints.Latest));
        var wRef = await WeightsAsync(reference.Id);
        var wGroup = await WeightsAsync(group.Id);
        double d = MaxDiff(wRef, wGroup);
        log.WriteLine($"2 nodes x 1 (tcp) vs 1 process x 2 replicas (cpu): max |dw| = {d:E2}");
        Assert.True(d < 1e-6, $"2 nodes vs 2 replicas: max |dw| {d}");
        var l0 = (await env.Tracker.GetMetricsAsync(reference.Id, "loss")).Select(m => m.Value).ToList();
        var l1 = (await env.Tracker.GetMetricsAsync(group.Id, "loss")).Select(m => m.Value).ToList();
        Assert.Equal(6, l1.Count);
        for (int i = 0; i < l0.Count; i++) Assert.True(Math.Abs(l0[i] - l1[i]) <= 1e-5 * Math.Abs(l0[i]), $"step {i + 1}: loss {l0[i]} vs {l1[i]}");

        // the same group, slowed down, and one rank's worker SIGKILLed after rank 0's first checkpoint: first rank 1's
        // (rank 0 sees the connection close), then rank 0's (rank 1 does, and waits for rank 0's next generation)
        long CheckpointStep(Artifact? a) => a is null ? -1 : JsonNode.Parse(a.Metadata)!["step"]!.GetValue<long>();
        foreach (int victimRank in new[] { 1, 0 })
        {
            var slowId = await env.Client.SubmitAsync("train-generator", Tiny with { DataParallel = tcp, DebugStepDelayMs = 700 }, inputs: inputs, queue: Queue, nodes: 2);
            var deadline = DateTime.UtcNow.AddSeconds(180);
            while (CheckpointStep(await env.Tracker.GetArtifactAsync(slowId, RunCheckpoints.Latest)) < 2 && DateTime.UtcNow < deadline) await Task.Delay(100);
            var slowRanks = await env.Tracker.Runs.GetNodeGroupAsync(slowId);
            var victimRun = (await env.Tracker.Runs.GetAsync(slowRanks[victimRank].RunId))!;
            var survivorId = slowRanks[1 - victimRank].RunId;
            Assert.True(victimRun.Status == RunStatus.Running && victimRun.LeaseOwner is not null, $"rank {victimRank} is {victimRun.Status}\n{env.WorkerLogs()}");
            var victim = workers.Single(w => victimRun.LeaseOwner!.StartsWith(w.Name + "/"));
            victim.Kill();
            var killed = Stopwatch.StartNew();
            // the survivor fails its step at once (the connection closed), not after the 60 s timeout, and goes back to the queue
            await env.WaitRunAsync(survivorId, r => r.Attempt >= 2 || r.Status.IsTerminal(), "the surviving rank's retry", 60);
            log.WriteLine($"rank {1 - victimRank} retried {killed.Elapsed.TotalSeconds:F1} s after the kill of rank {victimRank}'s worker {victim.Name}");
            Assert.True(killed.Elapsed < TimeSpan.FromSeconds(30), $"the surviving rank noticed the lost one only after {killed.Elapsed}");
            // a FIN, or a reset (ConnectionReset, Shutdown) when the dead process had unread data in its socket
            Assert.Contains(await env.Tracker.GetLogsAsync(survivorId),
                l => l.Message.Contains($"rank {victimRank} closed the connection") || l.Message.Contains($"connection to rank {victimRank} failed"));
            var slow = await Succeeded(slowId);
            var r1 = await Succeeded(slowRanks[1].RunId);   // it records its success just after rank 0's (the final barrier)
            log.WriteLine($"group {slowId} succeeded {killed.Elapsed.TotalSeconds:F1} s after the kill; attempts: rank 0 {slow.Attempt}, rank 1 {r1.Attempt}");
            Assert.True(slow.Attempt >= 2 && r1.Status == RunStatus.Succeeded && r1.Attempt >= 2, $"rank 0 attempt {slow.Attempt}; rank 1: {r1.Status}, attempt {r1.Attempt}");
            foreach (var id in new[] { slowId, r1.Id })
                Assert.Contains(await env.Tracker.GetLogsAsync(id), l => l.Message.Contains("resuming from checkpoint at step"));
            double dk = MaxDiff(wGroup, await WeightsAsync(slowId));
            log.WriteLine($"rank {victimRank} killed and resumed vs uninterrupted 2-node run: max |dw| = {dk:E2}");
            Assert.True(dk < 1e-6, $"rank {victimRank} killed and resumed vs uninterrupted: max |dw| {dk}");
        }
    }
}

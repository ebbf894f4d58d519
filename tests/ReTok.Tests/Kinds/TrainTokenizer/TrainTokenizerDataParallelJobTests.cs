using ReTok.Engine;
using ReTok.Models.IO;
using ReTok.Tests.Kinds.Support;
using ReTok.Tracking;
using TorchSharp;
using Xunit.Abstractions;

namespace ReTok.Tests.Kinds.TrainTokenizer;

/// <summary>
/// `train-tokenizer` with data_parallel through the real job (in-process worker on PostgreSQL): the tiny tokenizer of
/// tests/fixtures/tokenizer/tiny.yaml with GAN, nested dropout and the 32-dim semantic teacher on, global batch 2.
/// 2 CPU replicas x 1 image give the 1-replica run, and a checkpoint written by 2 replicas resumes (input `resume`) with 1.
/// The discriminator's BatchNorm normalises over each replica's rows, so the 1-replica reference runs
/// gradient_accumulation_steps 2 (BatchNorm over the same 1-row chunks); dropout is 0 and LPIPS is off, so nothing random
/// depends on the thread that draws it.
/// </summary>
// Runs alone (the non-parallel collection). Until the run-scoped thread count, the job called torch.set_num_threads(torch_threads) on
// whichever pool thread started it: with OpenMP that sets the calling thread's count and the default that fresh threads
// copy, so the 1-replica reference stepped on pool threads whose count earlier tests had fixed (2) while the replica
// threads took 1; in full-suite runs that moved grad_norm_g by 1.8e-5 and 3.4e-5 relative and a weight by 1.005e-5.
// Now each run computes on its own thread with torch_threads (TorchThreads.RunAsync) and the replica threads copy it
// (DataParallel.Run), so both runs reduce in the same order whatever ran before; each run leaves the process's count as
// it found it (asserted below).
[Collection("GlobalCpuGenerator")]
public sealed class TrainTokenizerDataParallelJobTests(TrainJobEnvironment env, ITestOutputHelper log) : IClassFixture<TrainJobEnvironment>
{
    // Measured (CPU, fp32, 2 cores, 2 and 3 steps at lr 2e-3): every logged loss term, grad norm and K, and every saved weight
    // equal bitwise, for 2 replicas and for 2-then-1: each replica runs the same kernels on the same 1-row chunks as the
    // accumulation, and the 2-term all-reduce sum / 2 equals the 2-chunk accumulation of loss/2 (as in
    // TokenizerDataParallelTests). With the run-scoped thread count (this branch, 2 cores): max rel diff 0 and max weight
    // diff 0 for both tests, the class alone and run together with TrainerTests, TokenizerDataParallelTests,
    // TrainGenerator.DataParallelJobTests, ValLossJobTests and TorchThreadsTests in one process. The tolerances leave room
    // for another BLAS' reduction order and stay far below one lr-sized step (2e-3), which a wrong slice, K draw,
    // broadcast or gradient average produces.
    const double LossRel = 1e-5;
    const double GradNormRel = 1e-5;
    const double WeightAbs = 1e-5;
    const int Steps = 2;

    static readonly string[] Compared = { "total_g", "total_d", "rec", "semantic", "grad_norm_g", "grad_norm_d", "k_mean" };

    string Spec(string extra, string queue = "gpu")
    {
        var model = File.ReadAllText(TrainTokenizerData.Fixture("tokenizer", "tiny.yaml"));
        model = model[model.IndexOf("model:", StringComparison.Ordinal)..model.IndexOf("trainer:", StringComparison.Ordinal)];
        var indented = string.Join("\n", model.TrimEnd().Split('\n').Select(l => "  " + l));
        return $$"""
            kind: train-tokenizer
            queue: {{queue}}
            {{extra}}
            params:
            {{indented}}
              trainer: {global_batch_size: 2, lr: 2e-3, distill_loss: true}
              loss: {params: {perceptual_weight: 0.0, disc_dim: 8} }
              retok: {semantic_weight: 0.5, teacher: {embed_dim: 32, depth: 1, num_heads: 2} }
              distill_weights: {{env.TeacherWeights}}
              data_path: {{TrainTokenizerData.Fixture("tokenizer", "images.npz")}}
              iterations: {{Steps}}
              ckpt_every: 2
              recon_every: 0
              recon_images: 1
              torch_threads: 1
              num_workers: 1
            """;
    }

    /// <summary>The intra-op count a thread starts with (libtorch's process-wide default).</summary>
    static int FreshThreadCount()
    {
        int n = 0;
        var t = new Thread(() => n = torch.get_num_threads());
        t.Start();
        t.Join();
        return n;
    }

    static string Params(string p) => string.Join("\n", p.Split('\n').Select(l => "  " + l));

    async Task<WorkerHost> StartWorkerAsync(string name, string queue = "gpu", int cpuWorkers = 1)
    {
        var e = env.Env(name);
        var w = new WorkerHost(new EngineOptions
        {
            Db = e["RETOK_DB"], Artifacts = e["RETOK_ARTIFACTS"], Scratch = e["RETOK_SCRATCH"],
            QueuePollInterval = TimeSpan.FromMilliseconds(150), InvisibilityTimeout = TimeSpan.FromSeconds(60),
            LeaseTtl = TimeSpan.FromSeconds(30), Heartbeat = TimeSpan.FromMilliseconds(300),
        }, new WorkerOptions { Queues = [queue], CpuWorkers = cpuWorkers, Name = name }, log: _ => { });
        await w.StartAsync();
        return w;
    }

    async Task<(Run Run, Dictionary<string, torch.Tensor> Weights, Dictionary<string, double[]> Metrics)> TrainAsync(string extra, string paramsExtra = "",
        string queue = "gpu")
    {
        var yaml = Spec(extra, queue) + (paramsExtra == "" ? "" : "\n" + Params(paramsExtra));
        int before = FreshThreadCount();
        var rid = (await env.Client.SubmitAsync(JobSpecs.Parse(yaml))).Runs[0].RunId;
        var x = await env.WaitTerminalAsync(rid, 120);
        Assert.True(x.Status == RunStatus.Succeeded, $"{x.Status}: {x.FailureReason}");
        // the ranks of a node group (none on other runs) finish just after rank 0 (the final barrier); their thread scopes too
        foreach (var rank in (await env.Tracker.Runs.GetNodeGroupAsync(rid)).Skip(1))
            Assert.Equal(RunStatus.Succeeded, (await env.WaitTerminalAsync(rank.RunId, 60)).Status);
        // torch_threads 1 is the run's (its log names the count it computed with) and not left behind in the process
        Assert.Equal(before, FreshThreadCount());
        var logs = await env.Tracker.GetLogsAsync(rid);
        Assert.Contains(logs, l => l.Message.Contains("on cpu (1 threads)"));
        var t0 = logs[0].Time;
        foreach (var l in logs) log.WriteLine($"run {rid} +{(l.Time - t0).TotalSeconds:F1} s: {l.Message}");
        var file = Path.Combine(env.Root, $"{rid}.safetensors");
        await env.Tracker.DownloadArtifactAsync((await env.Tracker.GetArtifactAsync(rid, "tokenizer.safetensors"))!, file);
        var metrics = new Dictionary<string, double[]>();
        foreach (var k in Compared) metrics[k] = (await env.Tracker.GetMetricsAsync(rid, k)).OrderBy(m => m.Step).Select(m => m.Value).ToArray();
        return (x, StateDictFile.Read(file), metrics);
    }

    void AssertClose(string what, Dictionary<string, double[]> m1, Dictionary<string, double[]> m2, int fromStep,
        Dictionary<string, torch.Tensor> w1, Dictionary<string, torch.Tensor> w2)
    {
        double maxRel = 0, maxAbs = 0;
        foreach (var k in Compared)
        {
            var (a, b) = (m1[k], m2[k]);
            Assert.Equal(Steps, a.Length);
            Assert.Equal(Steps - fromStep, b.Length);
            for (int i = 0; i < b.Length; i++)
            {
                double x = a[i + fromStep], y = b[i], rel = Math.Abs(x - y) / Math.Max(1e-12, Math.Abs(x));
                maxRel = Math.Max(maxRel, rel);
                Assert.True(rel <= (k.StartsWith("grad_norm", StringComparison.Ordinal) ? GradNormRel : LossRel), $"{what}: step {i + fromStep + 1} {k}: {x} vs {y} (rel {rel:E1})");
            }
        }
        Assert.Equal(w1.Keys.Order(), w2.Keys.Order());
        foreach (var (k, w) in w1)
        {
            // a rolling window of the last used code indices (the codebook_usage metric; no effect on training): each
            // replica records its own rows and the saved one is rank 0's, as DDP's broadcast_buffers makes it
            if (k == "quantize.codebook_used") continue;
            double d = (w.to(torch.ScalarType.Float64) - w2[k].to(torch.ScalarType.Float64)).abs().max().item<double>();
            maxAbs = Math.Max(maxAbs, d);
            Assert.True(d <= WeightAbs, $"{what}: {k}: max |diff| {d}");
        }
        log.WriteLine($"{what}: max loss/norm rel diff {maxRel:E2}, max weight abs diff {maxAbs:E2}");
    }

    // the 1-replica reference, run once for both tests (by the worker of whichever test comes first)
    static Task<(Run Run, Dictionary<string, torch.Tensor> Weights, Dictionary<string, double[]> Metrics)>? reference;
    static readonly SemaphoreSlim gate = new(1, 1);

    async Task<(Run Run, Dictionary<string, torch.Tensor> Weights, Dictionary<string, double[]> Metrics)> ReferenceAsync()
    {
        await gate.WaitAsync();
        try
        {
            reference ??= TrainAsync("", "gradient_accumulation_steps: 2");
        }
        finally { gate.Release(); }
        return await reference;
    }

    [Fact]
    public async Task TwoCpuReplicasMatchOne()
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        await using var worker = await StartWorkerAsync("dp-tok");
        var one = await ReferenceAsync();
        log.WriteLine($"1 replica: {sw.Elapsed.TotalSeconds:F1} s");
        var two = await TrainAsync("", "data_parallel: {replicas: 2, backend: cpu}");
        log.WriteLine($"2 replicas: {sw.Elapsed.TotalSeconds:F1} s");
        AssertClose("1 vs 2 replicas", one.Metrics, two.Metrics, 0, one.Weights, two.Weights);
    }

    [Fact]
    public async Task TwoNodesMatchOne()
    {
        // nodes: 2 over tcp: two rank runs on two `retok worker` processes, meeting through the rendezvous in PostgreSQL;
        // rank 1 slices, draws K and seeds augmentation by its global rank. Processes, not two engine workers of the test
        // process: two runs in one process share libtorch's global CPU generator, and their setup draws interleave.
        var procs = new[] { env.StartWorker("tok-node-1", "tok-nodes"), env.StartWorker("tok-node-2", "tok-nodes") };
        (Run Run, Dictionary<string, torch.Tensor> Weights, Dictionary<string, double[]> Metrics) one;
        await using (var w = await StartWorkerAsync("dp-tok")) one = await ReferenceAsync();
        await Task.WhenAll(procs.Select(p => p.WaitReadyAsync()));
        var two = await TrainAsync("nodes: 2", "data_parallel: {replicas: 1, backend: tcp, timeout_s: 60}", queue: "tok-nodes");
        var ranks = await env.Tracker.Runs.GetNodeGroupAsync(two.Run.Id);
        Assert.Equal([(0, RunStatus.Succeeded), (1, RunStatus.Succeeded)], ranks.Select(r => (r.Rank, r.Status)));
        Assert.Null(await env.Tracker.GetArtifactAsync(ranks[1].RunId, "tokenizer.safetensors"));   // rank 0 writes the outputs
        AssertClose("1 replica vs 2 nodes", one.Metrics, two.Metrics, 0, one.Weights, two.Weights);
    }

    [Fact]
    public async Task TwoRunsInOneWorkerProcessEachMatchTheSoloRun()
    {
        // two slots of one worker process: both setups seed and draw from libtorch's one default CPU generator, which
        // SeededRandom.DefaultGeneratorGate serialises; interleaved, their initial weights depended on thread timing
        (Run Run, Dictionary<string, torch.Tensor> Weights, Dictionary<string, double[]> Metrics) one;
        await using (var w = await StartWorkerAsync("dp-tok")) one = await ReferenceAsync();
        await using var pair = await StartWorkerAsync("tok-pair", queue: "tok-pair", cpuWorkers: 2);
        var both = await Task.WhenAll(TrainAsync("", "gradient_accumulation_steps: 2", queue: "tok-pair"), TrainAsync("", "gradient_accumulation_steps: 2", queue: "tok-pair"));
        var (a, b) = (both[0].Run, both[1].Run);
        Assert.True(a.StartedAt < b.FinishedAt && b.StartedAt < a.FinishedAt, "the two runs did not overlap: the test shows nothing");
        foreach (var r in both) AssertClose("solo vs two in one process", one.Metrics, r.Metrics, 0, one.Weights, r.Weights);
    }

    [Fact]
    public async Task CheckpointOfTwoReplicasResumesWithOne()
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        await using var worker = await StartWorkerAsync("dp-tok");
        var one = await ReferenceAsync();
        // step 1 with 2 replicas (early_stop_iter keeps the LR schedule of the 2-step run), then a fresh 1-replica run from its checkpoint
        var part = await TrainAsync("", "data_parallel: {replicas: 2, backend: cpu}\nearly_stop_iter: 1");
        Assert.Single(await env.Tracker.GetMetricsAsync(part.Run.Id, "total_g"));
        var resumed = await TrainAsync($"inputs: {{resume: run:{part.Run.Id}/{RunCheckpoints.Latest}}}", "gradient_accumulation_steps: 2");
        AssertClose("1 vs 2-then-1 replicas", one.Metrics, resumed.Metrics, 1, one.Weights, resumed.Weights);
        log.WriteLine($"2-then-1: {sw.Elapsed.TotalSeconds:F1} s");
    }
}

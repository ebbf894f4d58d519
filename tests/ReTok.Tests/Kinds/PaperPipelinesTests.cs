using System.Diagnostics;
using ReTok.Engine;
using ReTok.Jobs.Quickstart;
using ReTok.Tests.Kinds.Support;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using Xunit.Abstractions;

namespace ReTok.Tests.Kinds;

/// <summary>
/// jobs/paper-table1.yaml and jobs/eval-released.yaml run end to end on this machine (in-process worker on the gpu and
/// cpu queues, PostgreSQL) with the tiny overrides of <see cref="PaperSpecsTests"/>: a synthetic ImageNet-layout folder
/// stands for ImageNet train and val, the run: inputs are test-made files (a tiny tokenizer and GPT in place of the
/// released checkpoints, a stand-in for the ADM reference batch), and the metrics that need downloaded weights are off
/// (LPIPS, rFID) or skipped (gFID, empty weights folder). What is checked is the chain: every step succeeds on its
/// predecessors' outputs and leaves the artifacts and metrics the next one and the results table read.
/// </summary>
public sealed class PaperPipelinesTests(TestDatabase db, ITestOutputHelper log) : IClassFixture<TestDatabase>
{
    EngineOptions Options(string root) => new()
    {
        Db = db.ConnectionString, Artifacts = Path.Combine(root, "artifacts"), Scratch = Path.Combine(root, "scratch"),
        QueuePollInterval = TimeSpan.FromMilliseconds(150), InvisibilityTimeout = TimeSpan.FromSeconds(60),
        LeaseTtl = TimeSpan.FromSeconds(30), Heartbeat = TimeSpan.FromMilliseconds(300), RetryBaseDelay = TimeSpan.FromMilliseconds(300),
        SchedulePollInterval = TimeSpan.FromMilliseconds(250), ReconcileInterval = TimeSpan.FromSeconds(1), ReconcileQueuedAfter = TimeSpan.FromSeconds(15),
        DataRoots = new DataRoots([root], "test"),
    };

    static string Jobs(string name) => RepoPaths.File("jobs", name);

    /// <summary>The step's final run (its aggregator or last search round when it fanned out), which must have succeeded.</summary>
    static async Task<Run> FinalAsync(Tracker t, long id, int seconds = 600)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (DateTime.UtcNow < deadline)
        {
            var r = (await t.Runs.GetAsync(id))!;
            if (r.Status.IsTerminal())
            {
                var logs = string.Join("\n", (await t.GetLogsAsync(id, limit: 200)).Select(l => $"{l.Level}: {l.Message}"));
                Assert.True(r.Status == RunStatus.Succeeded, $"run {id} ({r.Kind}, step {r.PipelineStep}): {r.Status} {r.FailureReason}\n{logs}");
                return r.ContinuedByRunId is { } next ? await FinalAsync(t, next, seconds) : r;
            }
            await Task.Delay(250);
        }
        throw new TimeoutException($"run {id} not finished in {seconds} s");
    }

    async Task<Dictionary<string, Run>> RunPipelineAsync(JobClient client, string yaml, List<string> overrides, string root)
    {
        var sw = Stopwatch.StartNew();
        await using var worker = new WorkerHost(Options(root), new WorkerOptions { Queues = ["gpu", "cpu"], Name = "paper-e2e" }, log: _ => { });
        await worker.StartAsync();
        var submitted = await client.SubmitAsync(JobSpecs.Parse(yaml, overrides));
        var done = new Dictionary<string, Run>();
        foreach (var r in submitted.Runs)
        {
            done[r.Step] = await FinalAsync(client.Tracker, r.RunId);
            log.WriteLine($"{r.Step} ({r.Kind}): run {done[r.Step].Id} done after {sw.Elapsed.TotalSeconds:F0} s");
        }
        await worker.StopAsync();
        return done;
    }

    static string SyntheticImages(string root, string name, int seed)
    {
        var dir = Directory.CreateDirectory(Path.Combine(root, name)).FullName;
        SyntheticDataset.Generate(dir, classes: 2, perClass: 2, seed: seed);
        return dir;
    }

    [Fact]
    public async Task PaperTable1_RunsEndToEndWithTinyOverrides()
    {
        var root = Directory.CreateTempSubdirectory("retok-paper-e2e").FullName;
        await using var client = new JobClient(Options(root));
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        SyntheticImages(root, "val", 1);
        SyntheticImages(root, "train", 2);
        var weights = Directory.CreateDirectory(Path.Combine(root, "weights")).FullName;
        var import = await t.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        var reference = Path.Combine(root, "VIRTUAL_imagenet256_labeled.npz");
        await File.WriteAllTextAsync(reference, "stand-in: gFID is skipped without the Inception weights");
        await t.SaveArtifactFileAsync(import.Id, "VIRTUAL_imagenet256_labeled.npz", reference);
        var yaml = await File.ReadAllTextAsync(Jobs("paper-table1.yaml"));
        var overrides = PaperSpecsTests.PaperTiny(root);
        // one worker device: the GPT-XL step's 8 leased GPUs become 1 (its data_parallel override is 1 CPU replica)
        overrides.AddRange([$"gfid.weights_dir={weights}", $"eval_recon.weights_dir={weights}", "gpt.gpus=1",
            $"gfid.inputs.reference=run:{import.Id}/VIRTUAL_imagenet256_labeled.npz"]);

        var runs = await RunPipelineAsync(client, yaml, overrides, root);
        Assert.Equal(["codes", "eval_recon", "extract_val", "finetune", "gfid", "gpt", "train"], runs.Keys.Order(StringComparer.Ordinal));
        Assert.NotNull(await t.GetArtifactAsync(runs["extract_val"].Id, "dataset.npz"));
        foreach (var step in new[] { "train", "finetune" })
        {
            Assert.NotNull(await t.GetArtifactAsync(runs[step].Id, "tokenizer.safetensors"));
            Assert.Equal(2, (await t.GetMetricsAsync(runs[step].Id, "total_g")).Count);
        }
        Assert.Contains("init", (await t.Runs.GetAsync(runs["finetune"].Id))!.Inputs);
        foreach (var k in new[] { 8, 16 }) Assert.Single(await t.GetMetricsAsync(runs["eval_recon"].Id, $"psnr@k={k}"));
        // num_shards 8 over the 2 batches of 4 train images: 2 shards, and gpt trains on the aggregator's codes.npz
        Assert.Equal("extract-codes-aggregate", runs["codes"].Kind);
        Assert.Equal(2, (await t.Runs.GetShardsAsync(runs["codes"].Id)).Count);
        Assert.NotNull(await t.GetArtifactAsync(runs["codes"].Id, "codes.npz"));
        Assert.Equal(2, (await t.GetMetricsAsync(runs["gpt"].Id, "loss")).Count);
        Assert.Equal("sample-gfid-aggregate", runs["gfid"].Kind);
        Assert.NotNull(await t.GetArtifactAsync(runs["gfid"].Id, "samples.npz"));
    }

    [Fact]
    public async Task EvalReleased_RunsEndToEndWithTinyOverrides()
    {
        var root = Directory.CreateTempSubdirectory("retok-released-e2e").FullName;
        await using var client = new JobClient(Options(root));
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        SyntheticImages(root, "val", 3);
        var weights = Directory.CreateDirectory(Path.Combine(root, "weights")).FullName;
        // the released files' stand-ins: a tiny tokenizer and GPT (block 8) as artifacts of one run
        var inputs = await GenTestInputs.CreateAsync(t, Path.Combine(root, "released"), images: 2, inceptionWeights: false);
        var yaml = (await File.ReadAllTextAsync(Jobs("eval-released.yaml")))
            .Replace("run:1/VQ_SB256.pt", inputs.Ref("tokenizer.safetensors")).Replace("run:1/GPT_XL256_e300_VQ_SB.pt", inputs.Ref("generator.safetensors"))
            .Replace("run:1/VIRTUAL_imagenet256_labeled.npz", inputs.Ref("dataset.npz")).Replace("run:1/", $"run:{inputs.RunId}/");
        var overrides = PaperSpecsTests.ReleasedTiny(root);
        overrides.AddRange([
            $"eval_recon.checkpoint={root}/released/inputs/tokenizer.safetensors", "eval_recon.preset=~",
            $"eval_recon.config={root}/released/inputs/tokenizer.yaml", $"eval_recon.weights_dir={weights}", $"gfid.weights_dir={weights}",
        ]);

        var runs = await RunPipelineAsync(client, yaml, overrides, root);
        Assert.Equal(["eval_recon", "extract_val", "gfid", "val_codes", "val_loss"], runs.Keys.Order(StringComparer.Ordinal));
        Assert.Single(await t.GetMetricsAsync(runs["eval_recon"].Id, "psnr@k=8"));
        // num_shards 8 over the val images' batches: an aggregator, whose codes.npz val_loss reads
        Assert.Equal("extract-codes-aggregate", runs["val_codes"].Kind);
        Assert.NotNull(await t.GetArtifactAsync(runs["val_codes"].Id, "codes.npz"));
        var valLoss = Assert.Single(await t.GetMetricsAsync(runs["val_loss"].Id, "val_loss"));
        Assert.True(double.IsFinite(valLoss.Value) && valLoss.Value > 0, $"val_loss {valLoss.Value}");
        Assert.NotNull(await t.GetArtifactAsync(runs["gfid"].Id, "samples.npz"));
    }
}

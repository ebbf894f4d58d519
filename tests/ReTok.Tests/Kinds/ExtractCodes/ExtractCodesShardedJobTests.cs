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
/// extract-codes with num_shards &gt; 1 on one `retok worker` process serving 2 CPU slots: the parent fans out, the shards
/// encode their whole batches of the single run's grid (with their own checkpoints, chunk_images 1) and
/// extract-codes-aggregate writes a codes.npz byte-identical to the single run's. Center view from the input `data`
/// (7 images, batch 1: 2 shards = 3 + 4 images, 3 shards = 2 + 2 + 3) and ten-crop from params.source (5 of 8 source
/// images, batch 2: 3 shards = 2 + 2 + 1 images). A shard whose worker is SIGKILLed mid-run resumes alone, on the other
/// worker, from its own checkpoint.
/// </summary>
public sealed class ExtractCodesShardedJobTests(EngineEnvironment env, ITestOutputHelper log) : IClassFixture<EngineEnvironment>
{
    const int Images = 7;

    async Task<Run> FinalAsync(long run, int seconds = 600)
    {
        var r = await env.WaitTerminalAsync(run, seconds);
        return r.Status == RunStatus.Succeeded && r.ContinuedByRunId is { } next ? await FinalAsync(next, seconds) : await SucceededAsync(env, run, seconds);
    }

    [Fact]
    public async Task ShardedRunsWriteTheCodesOfTheSingleRun_CenterViewAndTenCrop()
    {
        var sw = Stopwatch.StartNew();
        const string queue = "codes-shard";
        var root = Directory.CreateDirectory(Path.Combine(env.Root, queue)).FullName;
        var inputs = await GenTestInputs.CreateAsync(env.Tracker, root, images: Images, inceptionWeights: false);
        var source = Directory.CreateDirectory(Path.Combine(root, "source")).FullName;
        Assert.Equal(8, SyntheticDataset.Generate(source, classes: 2, perClass: 4, seed: 5));
        var model = new Dictionary<string, string> { ["tokenizer"] = inputs.Ref("tokenizer.safetensors"), ["tokenizer_config"] = inputs.Ref("tokenizer.yaml") };
        var withData = new Dictionary<string, string>(model) { ["data"] = inputs.Ref("dataset.npz") };
        var w = env.StartWorker($"{queue}-w", queue, 2);
        await w.WaitReadyAsync();

        ExtractCodesParams Center(int shards) => new() { TenCrop = false, Tokens = 8, BatchSize = 1, ChunkImages = 1, NumShards = shards };
        ExtractCodesParams TenCrop(int shards) => new() { TenCrop = true, Tokens = 8, BatchSize = 2, ChunkImages = 1, MaxImages = 5, Source = source, NumShards = shards };
        var runs = new (string What, long Run)[]
        {
            ("center, 1 shard", await env.Client.SubmitAsync("extract-codes", Center(1), inputs: withData, queue: queue)),
            ("center, 2 shards", await env.Client.SubmitAsync("extract-codes", Center(2), inputs: withData, queue: queue)),
            ("center, 3 shards", await env.Client.SubmitAsync("extract-codes", Center(3), inputs: withData, queue: queue)),
            ("ten-crop, 1 shard", await env.Client.SubmitAsync("extract-codes", TenCrop(1), inputs: model, queue: queue)),
            ("ten-crop, 3 shards", await env.Client.SubmitAsync("extract-codes", TenCrop(3), inputs: model, queue: queue)),
        };
        var final = new Dictionary<string, Run>();
        foreach (var (what, run) in runs) final[what] = await FinalAsync(run);
        log.WriteLine($"all runs done after {sw.Elapsed.TotalSeconds:F1} s");

        // the single runs do not fan out; the sharded ones end in their aggregator, whose shards split the images as documented
        Assert.Equal("extract-codes", final["center, 1 shard"].Kind);
        Assert.Equal("extract-codes", final["ten-crop, 1 shard"].Kind);
        foreach (var (what, sizes) in new[] { ("center, 2 shards", new long[] { 3, 4 }), ("center, 3 shards", new long[] { 2, 2, 3 }), ("ten-crop, 3 shards", new long[] { 2, 2, 1 }) })
        {
            var agg = final[what];
            Assert.Equal("extract-codes-aggregate", agg.Kind);
            var shards = await env.Tracker.Runs.GetShardsAsync(agg.Id);
            Assert.Equal(sizes.Length, shards.Count);
            long at = 0;
            for (int k = 0; k < shards.Count; k++)
            {
                Assert.Equal(RunStatus.Succeeded, shards[k].Status);
                var parts = await File.ReadAllTextAsync(await DownloadAsync(env.Tracker, shards[k].Id, "parts.json", root));
                Assert.Contains($"\"start\":{at},\"end\":{at + sizes[k]}", parts);
                // chunk_images 1: a shard of several batches checkpointed in its own run before its last batch
                if (sizes[k] > 2) Assert.InRange(await CheckpointStepAsync(env.Tracker, shards[k].Id), at + 1, at + sizes[k] - 1);
                // release_parts (default): once codes.npz is registered the parts are emptied, so storage holds the codes once
                var part = await env.Tracker.GetArtifactAsync(shards[k].Id, $"checkpoints/parts/codes_{at:D10}.npz");
                Assert.True(part is { SizeBytes: 0 }, $"{what} shard {k}: part codes_{at}.npz {(part is null ? "missing" : $"still holds {part.SizeBytes} bytes")}");
                at += sizes[k];
            }
        }

        var center = Npz.Load(await DownloadAsync(env.Tracker, final["center, 1 shard"].Id, "codes.npz", root));
        var tenCrop = Npz.Load(await DownloadAsync(env.Tracker, final["ten-crop, 1 shard"].Id, "codes.npz", root));
        Assert.Equal(new long[] { Images, 8 }, center["codes"].Shape);
        Assert.Equal(new long[] { 5 * 10, 8 }, tenCrop["codes"].Shape);
        Assert.Equal(Enumerable.Range(0, 5).SelectMany(i => Enumerable.Repeat((long)i, 10)), tenCrop["image_index"].As<long>());
        foreach (var (what, want) in new[] { ("center, 2 shards", "center, 1 shard"), ("center, 3 shards", "center, 1 shard"), ("ten-crop, 3 shards", "ten-crop, 1 shard") })
        {
            AssertSameCodes(want == "center, 1 shard" ? center : tenCrop, Npz.Load(await DownloadAsync(env.Tracker, final[what].Id, "codes.npz", root)), what);
            Assert.Equal(await ShaAsync(env.Tracker, final[want].Id, "codes.npz"), await ShaAsync(env.Tracker, final[what].Id, "codes.npz"));
        }
        log.WriteLine($"sharded codes equal the single runs' after {sw.Elapsed.TotalSeconds:F1} s");
    }

    [Fact]
    public async Task KilledShardResumesFromItsOwnCheckpointAndTheAggregateEqualsTheSingleRun()
    {
        var sw = Stopwatch.StartNew();
        const string queue = "codes-shard-kill";
        var root = Directory.CreateDirectory(Path.Combine(env.Root, queue)).FullName;
        var inputs = await GenTestInputs.CreateAsync(env.Tracker, root, images: Images, inceptionWeights: false);
        var withData = new Dictionary<string, string>
        {
            ["tokenizer"] = inputs.Ref("tokenizer.safetensors"), ["tokenizer_config"] = inputs.Ref("tokenizer.yaml"), ["data"] = inputs.Ref("dataset.npz"),
        };
        var w = new[] { env.StartWorker($"{queue}-1", queue), env.StartWorker($"{queue}-2", queue) };
        await Task.WhenAll(w.Select(x => x.WaitReadyAsync()));
        ExtractCodesParams P(int shards, int delayMs) => new()
        {
            TenCrop = false, Tokens = 8, BatchSize = 1, ChunkImages = 1, NumShards = shards, DebugBatchDelayMs = delayMs,
        };

        // 2 shards: images 0..2 and 3..6; SIGKILL the worker of the second after its checkpoint at image 4 or later
        var parent = await SucceededAsync(env, await env.Client.SubmitAsync("extract-codes", P(2, 1500), inputs: withData, queue: queue));
        long agg = parent.ContinuedByRunId!.Value;
        var shard = (await env.Tracker.Runs.GetShardsAsync(agg))[1];
        var running = await env.WaitRunAsync(shard.Id, r => r.Status == RunStatus.Running && r.LeaseOwner is not null && r.Progress >= 0.5 - 1e-9, "image 5 of 3..6", 180);
        var ckAtKill = await CheckpointStepAsync(env.Tracker, shard.Id);
        w.Single(x => running.LeaseOwner!.StartsWith(x.Name + "/")).Kill();
        log.WriteLine($"killed the worker of shard run {shard.Id} at its checkpoint image {ckAtKill} after {sw.Elapsed.TotalSeconds:F1} s");
        Assert.InRange(ckAtKill, 4, Images - 1);

        var single = await env.Client.SubmitAsync("extract-codes", P(1, 0), inputs: withData, queue: queue);
        var a = await SucceededAsync(env, agg, 300);
        await SucceededAsync(env, single, 300);
        Assert.Equal("extract-codes-aggregate", a.Kind);
        var resumed = await env.Tracker.Runs.GetAsync(shard.Id);
        Assert.True(resumed!.Attempt >= 2, $"attempt {resumed.Attempt}");
        var logs = await LogsAsync(env.Tracker, shard.Id);
        int at = int.Parse(Regex.Match(logs, @"resuming at image (\d+)/7 of 3\.\.6").Groups[1].Value);
        Assert.True(at >= ckAtKill && at < Images, $"resumed at image {at}, checkpoint at kill {ckAtKill}\n{logs}");
        AssertSameCodes(Npz.Load(await DownloadAsync(env.Tracker, single, "codes.npz", root)), Npz.Load(await DownloadAsync(env.Tracker, agg, "codes.npz", root)), "killed shard");
        Assert.Equal(await ShaAsync(env.Tracker, single, "codes.npz"), await ShaAsync(env.Tracker, agg, "codes.npz"));
        log.WriteLine($"shard resumed at image {at}; aggregate equals the single run after {sw.Elapsed.TotalSeconds:F1} s");
    }
}

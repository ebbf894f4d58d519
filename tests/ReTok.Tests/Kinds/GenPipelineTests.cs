using ReTok.Engine;
using ReTok.Jobs.Kinds.ExtractCodes;
using ReTok.Jobs.Kinds.SampleGfid;
using ReTok.Jobs.Kinds.TrainGenerator;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using TorchSharp;
using Xunit.Abstractions;

namespace ReTok.Tests.Kinds;

/// <summary>
/// Tiny end-to-end on CPU with a real PostgreSQL and an in-process worker: random-init tiny tokenizer -> extract-codes
/// (center view) -> train-generator (4 steps, checkpointed) -> sample-gfid with 2 shards, twice with the same seed.
/// </summary>
public sealed class GenPipelineTests : IClassFixture<TestDatabase>
{
    readonly TestDatabase _db;
    readonly ITestOutputHelper _out;
    public GenPipelineTests(TestDatabase db, ITestOutputHelper o) { _db = db; _out = o; }

    EngineOptions Options(string root) => new()
    {
        Db = _db.ConnectionString, Artifacts = Path.Combine(root, "artifacts"), Scratch = Path.Combine(root, "scratch"),
        QueuePollInterval = TimeSpan.FromMilliseconds(150), InvisibilityTimeout = TimeSpan.FromSeconds(60),
        LeaseTtl = TimeSpan.FromSeconds(30), Heartbeat = TimeSpan.FromMilliseconds(300), RetryBaseDelay = TimeSpan.FromMilliseconds(300),
        SchedulePollInterval = TimeSpan.FromMilliseconds(250), ReconcileInterval = TimeSpan.FromSeconds(1), ReconcileQueuedAfter = TimeSpan.FromSeconds(15),
    };

    static async Task<Run> WaitAsync(Tracker t, long id, int seconds = 300)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (DateTime.UtcNow < deadline)
        {
            var r = await t.Runs.GetAsync(id);
            if (r!.Status.IsTerminal()) return r;
            await Task.Delay(200);
        }
        throw new TimeoutException($"run {id} not finished in {seconds} s");
    }

    /// <summary>Waits for a run; if it continued into an aggregator, for that one.</summary>
    static async Task<Run> WaitFinalAsync(Tracker t, long id)
    {
        var r = await WaitAsync(t, id);
        Assert.True(r.Status == RunStatus.Succeeded, $"run {id} ({r.Kind}): {r.Status} {r.FailureReason}");
        return r.ContinuedByRunId is { } next ? await WaitFinalAsync(t, next) : r;
    }

    static async Task<string> Download(Tracker t, long run, string name, string dir)
    {
        var a = await t.GetArtifactAsync(run, name) ?? throw new Xunit.Sdk.XunitException($"run {run} has no {name}");
        var path = Path.Combine(dir, $"{run}-{name.Replace('/', '_')}");
        await t.DownloadArtifactAsync(a, path);
        return path;
    }

    [Fact]
    public async Task TinyTokenizerToCodesToGptToShardedSamples_IsDeterministic()
    {
        var root = Directory.CreateTempSubdirectory("retok-jobsgen").FullName;
        var o = Options(root);
        await using var client = new JobClient(o);
        await client.EnsureSchemaAsync();
        var t = client.Tracker;

        // inputs made by the test: tiny tokenizer (random init), 2 images, an empty weights folder (metrics are skipped)
        var tokDir = Path.Combine(root, "in");
        Directory.CreateDirectory(tokDir);
        var yaml = Path.Combine(tokDir, "tokenizer.yaml");
        File.Copy(Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenizer", "tiny.yaml"), yaml);
        torch.manual_seed(7);
        using (var tok = new ReTokTokenizer(TokenizerConfig.Load(yaml)))
            StateDictFile.WriteSafetensors(Path.Combine(tokDir, "tokenizer.safetensors"), tok.state_dict());
        var images = torch.randint(0, 256, new long[] { 2, 256, 256, 3 }, torch.ScalarType.Byte, generator: new torch.Generator(3));
        Npz.Save(Path.Combine(tokDir, "dataset.npz"), new Dictionary<string, NpyArray>
        {
            ["arr_0"] = NpyArray.FromTensor(images), ["labels"] = NpyArray.FromTensor(torch.tensor(new long[] { 1, 3 })),
        });
        var src = await t.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        foreach (var f in new[] { "tokenizer.yaml", "tokenizer.safetensors", "dataset.npz" })
            await t.SaveArtifactFileAsync(src.Id, f, Path.Combine(tokDir, f));
        string Ref(string name) => $"run:{src.Id}/{name}";
        var weights = Directory.CreateDirectory(Path.Combine(root, "weights")).FullName;

        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = ["gpu"], Name = "jobsgen-test" }, log: s => { });
        await worker.StartAsync();
        var sw = System.Diagnostics.Stopwatch.StartNew();

        // extract-codes: 2 images, center view (ten-crop costs 10 encodes per image: too slow for the suite), first 8 codes
        var ex = await client.SubmitAsync("extract-codes", new ExtractCodesParams { TenCrop = false, Tokens = 8, BatchSize = 1, ChunkImages = 1 },
            inputs: new Dictionary<string, string> { ["tokenizer"] = Ref("tokenizer.safetensors"), ["tokenizer_config"] = Ref("tokenizer.yaml"), ["data"] = Ref("dataset.npz") });
        await WaitFinalAsync(t, ex);
        var codesNpz = Npz.Load(await Download(t, ex, "codes.npz", root));
        Assert.Equal(new long[] { 2, 8 }, codesNpz["codes"].Shape);
        Assert.Equal(new long[] { 1, 3 }, codesNpz["labels"].As<long>());
        Assert.Equal(new long[] { 0, 1 }, codesNpz["image_index"].As<long>());
        Assert.All(codesNpz["codes"].As<long>(), c => Assert.InRange(c, 0, 16383));
        _out.WriteLine($"extract-codes {sw.Elapsed.TotalSeconds:F1}s");

        // train-generator: tiny GPT, 4 steps, checkpoint at 2
        var tr = await client.SubmitAsync("train-generator", new TrainGeneratorParams
        {
            GptModel = null, Dim = 32, NLayer = 1, NHead = 2, NumClasses = 4, MaxSteps = 4, WarmupSteps = 2, GlobalBatchSize = 2,
            CheckpointEvery = 2, Lr = 1e-3,
        }, inputs: new Dictionary<string, string> { ["codes"] = $"run:{ex}/codes.npz" });
        await WaitFinalAsync(t, tr);
        await using (var db = t.CreateDb())
        {
            var keys = db.Metrics.Where(m => m.RunId == tr).Select(m => m.Key).Distinct().ToList();
            Assert.Contains("loss", keys); Assert.Contains("grad_norm", keys); Assert.Contains("tokens_per_s", keys); Assert.Contains("lr", keys);
        }
        var cfg = GeneratorYaml.Read(await Download(t, tr, "generator.yaml", root));
        Assert.Equal((32, 1, 8, 4), (cfg.Dim, cfg.NLayer, cfg.BlockSize, cfg.NumClasses));
        _out.WriteLine($"train-generator {sw.Elapsed.TotalSeconds:F1}s");

        // sample-gfid: 3 samples over 2 shards, twice with the same seed
        async Task<(Dictionary<string, NpyArray> Npz, long Agg)> Sample()
        {
            var id = await client.SubmitAsync("sample-gfid", new SampleGfidParams
            {
                NumSamples = 3, NumShards = 2, Tokens = 8, BatchSize = 2, CfgScale = 1.5, Seed = 11, WeightsDir = weights, CheckpointEvery = 1,
            }, inputs: new Dictionary<string, string>
            {
                ["generator"] = $"run:{tr}/generator.safetensors", ["generator_config"] = $"run:{tr}/generator.yaml",
                ["tokenizer"] = Ref("tokenizer.safetensors"), ["tokenizer_config"] = Ref("tokenizer.yaml"), ["reference"] = Ref("dataset.npz"),
            });
            var agg = await WaitFinalAsync(t, id);
            Assert.Equal("sample-gfid-aggregate", agg.Kind);
            return (Npz.Load(await Download(t, agg.Id, "samples.npz", root)), agg.Id);
        }
        var (a, aggA) = await Sample();
        Assert.Equal(new long[] { 3, 256, 256, 3 }, a["arr_0"].Shape);
        Assert.Equal("|u1", a["arr_0"].Dtype);
        Assert.Equal(new long[] { 3 }, a["labels"].Shape);
        Assert.All(a["labels"].As<long>(), l => Assert.InRange(l, 0, 3));
        Assert.Equal(new long[] { 3, 8 }, a["codes"].Shape);
        Assert.NotNull(await t.GetArtifactAsync(aggA, "grid.png"));
        // one tile per class of the grid for /compare/images
        foreach (var l in a["labels"].As<long>().Distinct()) Assert.NotNull(await t.GetArtifactAsync(aggA, $"samples/class{l}.png"));
        var metrics = await File.ReadAllTextAsync(await Download(t, aggA, "metrics.json", root));
        Assert.Contains("pt_inception-2015-12-05-6726825d.pth", metrics); // skipped, naming the missing file
        _out.WriteLine($"sample-gfid {sw.Elapsed.TotalSeconds:F1}s");

        var (b, _) = await Sample();
        Assert.Equal(a["labels"].As<long>(), b["labels"].As<long>());
        Assert.Equal(a["codes"].As<long>(), b["codes"].As<long>());
        Assert.True(a["arr_0"].Data.AsSpan().SequenceEqual(b["arr_0"].Data), "same seed must give byte-identical samples");
        _out.WriteLine($"total {sw.Elapsed.TotalSeconds:F1}s");
        await worker.StopAsync();
    }

    [Fact]
    public async Task TenCropExtraction_GivesTenRowsPerImageInTorchvisionOrder()
    {
        var root = Directory.CreateTempSubdirectory("retok-jobsgen-tencrop").FullName;
        var o = Options(root);
        await using var client = new JobClient(o);
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        // the tokenizer fixture (reference init from a fixed seed: its codes depend on the image, unlike a fresh random
        // init whose first codes are the same for every crop) and the first fixture image with label 2
        var fx = Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenizer");
        // ten-crop reads an extraction at int(256 * 1.1) = 281 (extract-dataset image_size 281 of the source files)
        var image = Npz.LoadKey(Path.Combine(fx, "images.npz"), "arr_0").ToTensor().narrow(0, 0, 1).contiguous();
        var c = ReTok.Models.Images.AdmCrop.CenterCropArr(new ReTok.Models.Images.RgbImage(256, 256, image.data<byte>().ToArray()), 281);
        var labels = NpyArray.FromTensor(torch.tensor(new long[] { 2 }));
        Npz.Save(Path.Combine(root, "dataset.npz"), new Dictionary<string, NpyArray>
        {
            ["arr_0"] = NpyArray.FromTensor(torch.tensor(c.Pixels, new long[] { 1, 281, 281, 3 }, torch.ScalarType.Byte)), ["labels"] = labels,
        });
        Npz.Save(Path.Combine(root, "dataset256.npz"), new Dictionary<string, NpyArray> { ["arr_0"] = NpyArray.FromTensor(image), ["labels"] = labels });
        var src = await t.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        await t.SaveArtifactFileAsync(src.Id, "tokenizer.yaml", Path.Combine(fx, "tiny.yaml"));
        await t.SaveArtifactFileAsync(src.Id, "tokenizer.safetensors", Path.Combine(fx, "tiny.safetensors"));
        await t.SaveArtifactFileAsync(src.Id, "dataset.npz", Path.Combine(root, "dataset.npz"));
        await t.SaveArtifactFileAsync(src.Id, "dataset256.npz", Path.Combine(root, "dataset256.npz"));
        string Ref(string name) => $"run:{src.Id}/{name}";
        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = ["gpu"], Name = "jobsgen-tencrop" }, log: s => { });
        await worker.StartAsync();
        var ex = await client.SubmitAsync("extract-codes", new ExtractCodesParams { TenCrop = true, Tokens = 16, BatchSize = 1 },
            inputs: new Dictionary<string, string> { ["tokenizer"] = Ref("tokenizer.safetensors"), ["tokenizer_config"] = Ref("tokenizer.yaml"), ["data"] = Ref("dataset.npz") });
        // a 256 px extraction is refused (cropping 281 from it would upscale), naming the size to extract at
        var bad = await client.SubmitAsync("extract-codes", new ExtractCodesParams { TenCrop = true, Tokens = 16, BatchSize = 1 },
            inputs: new Dictionary<string, string> { ["tokenizer"] = Ref("tokenizer.safetensors"), ["tokenizer_config"] = Ref("tokenizer.yaml"), ["data"] = Ref("dataset256.npz") });
        await WaitFinalAsync(t, ex);
        var refused = await WaitAsync(t, bad);
        Assert.Equal(RunStatus.Failed, refused.Status);
        Assert.Contains("256x256", refused.FailureReason);
        Assert.Contains("image_size: 281", refused.FailureReason);
        var codes = Npz.Load(await Download(t, ex, "codes.npz", root));
        Assert.Equal(new long[] { 10, 16 }, codes["codes"].Shape);
        Assert.Equal(Enumerable.Repeat(2L, 10), codes["labels"].As<long>());   // the image's label on each of its 10 rows
        var rows = codes["codes"].As<long>().Chunk(16).ToArray();
        Assert.True(rows.Distinct(new RowComparer()).Count() >= 2, $"ten crops gave only {rows.Distinct(new RowComparer()).Count()} distinct code rows");

        // rows 1 (top-right crop) and 7 (bottom-left of the flipped image) against the crops encoded here: the job's rows
        // follow torchvision TenCrop order of ADM center_crop_arr(img, 281)
        using var tok = ReTokTokenizer.FromCheckpoint(TokenizerConfig.Load(Path.Combine(fx, "tiny.yaml")), Path.Combine(fx, "tiny.safetensors"));
        tok.eval();
        using var views = CodeExtraction.TenCrop(torch.tensor(c.Pixels, new long[] { 1, 281, 281, 3 }, torch.ScalarType.Byte));
        var wants = new List<long[]>();
        using (torch.no_grad())
            foreach (var j in new[] { 1, 7 })
            {
                var want = tok.Encode(views[0, j].unsqueeze(0)).narrow(1, 0, 16).to(torch.ScalarType.Int64).data<long>().ToArray();
                Assert.Equal(want, rows[j]);
                wants.Add(want);
            }
        Assert.NotEqual(wants[0], wants[1]); // the two checked crops are told apart, so the row order is really checked

        // params.source reads the files themselves (no stored extraction): the same image as a PNG in a class folder gives
        // the same ten rows, labelled by its sorted class folder (ImageFolder order); a corrupt file fails naming it
        var srcDir = Path.Combine(root, "source");
        Directory.CreateDirectory(Path.Combine(srcDir, "n0_a"));
        Directory.CreateDirectory(Path.Combine(srcDir, "n1_b"));
        ReTok.Evaluation.Images.ImageIO.SavePng(Path.Combine(srcDir, "n1_b", "x.png"), new ReTok.Models.Images.RgbImage(256, 256, image.data<byte>().ToArray()));
        File.WriteAllBytes(Path.Combine(srcDir, "n0_a", "z.png"), File.ReadAllBytes(Path.Combine(srcDir, "n1_b", "x.png")));
        var fromSrc = await client.SubmitAsync("extract-codes", new ExtractCodesParams { TenCrop = true, Tokens = 16, BatchSize = 2, Source = srcDir },
            inputs: new Dictionary<string, string> { ["tokenizer"] = Ref("tokenizer.safetensors"), ["tokenizer_config"] = Ref("tokenizer.yaml") });
        await WaitFinalAsync(t, fromSrc);
        var srcCodes = Npz.Load(await Download(t, fromSrc, "codes.npz", root));
        Assert.Equal(new long[] { 20, 16 }, srcCodes["codes"].Shape);
        Assert.Equal(Enumerable.Repeat(0L, 10).Concat(Enumerable.Repeat(1L, 10)), srcCodes["labels"].As<long>());
        var srcRows = srcCodes["codes"].As<long>().Chunk(16).ToArray();
        for (int j = 0; j < 10; j++) { Assert.Equal(rows[j], srcRows[j]); Assert.Equal(rows[j], srcRows[10 + j]); }
        File.WriteAllBytes(Path.Combine(srcDir, "n1_b", "y_corrupt.png"), new byte[] { 0x89, 0x50, 0x4e, 0x47, 1, 2, 3 });
        var corrupt = await client.SubmitAsync("extract-codes", new ExtractCodesParams { TenCrop = true, Tokens = 16, BatchSize = 2, Source = srcDir },
            inputs: new Dictionary<string, string> { ["tokenizer"] = Ref("tokenizer.safetensors"), ["tokenizer_config"] = Ref("tokenizer.yaml") });
        var failed = await WaitAsync(t, corrupt);
        Assert.Equal(RunStatus.Failed, failed.Status);
        Assert.Contains("y_corrupt.png", failed.FailureReason);
        await worker.StopAsync();
    }

    sealed class RowComparer : IEqualityComparer<long[]>
    {
        public bool Equals(long[]? a, long[]? b) => a!.SequenceEqual(b!);
        public int GetHashCode(long[] a) => a.Aggregate(17, (h, v) => h * 31 + v.GetHashCode());
    }
}

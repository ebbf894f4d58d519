using System.Diagnostics;
using System.Text.Json;
using ReTok.Evaluation.Features;
using ReTok.Evaluation.Weights;
using ReTok.Jobs.Kinds.EvalReconstruction;
using ReTok.Jobs.Kinds.Shared;
using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using ReTok.Tests.Engine;
using ReTok.Tracking;
using TorchSharp;
using Xunit.Abstractions;
using static ReTok.Tests.Kinds.Support.EvalJobSupport;

namespace ReTok.Tests.Kinds.Shared;

/// <summary>
/// Reference Inception features shared as artifacts (Kinds/Shared/FeatureArtifacts): two eval-reconstruction runs on
/// the same 3-image data with test-made (formula) Inception weights. Run 1 computes the rFID reference features and
/// registers them as features/&lt;sha256(data)&gt;-&lt;weights sha&gt;.npz. With the machine-local cache folder deleted
/// (as on another machine), run 2, given the same file as its `reference` input, downloads that artifact instead of
/// recomputing (lineage row, log line, no artifact of its own) and gets run 1's metrics. Another weights file gives another key (checked on the key; a third run costs
/// ~30 s under load and would only show that a different name is not found).
/// </summary>
public sealed class FeatureArtifactJobTests : IClassFixture<EngineEnvironment>
{
    readonly EngineEnvironment _env;
    readonly ITestOutputHelper _log;
    public FeatureArtifactJobTests(EngineEnvironment env, ITestOutputHelper log) => (_env, _log) = (env, log);

    static string SaveWeights(string dir)
    {
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "pt_inception-2015-12-05-6726825d.safetensors");
        using var inc = ReTok.Tests.Evaluation.InceptionTests.FormulaInception();
        StateDictFile.WriteSafetensors(path, inc.state_dict());
        return path;
    }

    [Fact]
    public async Task SecondRunReusesTheReferenceFeatureArtifactAndOtherWeightsGiveAnotherKey()
    {
        var sw = Stopwatch.StartNew();
        var worker = _env.StartWorker("feat-w", "gpu,cpu");
        var root = Directory.CreateTempSubdirectory("jobs-eval-feat").FullName;

        // 3 deterministic noise-and-gradient images, a tiny random-init tokenizer, two Inception weights files.
        var data = Path.Combine(root, "dataset.npz");
        var px = new byte[3 * 256 * 256 * 3];
        var rng = new Random(5);
        for (int i = 0; i < px.Length; i++) px[i] = (byte)((i / 768 % 256 + rng.Next(64)) % 256);
        Npz.Save(data, new Dictionary<string, NpyArray> { ["arr_0"] = new("|u1", [3, 256, 256, 3], px), ["labels"] = NpyArray.Of(new long[] { 0, 1, 2 }, 3) });
        var yaml = Path.Combine(root, "tokenizer.yaml");
        File.WriteAllText(yaml, TinyYaml);
        var tok = Path.Combine(root, "tokenizer.safetensors");
        torch.manual_seed(0);
        using (var m = new ReTokTokenizer(TokenizerConfig.Load(yaml))) StateDictFile.WriteSafetensors(tok, m.state_dict());
        var wa = SaveWeights(Path.Combine(root, "weights-a"));
        // another weights file: a copy of A with the last byte of the last tensor changed
        var wb = Path.Combine(Directory.CreateDirectory(Path.Combine(root, "weights-b")).FullName, Path.GetFileName(wa));
        var bytes = File.ReadAllBytes(wa);
        bytes[^1] ^= 1;
        File.WriteAllBytes(wb, bytes);
        _log.WriteLine($"inputs made at {sw.Elapsed.TotalSeconds:F1} s");
        await worker.WaitReadyAsync();
        _log.WriteLine($"worker ready at {sw.Elapsed.TotalSeconds:F1} s");

        var producer = await _env.Tracker.Runs.InsertAsync(new Run { Kind = "test-producer", Status = RunStatus.Succeeded });
        foreach (var (name, path) in new[] { ("dataset.npz", data), ("tokenizer.safetensors", tok), ("tokenizer.yaml", yaml) })
            await _env.Tracker.SaveArtifactFileAsync(producer.Id, name, path);
        var inputs = new Dictionary<string, string>
        {
            ["data"] = $"run:{producer.Id}/dataset.npz", ["tokenizer"] = $"run:{producer.Id}/tokenizer.safetensors", ["tokenizer_config"] = $"run:{producer.Id}/tokenizer.yaml",
        };
        var p = new EvalReconstructionParams { TokenCounts = [8], BatchSize = 3, ChunkBatches = 1, GridImages = 3, Lpips = false, WeightsDir = Path.GetDirectoryName(wa) };
        async Task<long> Run(EvalReconstructionParams q, Dictionary<string, string>? extra = null)
        {
            var id = await _env.Client.SubmitAsync("eval-reconstruction", q, inputs: extra is null ? inputs : inputs.Concat(extra).ToDictionary());
            await SucceededAsync(_env, id, 600);
            var rr = (await _env.Tracker.Runs.GetAsync(id))!;
            _log.WriteLine($"run {id} done at {sw.Elapsed.TotalSeconds:F1} s (queued {(rr.StartedAt - rr.CreatedAt)?.TotalSeconds:F1} s, ran {(rr.FinishedAt - rr.StartedAt)?.TotalSeconds:F1} s)");
            return id;
        }
        async Task<JsonElement> Metrics(long run) =>
            JsonDocument.Parse(File.ReadAllText(await DownloadAsync(_env.Tracker, run, "metrics.json", root))).RootElement.GetProperty("metrics").GetProperty("8");
        async Task<List<Artifact>> FeatureArtifactsOf(long run) =>
            (await _env.Tracker.ListArtifactsAsync(run)).Where(a => a.Name.StartsWith(FeatureArtifacts.Prefix)).ToList();

        // The key: the data's content hash and the weights file's hash; another weights file gives another key.
        var dataSha = await ShaAsync(_env.Tracker, producer.Id, "dataset.npz");
        var nameA = FeatureArtifacts.NameFor(dataSha, WeightsRegistry.Sha256(wa));
        Assert.NotEqual(nameA, FeatureArtifacts.NameFor(dataSha, WeightsRegistry.Sha256(wb)));

        // Run 1 computes and registers the reference features.
        var r1 = await Run(p);
        var fa = Assert.Single(await FeatureArtifactsOf(r1));
        Assert.Equal(nameA, fa.Name);
        Assert.Contains($"features computed (3 images of dataset.npz); registered as artifact {nameA}", await LogsAsync(_env.Tracker, r1));
        var f1 = await DownloadAsync(_env.Tracker, r1, nameA, root);
        Assert.Equal(new long[] { 3, 2048 }, Npz.LoadKey(f1, "pool").Shape);
        var meta = JsonDocument.Parse(fa.Metadata).RootElement;
        Assert.Equal(dataSha, meta.GetProperty("source_sha256").GetString());
        Assert.Equal(WeightsRegistry.Sha256(wa), meta.GetProperty("inception_weights_sha256").GetString());

        // Run 2, local cache folder gone: the artifact is downloaded, recorded as an input, not recomputed. The same file
        // given as the `reference` input (a reference batch without mu/sigma) has the same content key.
        Directory.Delete(Path.Combine(_env.Root, "cache", "features"), true);
        var r2 = await Run(p, new() { ["reference"] = $"run:{producer.Id}/dataset.npz" });
        Assert.Empty(await FeatureArtifactsOf(r2));
        var use = Assert.Single((await _env.Tracker.GetInputsAsync(r2)).Where(e => e.Use.Role == "reference_features"));
        Assert.Equal(fa.Id, use.Artifact.Id);
        var logs2 = await LogsAsync(_env.Tracker, r2);
        Assert.Contains($"features from artifact {nameA} of run {r1} (of dataset.npz; not recomputed)", logs2);
        Assert.DoesNotContain("features computed", logs2);
        var localCopy = new FeatureCache(Path.Combine(_env.Root, "cache", "features")).PathForHash(dataSha, WeightsRegistry.Sha256(wa));
        Assert.Equal(File.ReadAllBytes(f1), File.ReadAllBytes(localCopy)); // the machine's fast path is filled again
        // Same features, same reconstructions: the same metrics. PSNR/SSIM/usage are managed code (equal bits); rFID/sFID/IS
        // go through float64 eigh/matmul in multithreaded BLAS, whose reduction order may differ between calls (1e-9, as
        // EvalReconstructionJobTests).
        var (m1, m2) = (await Metrics(r1), await Metrics(r2));
        Assert.True(double.IsFinite(m1.GetProperty("rfid").GetDouble()));
        foreach (var x in m1.EnumerateObject())
        {
            double v1 = x.Value.GetDouble(), v2 = m2.GetProperty(x.Name).GetDouble();
            if (x.Name is "rfid" or "sfid" or "is") Assert.True(Math.Abs(v1 - v2) <= 1e-9 * Math.Abs(v1) + 1e-13, $"{x.Name}: {v1:R} vs {v2:R}");
            else Assert.True(v1 == v2, $"{x.Name}: {v1:R} vs {v2:R}");
        }

        _log.WriteLine($"total {sw.Elapsed.TotalSeconds:F1} s");
    }
}

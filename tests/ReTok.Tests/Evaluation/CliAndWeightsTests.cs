using System.CommandLine;
using System.Text.Json;
using ReTok.Evaluation.Features;
using ReTok.Evaluation.Metrics;
using ReTok.Evaluation.Weights;
using ReTok.Models.IO;
using TorchSharp;
using TorchSharp.PyBridge;

namespace ReTok.Tests.Evaluation;

public class CliAndWeightsTests
{
    static async Task<int> Retok(params string[] args)
    {
        var root = new RootCommand();
        foreach (var c in ReTok.Cli.Commands.All()) root.Subcommands.Add(c);
        var cfg = new InvocationConfiguration { EnableDefaultExceptionHandler = false };
        return await root.Parse(args).InvokeAsync(cfg);
    }

    [Fact]
    public void MissingWeightsErrorNamesFileAndSource()
    {
        var dir = Directory.CreateTempSubdirectory("w").FullName;
        var ex = Assert.Throws<MissingWeightsException>(() => WeightsRegistry.Resolve("inception", dir));
        Assert.Contains("pt_inception-2015-12-05-6726825d.pth", ex.Message);
        Assert.Contains("github.com/mseitzer/pytorch-fid/releases", ex.Message);
        Assert.Contains("retok weights import", ex.Message);
        Assert.Contains("vgg.pth", Assert.Throws<MissingWeightsException>(() => WeightsRegistry.Resolve("lpips-vgg", dir)).Message);
    }

    [Fact]
    public async Task WeightsImportVerifiesKnownHashesAndRecordsSha256()
    {
        var dir = Directory.CreateTempSubdirectory("w").FullName;
        var src = Directory.CreateTempSubdirectory("src").FullName;
        // The LPIPS heads are identified by MD5: a wrong file is refused, --force imports it unverified.
        var fake = Path.Combine(src, "vgg.pth");
        File.Copy(Fixture.PathOf("lpips_lin_legacy.pth"), fake);
        var refused = await Assert.ThrowsAsync<InvalidDataException>(() => Retok("weights", "import", fake, "--weights-dir", dir));
        Assert.Contains("md5", refused.Message);
        Assert.False(File.Exists(Path.Combine(dir, "vgg.pth")));
        Assert.Equal(0, await Retok("weights", "import", fake, "--weights-dir", dir, "--force"));
        var m = Assert.Single(WeightsRegistry.ReadManifest(dir));
        Assert.Equal(("lpips-vgg", "vgg.pth", false), (m.Name, m.File, m.Verified));
        Assert.Equal(WeightsRegistry.Sha256(fake), m.Sha256);
        Assert.Equal(Path.Combine(dir, "vgg.pth"), WeightsRegistry.Resolve("lpips-vgg", dir));
        // An entry without a published hash (the ADM reference batch) imports verified under its registry name.
        var npz = Path.Combine(src, "my_ref.npz");
        File.Copy(Fixture.PathOf("tf1_resize.npz"), npz);
        Assert.Equal(0, await Retok("weights", "import", npz, "--as", "adm-ref-imagenet256", "--weights-dir", dir));
        Assert.Equal(2, WeightsRegistry.ReadManifest(dir).Count);
        Assert.True(File.Exists(Path.Combine(dir, "VIRTUAL_imagenet256_labeled.npz")));
        Assert.Equal(0, await Retok("weights", "list", "--weights-dir", dir));
    }

    [Fact]
    public void StateDictFileReadsSafetensorsWrittenByPyBridge()
    {
        var lin = torch.nn.Linear(5, 3);
        var p = Path.Combine(Directory.CreateTempSubdirectory("st").FullName, "lin.safetensors");
        lin.save_safetensors(p);
        var sd = StateDictFile.Read(p);
        Assert.True(sd["weight"].eq(lin.weight!).all().item<bool>());
        Assert.True(sd["bias"].eq(lin.bias!).all().item<bool>());
    }

    [Fact]
    public void FeatureCacheComputesOnceAndKeysOnContentAndWeights()
    {
        var dir = Directory.CreateTempSubdirectory("cache").FullName;
        var cache = new FeatureCache(Path.Combine(dir, "c"));
        var input = Path.Combine(dir, "in.npz");
        File.Copy(Fixture.PathOf("tf1_resize.npz"), input);
        int calls = 0;
        FeatureSet Make() { calls++; return new FeatureSet(torch.rand(4, 2048), torch.rand(4, 2023), torch.rand(4, 1008)); }
        using var a = cache.GetOrCompute(input, "w1", Make);
        using var b = cache.GetOrCompute(input, "w1", Make);
        Assert.Equal(1, calls);
        Assert.True(a.Pool.eq(b.Pool).all().item<bool>());
        using var c = cache.GetOrCompute(input, "w2", Make);       // other weights -> recompute
        Assert.Equal(2, calls);
        var copy = Path.Combine(dir, "copy.npz");                   // same content elsewhere -> same key
        File.Copy(input, copy);
        Assert.Equal(cache.KeyFor(input, "w1"), cache.KeyFor(copy, "w1"));
    }

    [Fact]
    public async Task EvalFeaturesCompareAndReconEndToEnd()
    {
        var dir = Directory.CreateTempSubdirectory("evalcli").FullName;
        // formula Inception saved as a torch zip .pth, loaded back through the CLI
        var weights = Path.Combine(dir, "inception_formula.pth");
        using (var m = InceptionTests.FormulaInception()) m.save_py(weights);
        var fx = Fixture.Npz("inception.npz");
        var imgs = fx["images"].ToTensor();
        var six = torch.cat(new[] { imgs, imgs.flip(2) }, 0); // 6 images: precision/recall need more than k=3
        var images = Path.Combine(dir, "images.npz");
        Npz.Save(images, new Dictionary<string, NpyArray> { ["arr_0"] = NpyArray.FromTensor(six) });
        var feats = Path.Combine(dir, "feats.npz");
        Assert.Equal(0, await Retok("eval", "features", "--images", images, "--inception", weights, "--out", feats, "--batch-size", "4"));
        using (var f = FeatureSet.Load(feats))
        {
            Assert.Equal(new long[] { 6, 2048 }, f.Pool.shape);
            var want = fx["pool"].As<float>();
            var got = f.Pool.narrow(0, 0, 3).contiguous().data<float>().ToArray();
            Assert.True(Fixture.MaxAbs(got, want) <= 1e-4 * Fixture.MaxAbs(want)); // same tolerance as the parity test
        }
        // reference given as stored statistics (mu/sigma/mu_s/sigma_s, used as given), sample = features file:
        // FID/sFID of the batch against its own statistics ~ 0, IS from the sample, no P/R (no reference images)
        var refNpz = Path.Combine(dir, "ref.npz");
        using (var f = FeatureSet.Load(feats))
        using (var sp = FidStatistics.FromActivations(f.Pool))
        using (var ss = FidStatistics.FromActivations(f.Spatial))
            Npz.Save(refNpz, new Dictionary<string, NpyArray>
            {
                ["mu"] = NpyArray.FromTensor(sp.Mu), ["sigma"] = NpyArray.FromTensor(sp.Sigma),
                ["mu_s"] = NpyArray.FromTensor(ss.Mu.to(torch.float32)), ["sigma_s"] = NpyArray.FromTensor(ss.Sigma),
            });
        var json = Path.Combine(dir, "res.json");
        var txt = Path.Combine(dir, "res.txt");
        Assert.Equal(0, await Retok("eval", "compare", "--ref", refNpz, "--samples", feats, "--json", json, "--txt", txt));
        var res = JsonDocument.Parse(File.ReadAllText(json)).RootElement;
        Assert.True(Math.Abs(res.GetProperty("fid").GetDouble()) < 1e-3, $"FID {res.GetProperty("fid")}");
        Assert.True(Math.Abs(res.GetProperty("sfid").GetDouble()) < 1e-3, $"sFID {res.GetProperty("sfid")}");
        Assert.Equal(JsonValueKind.Null, res.GetProperty("precision").ValueKind);
        Assert.True(res.GetProperty("inception_score").GetDouble() >= 1.0 - 1e-5); // exp(mutual information) >= 1
        Assert.Equal(new[] { "Inception Score", "FID", "sFID", "Precision", "Recall" }, File.ReadAllLines(txt).Select(l => l.Split(':')[0]).ToArray());

        // recon: PSNR/SSIM of the batch against a noisy copy, as ReconMetrics computes them per image
        var noisy = (six.to(torch.int32) + torch.randint(-3, 4, six.shape, dtype: torch.int32)).clamp(0, 255).to(torch.uint8);
        var recNpz = Path.Combine(dir, "rec.npz");
        Npz.Save(recNpz, new Dictionary<string, NpyArray> { ["arr_0"] = NpyArray.FromTensor(noisy) });
        var rjson = Path.Combine(dir, "recon.json");
        Assert.Equal(0, await Retok("eval", "recon", "--ref", images, "--recon", recNpz, "--json", rjson, "--batch-size", "4"));
        var r = JsonDocument.Parse(File.ReadAllText(rjson)).RootElement;
        var a = six.bytes.ToArray(); var b = noisy.bytes.ToArray();
        int per = 64 * 64 * 3;
        double psnr = Enumerable.Range(0, 6).Average(i => ReconMetrics.Psnr(a.AsSpan(i * per, per), b.AsSpan(i * per, per)));
        Assert.Equal(psnr, r.GetProperty("PSNR").GetDouble(), 9);
        Assert.Equal(6, r.GetProperty("count").GetInt32());
    }

    [Fact]
    public void ReconstructionEvaluatorConvertsDecoderOutputLikeReTok()
    {
        // clamp(127.5*x + 128, 0, 255).to(uint8) truncates: x = -1 -> 0 (0.5 truncated), x = 1 -> 255, x = 0 -> 128
        var x = torch.tensor(new float[] { -1.2f, -1f, 0f, 1f, 1.3f, -0.5f }).view(1, 1, 2, 3).expand(1, 3, 2, 3);
        var u = ReconstructionEvaluator.ToUint8(x);
        Assert.Equal(new long[] { 1, 2, 3, 3 }, u.shape);
        Assert.Equal(new byte[] { 0, 0, 128, 255, 255, 64 }, u.select(3, 0).flatten().data<byte>().ToArray());
        // and every uint8 value survives GT -> [-1,1] -> uint8 (val_ddp's lossless round trip)
        var all = torch.arange(256, dtype: torch.uint8).view(1, 16, 16, 1).expand(1, 16, 16, 3).contiguous();
        Assert.True(ReconstructionEvaluator.ToUint8(ReconstructionEvaluator.ToModelInput(all)).eq(all).all().item<bool>());
    }
}

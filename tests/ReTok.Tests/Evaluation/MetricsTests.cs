using ReTok.Evaluation.Features;
using ReTok.Evaluation.Metrics;
using ReTok.Evaluation.Weights;
using ReTok.Models.IO;
using TorchSharp;

namespace ReTok.Tests.Evaluation;

public class MetricsTests
{
    static double Scalar(NpyArray a) => a.As<double>()[0];

    [Theory]
    [InlineData("a")]
    [InlineData("b")]
    public void FrechetDistanceMatchesEvaluatorWithScipySqrtm(string tag)
    {
        // evaluator.py compute_statistics + frechet_distance (scipy.linalg.sqrtm) on 32-/64-d features: 1e-6 relative.
        var fx = Fixture.Npz("metrics.npz");
        using var r = FidStatistics.FromActivations(fx[$"fid_{tag}_ref"].ToTensor());
        using var s = FidStatistics.FromActivations(fx[$"fid_{tag}_sample"].ToTensor());
        double want = Scalar(fx[$"fid_{tag}"]);
        double got = s.FrechetDistance(r);
        Assert.True(Math.Abs(got - want) <= 1e-6 * Math.Abs(want), $"FID {got} vs {want}");
        // reference statistics used as given (read_statistics with 'mu'): mu float32, sigma float64
        using var given = new FidStatistics(fx[$"fid_{tag}_mu_ref"].ToTensor(), fx[$"fid_{tag}_sigma_ref"].ToTensor());
        Assert.True(Math.Abs(s.FrechetDistance(given) - want) <= 1e-6 * Math.Abs(want));
        Assert.True(Math.Abs(r.FrechetDistance(r)) <= 1e-6, "FID of a set with itself must be ~0");
    }

    [Fact]
    public void InceptionScoreMatchesEvaluator()
    {
        // evaluator.py compute_inception_score on float32 softmax of 400x1008 logits; split 150 (3 splits, last partial) and
        // the default 5000 (one split). Tolerance 1e-5 relative: the evaluator sums in float32, we sum in float64.
        var fx = Fixture.Npz("metrics.npz");
        var logits = fx["is_logits"].ToTensor();
        double got150 = InceptionScore.Compute(logits, 150), want150 = Scalar(fx["is_split150"]);
        double got5000 = InceptionScore.Compute(logits), want5000 = Scalar(fx["is_split5000"]);
        Assert.True(Math.Abs(got150 - want150) <= 1e-5 * want150, $"{got150} vs {want150}");
        Assert.True(Math.Abs(got5000 - want5000) <= 1e-5 * want5000, $"{got5000} vs {want5000}");
        Assert.NotEqual(got150, got5000, 3);
    }

    [Fact]
    public void PrecisionRecallMatchEvaluatorWithFp16DistanceBlock()
    {
        // evaluator.py ManifoldEstimator/evaluate_pr with the fp16 DistanceBlock emulated; blocks of 100 rows/cols;
        // features are multiples of 1/4 so every distance is order-independent: tolerance 0.
        var fx = Fixture.Npz("metrics.npz");
        var me = new ManifoldEstimator { RowBatchSize = 100, ColBatchSize = 100 };
        var radii = me.ManifoldRadii(fx["pr_ref"].ToTensor());
        Assert.Equal(fx["pr_radii_ref"].As<float>(), radii.data<float>().ToArray());
        var (p, r) = me.Evaluate(fx["pr_ref"].ToTensor(), fx["pr_sample"].ToTensor());
        Assert.Equal(Scalar(fx["pr_precision"]), p);
        Assert.Equal(Scalar(fx["pr_recall"]), r);
        // one block (the evaluator's 10000) gives the same answer
        var (p1, r1) = new ManifoldEstimator().Evaluate(fx["pr_ref"].ToTensor(), fx["pr_sample"].ToTensor());
        Assert.Equal((p, r), (p1, r1));
    }

    [Fact]
    public void PrecisionRecallFallBackToFp32WhenFp16Overflows()
    {
        var fx = Fixture.Npz("metrics.npz");
        var me = new ManifoldEstimator { RowBatchSize = 100, ColBatchSize = 100 };
        var (p, r) = me.Evaluate(fx["pr32_ref"].ToTensor(), fx["pr32_sample"].ToTensor());
        Assert.Equal(Scalar(fx["pr32_precision"]), p);
        Assert.Equal(Scalar(fx["pr32_recall"]), r);
    }

    [Fact]
    public void PsnrAndSsimMatchScikitImageAsReTokCallsIt()
    {
        // skimage 0.19.3 peak_signal_noise_ratio / structural_similarity(data_range=2.0, channel_axis=-1) on reconstruction_ddp's
        // float32 inputs. Tolerance: PSNR 1e-9 relative, SSIM 1e-6 absolute (float32 map arithmetic).
        var fx = Fixture.Npz("recon.npz");
        var gt = fx["gt"].As<byte>(); var rec = fx["recon"].As<byte>();
        var psnr = fx["psnr"].As<double>(); var ssim = fx["ssim"].As<double>();
        int h = (int)fx["gt"].Shape[1], w = (int)fx["gt"].Shape[2], per = h * w * 3;
        for (int i = 0; i < psnr.Length; i++)
        {
            var g = gt.AsSpan(i * per, per); var r = rec.AsSpan(i * per, per);
            double p = ReconMetrics.Psnr(g, r), s = ReconMetrics.Ssim(g, r, h, w);
            Assert.True(Math.Abs(p - psnr[i]) <= 1e-9 * psnr[i], $"PSNR[{i}] {p} vs {psnr[i]}");
            Assert.True(Math.Abs(s - ssim[i]) <= 1e-6, $"SSIM[{i}] {s} vs {ssim[i]}");
        }
    }

    internal static (double, double) VggRule(string name, long[] shape)
    {
        if (name.EndsWith("weight") && shape.Length == 4 && shape[0] == 1) return (0.05, 0.05);
        if (name.EndsWith("weight")) return (1.5 / Math.Sqrt(shape.Skip(1).Aggregate(1L, (a, b) => a * b)), 0);
        if (name.EndsWith("bias")) return (0.05, 0);
        throw new KeyNotFoundException(name);
    }

    [Fact]
    public void LpipsVggMatchesReTokLpipsWithFormulaWeights()
    {
        // ReTok lpips.py LPIPS with formula VGG16 + heads; heads loaded from the legacy-format torch.save fixture.
        // Tolerance 1e-4 relative.
        var fx = Fixture.Npz("lpips.npz");
        using var m = new LpipsVgg();
        StateDict.ApplyFormula(m, VggRule, n => n.StartsWith("net.") ? n[4..] : n);
        m.LoadLinHeads(Fixture.PathOf("lpips_lin_legacy.pth"));
        m.eval();
        using var _ = torch.no_grad();
        var d = m.call(fx["a"].ToTensor(), fx["b"].ToTensor()).data<float>().ToArray();
        var want = fx["d"].As<float>();
        for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(d[i] - want[i]) <= 1e-4 * want[i], $"LPIPS[{i}] {d[i]} vs {want[i]}");
    }

    [Fact]
    public void StateDictFileReadsLegacyAndZipPickles()
    {
        var legacy = StateDictFile.Read(Fixture.PathOf("lpips_lin_legacy.pth"));
        var zip = StateDictFile.Read(Fixture.PathOf("lpips_lin_zip.pth"));
        var py2 = StateDictFile.Read(Fixture.PathOf("lpips_lin_py2style.pth")); // OrderedDict([[k, v], ...]) as in the released vgg.pth
        Assert.Equal(legacy.Keys.OrderBy(k => k), py2.Keys.OrderBy(k => k));
        Assert.Equal(5, legacy.Count);
        Assert.Equal(legacy.Keys.OrderBy(k => k), zip.Keys.OrderBy(k => k));
        Assert.Equal(new long[] { 1, 512, 1, 1 }, legacy["lin4.model.1.weight"].shape);
        foreach (var k in legacy.Keys)
        {
            Assert.True(legacy[k].eq(zip[k]).all().item<bool>(), k);
            Assert.True(legacy[k].eq(py2[k]).all().item<bool>(), k);
            var shape = legacy[k].shape;
            // the generator numbered VGG16's 26 features.* tensors first, then the heads (sorted key order)
            int idx = 26 + legacy.Keys.OrderBy(x => x, StringComparer.Ordinal).ToList().IndexOf(k);
            Assert.True(legacy[k].eq(StateDict.Formula(shape, idx, 0.05, 0.05)).all().item<bool>(), $"{k} is not the formula the generator saved");
        }
        var bad = Path.Combine(Directory.CreateTempSubdirectory("pth").FullName, "broken.pth");
        File.WriteAllBytes(bad, File.ReadAllBytes(Fixture.PathOf("lpips_lin_legacy.pth"))[..3000]);
        Assert.Contains("broken.pth", Assert.ThrowsAny<Exception>(() => StateDictFile.Read(bad)).Message);
    }

    [Fact]
    public void AdmEvaluatorComparesFeatureFilesInTheEvaluatorsOrder()
    {
        // Wiring of Open/Compare on features files (no Inception): sample vs reference, P/R from pool features.
        var dir = Directory.CreateTempSubdirectory("adm").FullName;
        torch.manual_seed(1);
        var a = new FeatureSet(torch.rand(40, 2048), torch.rand(40, 2023), torch.randn(40, 1008));
        var b = new FeatureSet(torch.rand(30, 2048) * 1.1f, torch.rand(30, 2023), torch.randn(30, 1008) * 2);
        a.Save(Path.Combine(dir, "a.npz")); b.Save(Path.Combine(dir, "b.npz"));
        using var ra = AdmEvaluator.Open(Path.Combine(dir, "a.npz"), null);
        using var rb = AdmEvaluator.Open(Path.Combine(dir, "b.npz"), null);
        var res = AdmEvaluator.Compare(ra, rb, manifold: new ManifoldEstimator { RowBatchSize = 16, ColBatchSize = 16 });
        Assert.Equal(InceptionScore.Compute(b.Logits), res.InceptionScore);
        // (the Frechet math itself is checked against scipy above; 2048-d eigh is too slow to repeat here)
        Assert.True(res.Fid > 1 && res.SFid > 0 && res.Fid != res.SFid);
        Assert.Equal(ra.Pool.Dim, 2048); Assert.Equal(rb.Spatial.Dim, 2023);
        var (p, r) = new ManifoldEstimator().Evaluate(a.Pool, b.Pool);
        Assert.Equal((p, r), (res.Precision, res.Recall));
        Npz.Save(Path.Combine(dir, "imgs.npz"), new Dictionary<string, NpyArray> { ["arr_0"] = NpyArray.FromTensor(torch.zeros(new long[] { 2, 8, 8, 3 }, torch.uint8)) });
        Assert.Contains("--inception", Assert.Throws<InvalidOperationException>(() => AdmEvaluator.Open(Path.Combine(dir, "imgs.npz"), null)).Message);
    }

    [Fact]
    public void PythonReprFormatting()
    {
        Assert.Equal("215.8370361328125", AdmResults.PyRepr((float)215.83703613));
        Assert.Equal("0.8265", AdmResults.PyRepr(0.8265));
        Assert.Equal("1.0", AdmResults.PyRepr(1.0));
        Assert.Equal("1e-05", AdmResults.PyRepr(1e-5));
        Assert.Equal("0.0001", AdmResults.PyRepr(1e-4));
        Assert.Equal("1e+16", AdmResults.PyRepr(1e16));
        Assert.Equal("nan", AdmResults.PyRepr(double.NaN));
        Assert.Equal("3.9425574129223264", AdmResults.PyRepr(3.9425574129223264));
        Assert.Equal("-12.5", AdmResults.PyRepr(-12.5));
        Assert.Equal("123456789012345.0", AdmResults.PyRepr(123456789012345.0));
        Assert.Equal("1.2345e-07", AdmResults.PyRepr(1.2345e-7));
        Assert.Equal("0.00012", AdmResults.PyRepr(0.00012));
        var text = new AdmResults(3.5, 2.25, 4.0, 0.5, 0.75).ToText().Split('\n');
        Assert.Equal(new[] { "Inception Score: 3.5", "FID: 2.25", "sFID: 4.0", "Precision: 0.5", "Recall: 0.75" }, text[..5]);
    }
}

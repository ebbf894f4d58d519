using ReTok.Evaluation.Inception;
using ReTok.Evaluation.Weights;

namespace ReTok.Tests.Evaluation;

public class InceptionTests
{
    /// <summary>The fixture generator's inception_rule (scale, offset) per state-dict key.</summary>
    internal static (double, double) InceptionRule(string name, long[] shape)
    {
        if (name.EndsWith("conv.weight")) return (1.8 / Math.Sqrt(shape.Skip(1).Aggregate(1L, (a, b) => a * b)), 0);
        if (name.EndsWith("bn.weight")) return (0.2, 1.0);
        if (name.EndsWith("bn.bias")) return (0.2, 0);
        if (name.EndsWith("running_mean")) return (0.1, 0);
        if (name.EndsWith("running_var")) return (0.3, 1.0);
        if (name == "fc.weight") return (3.0 / Math.Sqrt(shape[1]), 0);
        if (name == "fc.bias") return (0.1, 0);
        throw new KeyNotFoundException(name);
    }

    internal static FidInceptionV3 FormulaInception()
    {
        var m = new FidInceptionV3();
        StateDict.ApplyFormula(m, InceptionRule);
        m.eval();
        return m;
    }

    internal static Dictionary<string, string> ReferenceKeys(string file, string prefix = "") =>
        File.ReadAllLines(Fixture.PathOf(file)).Where(l => l.StartsWith(prefix) && !l.Contains("num_batches_tracked"))
            .ToDictionary(l => l.Split(' ')[0], l => l[(l.IndexOf(' ') + 1)..].Replace(" ", ""));

    static Dictionary<string, string> OurKeys(TorchSharp.torch.nn.Module m, Func<string, string>? rename = null) =>
        m.state_dict().Where(kv => !kv.Key.EndsWith("num_batches_tracked"))
            .ToDictionary(kv => (rename ?? (n => n))(kv.Key), kv => "[" + string.Join(",", kv.Value.shape) + "]");

    [Fact]
    public void ParameterNamesAndShapesMatchTheReferenceStateDicts()
    {
        // pytorch-fid's fid_inception_v3 state dict (what pt_inception-2015-12-05-6726825d.pth holds) and torchvision vgg16's
        // features.* (vgg16-397923af.pth), so the released files load 1:1.
        using var inc = new FidInceptionV3();
        Assert.Equal(ReferenceKeys("inception_state_dict.txt").OrderBy(k => k.Key), OurKeys(inc).OrderBy(k => k.Key));
        using var lp = new ReTok.Evaluation.Metrics.LpipsVgg();
        var ours = OurKeys(lp, n => n.StartsWith("net.") ? n[4..] : n).Where(k => k.Key.StartsWith("features.")).OrderBy(k => k.Key);
        Assert.Equal(ReferenceKeys("vgg16_state_dict.txt", "features.").OrderBy(k => k.Key), ours);
    }

    [Fact]
    public void Tf1LegacyBilinearMatchesTorchFidelity()
    {
        // torch-fidelity interpolate_bilinear_2d_like_tensorflow1x ('slow', bit-exact to TF1 on CPU); tolerance 1e-4 absolute on 0..255.
        var fx = Fixture.Npz("tf1_resize.npz");
        var src = fx["src"].ToTensor();
        foreach (var (key, h, w) in new[] { ("up", 45, 61), ("down", 7, 9) })
        {
            var got = Tf1Resize.Bilinear(src, h, w);
            var want = fx[key].ToTensor();
            Assert.Equal(want.shape, got.shape);
            Assert.True((got - want).abs().max().item<float>() <= 1e-4f, $"{key}: {(got - want).abs().max().item<float>()}");
        }
    }

    [Fact]
    public void FidInceptionFeaturesMatchPytorchFidReference()
    {
        // pytorch-fid fid_inception_v3 + TF1 resize + (x-128)/128 with formula weights on 3 images of 64x64.
        // Tolerance: max |ours - ref| <= 1e-4 * max |ref| per output (float32 conv reordering noise through 94 layers).
        var fx = Fixture.Npz("inception.npz");
        using var model = FormulaInception();
        using var ex = new InceptionExtractor(model, "formula") { BatchSize = 2 }; // 2 batches: batching must not matter
        using var f = ex.Extract(fx["images"].ToTensor());
        foreach (var (name, got) in new[] { ("pool", f.Pool), ("spatial", f.Spatial), ("logits", f.Logits) })
        {
            var want = fx[name].As<float>();
            var g = got.contiguous().data<float>().ToArray();
            double tol = 1e-4 * Fixture.MaxAbs(want);
            Assert.True(Fixture.MaxAbs(g, want) <= tol, $"{name}: max diff {Fixture.MaxAbs(g, want):g3} > {tol:g3}");
        }
        Assert.Equal(new long[] { 3, 2048 }, f.Pool.shape);
        Assert.Equal(new long[] { 3, 2023 }, f.Spatial.shape);
        Assert.Equal(new long[] { 3, 1008 }, f.Logits.shape);
    }
}

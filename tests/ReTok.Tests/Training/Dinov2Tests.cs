using ReTok.Models.Dinov2;
using ReTok.Models.IO;
using static TorchSharp.torch;

namespace ReTok.Tests.Training;

public class Dinov2Tests
{
    /// <summary>training.py formula_image: 0.8 sin(0.05h + 0.3c) cos(0.07w - 0.2c) + 0.15 sin(0.37 flat), float64 -> float32.</summary>
    internal static Tensor FormulaImage(int size = 256)
    {
        var c = arange(3, dtype: float64).view(3, 1, 1);
        var h = arange(size, dtype: float64).view(1, size, 1);
        var w = arange(size, dtype: float64).view(1, 1, size);
        var flat = c * size * size + h * size + w;
        var x = 0.8 * sin(0.05 * h + 0.3 * c) * cos(0.07 * w - 0.2 * c) + 0.15 * sin(0.37 * flat);
        return x.to(float32).unsqueeze(0);
    }

    /// <summary>training.py formula_state_dict (keys sorted ordinally; see there). Computed with Math.Sin in float64
    /// (plain loops: 86M values, far cheaper than tensor temporaries), then cast to float32.</summary>
    internal static Dictionary<string, Tensor> FormulaStateDict(IReadOnlyDictionary<string, Tensor> shapes)
    {
        var keys = shapes.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var d = new Dictionary<string, Tensor>();
        for (int j = 0; j < keys.Count; j++)
        {
            var key = keys[j];
            var shape = shapes[key].shape;
            long n = shape.Aggregate(1L, (a, b) => a * b);
            (double mul, double add) = key.Contains("norm") && key.EndsWith(".weight") ? (0.1, 1.0)
                : key.EndsWith(".gamma") ? (0.05, 0.1)
                : key.EndsWith(".bias") ? (0.02, 0.0)
                : key is "cls_token" or "pos_embed" or "mask_token" ? (0.05, 0.0)
                : (1 / Math.Sqrt((double)n / shape[0]), 0.0);
            var v = new float[n];
            double phase = 0.5 * j;
            Parallel.For(0, (int)((n + 65535) / 65536), chunk =>
            {
                long end = Math.Min(n, (chunk + 1) * 65536L);
                for (long i = chunk * 65536L; i < end; i++) v[i] = (float)(add + mul * Math.Sin(i * 0.37 + phase));
            });
            d[key] = tensor(v, shape);
        }
        return d;
    }

    [Fact]
    public void SmallDepthModelMatchesReference()
    {
        const double tol = 1e-4;
        var fx = TrainingFixtures.Load("dinov2_small.npz");
        var model = new DinoVisionTransformer(new Dinov2Config(EmbedDim: 64, Depth: 2, NumHeads: 4));
        Dinov2Weights.Load(model, fx.Where(kv => kv.Key.StartsWith("sd.")).ToDictionary(kv => kv.Key[3..], kv => kv.Value), "dinov2_small.npz");
        using var teacher = new Dinov2Teacher(model);                   // resamples 37x37 -> 16x16 (timm, antialias)
        Assert.InRange(TrainingFixtures.MaxDiff(model.PosEmbed, fx["pos_embed_16"]), 0, 1e-5);

        var img = cat(new[] { FormulaImage(), -FormulaImage().flip(-1) });
        Assert.InRange(TrainingFixtures.MaxDiff(teacher.Preprocess(img)[1, 2], fx["preprocessed.b1c2"]), 0, 1e-5);
        var feats = teacher.Features(img);
        Assert.Equal(new long[] { 2, 256, 64 }, feats.shape);
        Assert.InRange(TrainingFixtures.MaxDiff(feats, fx["x_norm_patchtokens"]), 0, tol);
        Assert.False(feats.requires_grad);
        Assert.All(model.parameters(), p => Assert.False(p.requires_grad));

        // dinov2's own interpolate_pos_encoding (offset 0.1, bicubic) for a 20x16 patch grid
        using (no_grad())
        {
            var raw = FormulaImage(280)[.., .., .., ..224];
            var f = model.ForwardFeatures(raw);
            Assert.InRange(TrainingFixtures.MaxDiff(f.PatchTokens, fx["raw280x224.x_norm_patchtokens"]), 0, tol);
            Assert.InRange(TrainingFixtures.MaxDiff(model.ForwardFeatures(teacher.Preprocess(img)).ClsToken, fx["x_norm_clstoken"]), 0, tol);
        }
    }

    [Fact]
    public void FullVitB14WithFormulaWeightsMatchesReference()
    {
        var model = new DinoVisionTransformer(Dinov2Config.VitB14);
        var own = model.state_dict();
        var reference = TrainingFixtures.StateDictListing("dinov2_vitb14_state_dict.tsv");
        Assert.Equal(175, reference.Count);
        Assert.Equal(reference.Select(r => r.Name).Order(), own.Keys.Order());
        foreach (var (name, shape) in reference) Assert.Equal(shape, own[name].shape);

        Dinov2Weights.Load(model, FormulaStateDict(own), "formula");
        using var teacher = new Dinov2Teacher(model);
        var fx = TrainingFixtures.Load("dinov2_vitb14_formula.npz");
        Assert.InRange(TrainingFixtures.MaxDiff(model.PosEmbed[0, 5], fx["pos_embed_16_row5"]), 0, 1e-5);
        var feats = teacher.Features(FormulaImage());
        Assert.Equal(new long[] { 1, 256, 768 }, feats.shape);
        Assert.InRange(TrainingFixtures.MaxDiff(feats, fx["x_norm_patchtokens"]), 0, 1e-4);
    }

    [Fact]
    public void ReadsTorchSavedStateDictsAndNamesBadKeys()
    {
        var path = TrainingFixtures.PathOf("dinov2_small_subset.pth");
        var sd = StateDictFile.Read(path);
        var fx = TrainingFixtures.Load("dinov2_small.npz");
        Assert.Equal(5, sd.Count);
        foreach (var (k, v) in sd) Assert.Equal(0.0, TrainingFixtures.MaxDiff(v, fx["sd." + k]));

        var model = new DinoVisionTransformer(new Dinov2Config(EmbedDim: 64, Depth: 2, NumHeads: 4));
        var ex = Assert.Throws<InvalidDataException>(() => Dinov2Weights.Load(model, sd, path));
        Assert.Contains("dinov2_small_subset.pth", ex.Message);
        Assert.Contains("missing key", ex.Message);
        Assert.Throws<FileNotFoundException>(() => StateDictFile.Read(path + ".nope"));
    }
}

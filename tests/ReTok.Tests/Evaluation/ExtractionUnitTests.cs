using ReTok.Evaluation.Images;
using ReTok.Jobs.Kinds.ExtractDataset;
using ReTok.Models.IO;
using ReTok.Models.Images;
using SkiaSharp;
using static ReTok.Tests.Kinds.Support.EvalJobSupport;

namespace ReTok.Tests.Evaluation;

/// <summary>The extraction's listing and labelling without the engine: devkit meta.mat, flat ILSVRC2012 val labels, selection order.</summary>
public class ExtractionUnitTests
{
    [Theory]
    [InlineData("meta_small.mat")]
    [InlineData("meta_small_compressed.mat")]
    public void DevkitMetaReadsSynsetsFromPlainAndCompressedMatFiles(string file)
    {
        // tests/fixtures/gen/jobs_eval.py (scipy.io.savemat, the devkit's field layout)
        var s = DevkitMeta.Load(Fixture("jobs-eval", file));
        Assert.Equal(new[] { 1, 2, 3, 1001, 1002 }, s.Select(x => x.Id));
        Assert.Equal(new[] { "n02119789", "n02100735", "n01440764", "n00001740", "n00002137" }, s.Select(x => x.Wnid));
        Assert.Equal("kit fox, Vulpes macrotis", s[0].Words);
    }

    [Fact]
    public void NotAMatFileIsAClearError()
    {
        var f = Path.GetTempFileName();
        File.WriteAllText(f, "hello");
        var e = Assert.Throws<InvalidDataException>(() => DevkitMeta.Load(f));
        Assert.Contains("not a MATLAB 5.0 MAT-file", e.Message);
    }

    static string FlatVal(string dir, int n)
    {
        Directory.CreateDirectory(dir);
        for (int i = 1; i <= n; i++)
        {
            using var bmp = new SKBitmap(40 + i, 30 + i);
            bmp.Erase(new SKColor((byte)(40 * i), 20, 200));
            using var data = bmp.Encode(SKEncodedImageFormat.Jpeg, 90);
            File.WriteAllBytes(Path.Combine(dir, $"ILSVRC2012_val_{i:00000000}.JPEG"), data.ToArray());
        }
        return dir;
    }

    [Fact]
    public void FlatIlsvrcValLabelsFollowTheSortedWnidOrderWithMetaAndTheDevkitIdsWithout()
    {
        var root = Directory.CreateTempSubdirectory("ilsvrc").FullName;
        var val = FlatVal(Path.Combine(root, "val"), 4);
        var gt = Path.Combine(root, "ILSVRC2012_validation_ground_truth.txt");
        File.WriteAllText(gt, "3\n1\n2\n3\n");
        var p = new ExtractDatasetParams { Source = val, ValLabels = gt, Shuffle = false };

        var noMeta = DatasetExtractor.Select(p);
        Assert.Equal("IlsvrcVal", noMeta.Layout);
        Assert.Equal(new[] { 2, 0, 1, 2 }, noMeta.Images.Select(i => i.Label));   // ILSVRC2012_ID - 1
        // with meta.mat: sorted WNIDs n01440764 (ID 3), n02100735 (ID 2), n02119789 (ID 1) -> ImageFolder labels
        var withMeta = DatasetExtractor.Select(p with { DevkitMeta = Fixture("jobs-eval", "meta_small_compressed.mat") });
        Assert.Equal(new[] { 0, 2, 1, 0 }, withMeta.Images.Select(i => i.Label));
        Assert.Equal(new[] { "n01440764", "n02100735", "n02119789" }, withMeta.ClassNames);
        // Kaggle's LOC_val_solution.csv gives WordNet ids directly (rows in any order)
        var csv = Path.Combine(root, "LOC_val_solution.csv");
        File.WriteAllText(csv, "ImageId,PredictionString\nILSVRC2012_val_00000002,n02119789 1 2 3 4\nILSVRC2012_val_00000001,n01440764 1 2 3 4 n01440764 5 6 7 8\n" +
                               "ILSVRC2012_val_00000004,n01440764 1 1 1 1\nILSVRC2012_val_00000003,n02100735 0 0 9 9\n");
        Assert.Equal(new[] { 0, 2, 1, 0 }, DatasetExtractor.Select(p with { ValLabels = csv }).Images.Select(i => i.Label));

        // a GT file that misses an image names it
        File.WriteAllText(gt, "3\n1\n");
        var e = Assert.Throws<InvalidDataException>(() => DatasetExtractor.Select(p));
        Assert.Contains("ILSVRC2012_val_00000003.JPEG: image 3 has no label", e.Message);
    }

    [Fact]
    public void SelectionIsSeededAndPerClassPicksTheFirstFilesOfEachClass()
    {
        var root = Directory.CreateTempSubdirectory("select").FullName;
        var src = Path.Combine(root, "src");
        ReTok.Jobs.Quickstart.SyntheticDataset.Generate(src, classes: 3, perClass: 5, seed: 1);
        var p = new ExtractDatasetParams { Source = src, Seed = 4 };
        var a = DatasetExtractor.Select(p);
        Assert.Equal(a.Images.Select(i => i.Path), DatasetExtractor.Select(p).Images.Select(i => i.Path));
        Assert.Equal(a.OrderSha256, DatasetExtractor.Select(p).OrderSha256);
        Assert.NotEqual(a.OrderSha256, DatasetExtractor.Select(p with { Seed = 5 }).OrderSha256);
        var listing = DatasetExtractor.Select(p with { Shuffle = false }).Images;
        Assert.Equal(listing.Select(i => i.RelativePath).ToList(), listing.Select(i => i.RelativePath).Order(StringComparer.Ordinal).ToList());
        Assert.Equal(listing.Select(i => i.Path).Order(), a.Images.Select(i => i.Path).Order());
        var sub = DatasetExtractor.Select(p with { PerClass = 2 }).Images;
        Assert.Equal(6, sub.Count);
        Assert.Equal(listing.GroupBy(i => i.Label).SelectMany(g => g.Take(2)).Select(i => i.Path).Order(), sub.Select(i => i.Path).Order());
        Assert.Equal(4, DatasetExtractor.Select(p with { PerClass = 2, Limit = 4 }).Images.Count);
    }

    /// <summary>The one-go extraction the CLI commands run: the same rows as the chunks (crops of the selection), on_corrupt
    /// applied, and PNG k = row k.</summary>
    [Fact]
    public void ExtractToNpzAppliesOnCorruptAndPngsFollowTheRows()
    {
        var root = Directory.CreateTempSubdirectory("extract-npz").FullName;
        var src = Path.Combine(root, "src");
        ReTok.Jobs.Quickstart.SyntheticDataset.Generate(src, classes: 2, perClass: 3, seed: 2);
        File.WriteAllText(Path.Combine(src, ReTok.Jobs.Quickstart.SyntheticDataset.ClassNames[1], "zz_corrupt.png"), "this is not a PNG");
        var p = new ExtractDatasetParams { Source = src, Seed = 3, ChunkSize = 4, Workers = 2 };
        var npz = Path.Combine(root, "out.npz");

        var e = Assert.Throws<CorruptImageException>(() => DatasetExtractor.ExtractToNpz(p, npz, null, default));
        Assert.Contains("zz_corrupt.png", e.Message);
        Assert.False(File.Exists(npz));

        var (n, skipped, _) = DatasetExtractor.ExtractToNpz(p with { OnCorrupt = OnCorrupt.Skip }, npz, null, default);
        Assert.Equal((6L, 1), (n, skipped));
        var kept = DatasetExtractor.Select(p).Images.Where(i => !i.RelativePath.Contains("_corrupt")).ToList();
        var arr = Npz.LoadKey(npz, "arr_0");
        Assert.Equal(kept.Select(i => (long)i.Label), Npz.LoadKey(npz, "labels").As<long>());
        int per = 256 * 256 * 3;
        var pngs = DatasetExtractor.Pngs(npz, 2, default).ToList();
        Assert.Equal(Enumerable.Range(0, 6).Select(i => (long)i), pngs.Select(x => x.Row));
        for (int k = 0; k < kept.Count; k++)
        {
            var row = arr.Data.AsSpan(k * per, per);
            Assert.True(row.SequenceEqual(AdmCrop.CenterCropArr(ImageIO.LoadRgb(kept[k].Path), 256).Pixels), $"row {k} ({kept[k].RelativePath})");
            Assert.True(row.SequenceEqual(ImageIO.DecodeRgb(pngs[k].Png).Pixels), $"png {k}");
        }
    }

    [Theory]
    [InlineData("jobs/extract-imagenet-val.yaml")]
    [InlineData("jobs/extract-tiny.yaml")]
    [InlineData("jobs/eval-recon-retok-s-b.yaml")]
    [InlineData("jobs/eval-recon-tiny.yaml")]
    public void ShippedSpecsValidate(string spec)
    {
        var plan = ReTok.Engine.JobSpecs.Load(Path.Combine(RepoPaths.Root, spec));
        Assert.All(plan.Steps, s => Assert.Empty((s.Params as ReTok.Engine.IValidatableParams)?.Validate() ?? []));
        if (spec.Contains("retok-s-b"))
        {
            var eval = Assert.IsType<ReTok.Jobs.Kinds.EvalReconstruction.EvalReconstructionParams>(plan.Steps.Single(s => s.Step == "eval").Params);
            Assert.Equal(("VQ_SB256", "gpu", 4), (eval.Preset, plan.Steps.Single(s => s.Step == "eval").Queue, eval.Shards));
            Assert.Equal(new[] { 32, 64, 128, 256 }, eval.TokenCounts);
            Assert.Equal("extract/dataset.npz", plan.Steps.Single(s => s.Step == "eval").Inputs["data"]);
        }
    }
}

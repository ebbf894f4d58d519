using ReTok.Evaluation.Images;
using ReTok.Jobs.Kinds.ExtractDataset;
using ReTok.Models.IO;
using ReTok.Models.Images;
using TorchSharp;

namespace ReTok.Tests.Evaluation;

public class ImageTests
{
    static RgbImage FromNpy(NpyArray a) => new((int)a.Shape[1], (int)a.Shape[0], a.As<byte>());

    static int CountDiff(byte[] a, byte[] b)
    {
        Assert.Equal(a.Length, b.Length);
        int n = 0;
        for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) n++;
        return n;
    }

    [Fact]
    public void PilResizeIsBitIdenticalForBoxBilinearBicubic()
    {
        // PIL 9.4 Image.resize on a 97x83 RGB image, down and up, every filter: tolerance 0 (bit-identical).
        var fx = Fixture.Npz("pil_resize.npz");
        var src = FromNpy(fx["src"]);
        int checkedCount = 0;
        foreach (var (key, want) in fx.Where(kv => kv.Key != "src"))
        {
            var parts = key.Split('_');
            var filter = parts[0] switch { "box" => PilFilter.Box, "bilinear" => PilFilter.Bilinear, _ => PilFilter.Bicubic };
            var wh = parts[1].Split('x').Select(int.Parse).ToArray();
            var got = PilResize.Resize(src, wh[0], wh[1], filter);
            Assert.True(CountDiff(want.As<byte>(), got.Pixels) == 0, $"{key}: differs from PIL");
            checkedCount++;
        }
        Assert.Equal(15, checkedCount);
    }

    [Fact]
    public void DecodeMatchesPilConvertRgb()
    {
        // PIL Image.open(f).convert('RGB') of PNG (RGB, grey, palette), JPEG (RGB, grey, Adobe CMYK, 4:2:0): tolerance 0.
        var fx = Fixture.Npz("decoded.npz");
        Assert.True(fx.Count >= 5);
        foreach (var (key, want) in fx)
        {
            var file = key[..key.LastIndexOf('_')] + "." + key[(key.LastIndexOf('_') + 1)..];
            var img = ImageIO.LoadRgb(Fixture.PathOf(Path.Combine("images", file)));
            Assert.Equal((int)want.Shape[0], img.Height);
            Assert.Equal((int)want.Shape[1], img.Width);
            Assert.True(CountDiff(want.As<byte>(), img.Pixels) == 0, $"{file}: decoded pixels differ from PIL");
        }
    }

    [Fact]
    public void AdmCenterCropIsBitIdenticalToReTokCenterCropArr()
    {
        // ReTok dataset/augmentation.py center_crop_arr(Image.open(f).convert('RGB'), 256) on awkward sizes/modes: tolerance 0.
        var fx = Fixture.Npz("adm_crops.npz");
        Assert.Equal(10, fx.Count);
        foreach (var (key, want) in fx)
        {
            var file = key[..key.LastIndexOf('_')] + "." + key[(key.LastIndexOf('_') + 1)..];
            var crop = AdmCrop.CenterCropArr(ImageIO.LoadRgb(Fixture.PathOf(Path.Combine("images", file))), 256);
            Assert.Equal(256, crop.Width);
            Assert.Equal(256, crop.Height);
            Assert.True(CountDiff(want.As<byte>(), crop.Pixels) == 0, $"{file}: crop differs from PIL in {CountDiff(want.As<byte>(), crop.Pixels)} values");
        }
    }

    [Fact]
    public void TenCropOfA281ExtractionIsBitIdenticalToExtractCodesC2iOnTheSourceFiles()
    {
        // extract_codes_c2i.py --ten-crop: center_crop_arr(original file, 281) -> torchvision TenCrop(256), fixture from
        // the authors' augmentation.py; ours: extract-dataset's row at image_size 281 -> extract-codes' TenCrop. Tolerance 0.
        var fx = Fixture.Npz("tencrop_281.npz");
        string Src(string key) => Fixture.PathOf(Path.Combine("images", key[(key.IndexOf('_') + 1)..key.LastIndexOf('_')] + "." + key[(key.LastIndexOf('_') + 1)..]));
        var crops = fx.Where(kv => kv.Key.StartsWith("crop_")).ToList();
        Assert.Equal(2, crops.Count);
        foreach (var (key, want) in crops)
        {
            var row = AdmCrop.CenterCropArr(ImageIO.LoadRgb(Src(key)), 281);
            Assert.True(CountDiff(want.As<byte>(), row.Pixels) == 0, $"{key}: {CountDiff(want.As<byte>(), row.Pixels)} values differ from center_crop_arr(img, 281)");
        }
        var (vkey, wantViews) = fx.Single(kv => kv.Key.StartsWith("views_"));
        var crop = AdmCrop.CenterCropArr(ImageIO.LoadRgb(Src(vkey)), 281);
        using var views = ReTok.Models.Generation.CodeExtraction.TenCrop(torch.tensor(crop.Pixels, new long[] { 1, 281, 281, 3 }, torch.ScalarType.Byte));
        // back from Normalize(0.5, 0.5) to bytes: (x * 0.5 + 0.5) * 255 lands within float rounding of an integer
        using var u8 = views[0].mul(0.5).add(0.5).mul(255).round().to(torch.ScalarType.Byte).permute(0, 2, 3, 1).contiguous();
        Assert.Equal(wantViews.Shape, u8.shape);
        var got = u8.data<byte>().ToArray();
        Assert.True(CountDiff(wantViews.As<byte>(), got) == 0, $"{vkey}: {CountDiff(wantViews.As<byte>(), got)} values differ from torchvision TenCrop");

        // the 256 px extraction cropped again to 281 (what extract-codes did before it refused it) is not the reference's crop
        var twice = AdmCrop.CenterCropArr(AdmCrop.CenterCropArr(ImageIO.LoadRgb(Src(vkey)), 256), 281);
        Assert.NotEqual(0, CountDiff(crop.Pixels, twice.Pixels));
    }

    [Fact]
    public void CorruptImageThrowsNamingTheFile()
    {
        var path = Fixture.PathOf("corrupt_truncated.jpg");
        var ex = Assert.Throws<InvalidDataException>(() => ImageIO.LoadRgb(path));
        Assert.Contains("corrupt_truncated.jpg", ex.Message);
        var notImage = Path.Combine(Directory.CreateTempSubdirectory("img").FullName, "notes.png");
        File.WriteAllText(notImage, "hello");
        Assert.Contains("notes.png", Assert.Throws<InvalidDataException>(() => ImageIO.LoadRgb(notImage)).Message);
    }

    [Fact]
    public void PngRoundTripIsLosslessAndRgb()
    {
        var rng = new Random(3);
        var img = new RgbImage(37, 19);
        rng.NextBytes(img.Pixels);
        var bytes = ImageIO.EncodePng(img);
        Assert.Equal(2, bytes[8 + 8 + 9]); // IHDR colour type 2 = RGB, so PIL reads mode 'RGB'
        var back = ImageIO.DecodeRgb(bytes, "roundtrip");
        Assert.Equal(img.Pixels, back.Pixels);
    }

    [Fact]
    public void ImageGridPlacesImagesRowMajorWithPadding()
    {
        var imgs = torch.zeros(new long[] { 3, 4, 5, 3 }, torch.uint8);
        for (int k = 0; k < 3; k++) imgs[k].fill_(10 * (k + 1));
        var g = ImageGrid.Make(imgs, nrow: 2, padding: 1);
        Assert.Equal(2 * (5 + 1) + 1, g.Width);
        Assert.Equal(2 * (4 + 1) + 1, g.Height);
        Assert.Equal(10, g[1, 1, 0]);          // image 0 top-left
        Assert.Equal(20, g[1, 1 + 6, 2]);      // image 1 right of it
        Assert.Equal(30, g[1 + 5, 1, 1]);      // image 2 on the second row
        Assert.Equal(0, g[0, 0, 0]);           // padding
        Assert.Equal(0, g[1 + 5, 1 + 6, 0]);   // empty cell
    }

    /// <summary>Tiles under 64 px (the quickstart's 32 px images) are enlarged by an integer factor, each pixel repeated.</summary>
    [Fact]
    public void SmallTilesAreEnlargedForViewing()
    {
        var imgs = torch.zeros(new long[] { 2, 32, 32, 3 }, torch.uint8);
        imgs[0, 5, 7, 1] = 255;
        var path = Path.Combine(Directory.CreateTempSubdirectory("biggrid").FullName, "grid.png");
        ImageGrid.Save(path, imgs, nrow: 2, padding: 2);
        var g = ImageIO.LoadRgb(path);
        Assert.Equal((2 * (64 + 2) + 2, 64 + 4), (g.Width, g.Height));
        foreach (var (y, x) in new[] { (10, 14), (10, 15), (11, 14), (11, 15) }) Assert.Equal(255, g[2 + y, 2 + x, 1]);
        Assert.Equal(0, g[2 + 12, 2 + 14, 1]);
        using var big = torch.zeros(new long[] { 1, 64, 64, 3 }, torch.uint8);
        using var same = ImageGrid.Legible(big);
        Assert.Equal(big.shape, same.shape);   // 64 px and up: unchanged
    }

    /// <summary>Sample grids carry each cell's class under it (issue 15); without a font file the plain grid is written.</summary>
    [Fact]
    public void CaptionedGridWritesTextUnderEachCell()
    {
        var imgs = torch.zeros(new long[] { 2, 64, 64, 3 }, torch.uint8);
        imgs[.., .., .., 0].fill_(200);   // red cells
        var path = Path.Combine(Directory.CreateTempSubdirectory("capgrid").FullName, "grid.png");
        bool captioned = ImageGrid.SaveCaptioned(path, imgs, ["disc", "ring"], nrow: 2, padding: 2);
        var g = ImageIO.LoadRgb(path);
        Assert.Equal(2 * (64 + 2) + 2, g.Width);
        Assert.Equal(captioned, ImageGrid.CaptionFont() is not null);
        if (!captioned) { Assert.Equal(64 + 4, g.Height); return; }
        Assert.True(g.Height > 64 + 4 + 8, $"no room for captions: height {g.Height}");
        Assert.Equal(200, g[2 + 32, 2 + 32, 0]);   // the cell itself is untouched
        Assert.Equal(0, g[2 + 32, 2 + 32, 1]);
        // white text in the strip below each cell, none in the cells' padding columns
        foreach (int x0 in new[] { 2, 2 + 66 })
        {
            int bright = 0;
            for (int y = 2 + 64; y < g.Height; y++)
                for (int x = x0; x < x0 + 64; x++)
                    if (g[y, x, 0] > 128 && g[y, x, 1] > 128 && g[y, x, 2] > 128) bright++;
            Assert.True(bright > 10, $"caption under the cell at x={x0}: {bright} text pixels");
        }
        Assert.Throws<ArgumentException>(() => ImageGrid.SaveCaptioned(path, imgs, ["only one"]));
    }

    [Fact]
    public void ImageFolderListsClassesThenFilesInPythonSortOrder()
    {
        var root = Directory.CreateTempSubdirectory("imgfolder").FullName;
        var png = ImageIO.EncodePng(new RgbImage(300, 260));
        foreach (var p in new[] { "n02/b.png", "n02/a.PNG", "n01/z.png", "n01/sub/y.png", "n10/x.png", "empty/readme.txt" })
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(root, p))!);
            File.WriteAllBytes(Path.Combine(root, p), png);
        }
        var l = ImageFolder.List(root);
        Assert.Equal(new[] { "n01/z.png", "n01/sub/y.png", "n02/a.PNG", "n02/b.png", "n10/x.png" },
            l.Files.Select(f => Path.GetRelativePath(root, f)).ToArray());
        Assert.Equal(new[] { 0, 0, 1, 1, 2 }, l.Labels.ToArray());
        var t = ImageFolder.Load(root);
        Assert.Equal(new long[] { 5, 256, 256, 3 }, t.shape);

        var flat = Directory.CreateTempSubdirectory("flat").FullName;
        foreach (var n in new[] { "000002.png", "000000.png", "000001.png" }) File.WriteAllBytes(Path.Combine(flat, n), png);
        var npz = Path.Combine(flat, "out", "val.npz");
        Assert.Equal(3, DatasetExtractor.ExtractToNpz(new ExtractDatasetParams { Source = flat, Shuffle = false }, npz, null, default).Images);
        Assert.Equal(new long[] { 3, 256, 256, 3 }, Npz.Header(npz, "arr_0").Shape);
        Assert.Equal(new[] { "000000.png", "000001.png", "000002.png" }, ImageFolder.List(flat).Files.Select(Path.GetFileName).ToArray());
    }
}

using ReTok.Cli;
using ReTok.Models.IO;
using TorchSharp;
using static TorchSharp.torch;
using static ReTok.Tests.Tokenizer.TokenizerTestData;

namespace ReTok.Tests.Tokenizer;

/// <summary>`retok tokenizer …` on the tiny fixture: command shapes and file outputs against the reference.</summary>
public class TokenizerCliTests : IDisposable
{
    readonly string dir = Path.Combine(Path.GetTempPath(), $"retok-tokcli-{Guid.NewGuid():N}");
    public TokenizerCliTests() => Directory.CreateDirectory(dir);
    public void Dispose() { try { Directory.Delete(dir, true); } catch { } }

    [Theory]
    [InlineData("tokenizer inspect x.pt")]
    [InlineData("tokenizer encode --config c.yaml --checkpoint x.pt --images imgs.npz --out codes.npy --device cpu --batch-size 4")]
    [InlineData("tokenizer decode --config c.yaml --checkpoint x.pt --codes codes.npy --tokens 32 --out images.npz --out-float x.npy")]
    [InlineData("tokenizer reconstruct --config c.yaml --checkpoint x.pt --images imgs --tokens 256 --save-grid g.png")]
    [InlineData("tokenizer bench --batch-size 8")]
    public void CommandShapes_Parse(string line)
    {
        var root = new System.CommandLine.RootCommand();
        foreach (var c in Commands.All()) root.Subcommands.Add(c);
        Assert.Empty(root.Parse(line).Errors);
    }

    [Fact]
    public void DecodeWithoutTokens_IsAParseError()
    {
        var root = new System.CommandLine.RootCommand();
        root.Subcommands.Add(TokenizerCommands.Build());
        Assert.NotEmpty(root.Parse("tokenizer decode --config c.yaml --checkpoint x.pt --codes c.npy --out o.npz").Errors);
    }

    [Fact]
    public void EncodeThenDecode_WritesReferenceCodesAndImages()
    {
        var log = new StringWriter();
        string codes = Path.Combine(dir, "codes.npy"), imgs = Path.Combine(dir, "rec.npz"), raw = Path.Combine(dir, "rec.npy");
        TokenizerCommands.RunEncode(F("tiny.yaml"), F("tiny.safetensors"), F("images.npz"), codes, "cpu", 1, "ema", log);
        var c = Npy.Load(codes);
        Assert.Equal("<i8", c.Dtype);
        Assert.Equal(new long[] { 2, 480 }, c.Shape);
        var r = Ref("tiny_ref.npz");
        Assert.Equal(r["codes"].As<long>(), c.As<long>());

        TokenizerCommands.RunDecode(F("tiny.yaml"), F("tiny.safetensors"), codes, 32, imgs, raw, "cpu", 2, "ema", log);
        var u8 = Npz.LoadKey(imgs, "arr_0");
        Assert.Equal("|u1", u8.Dtype);
        Assert.Equal(new long[] { 2, 256, 256, 3 }, u8.Shape);
        var x = Npy.Load(raw).ToTensor();
        Assert.Equal(new long[] { 2, 3, 256, 256 }, x.shape);
        var (maxAbs, _) = Compare(x, r, "dec_k32");
        Assert.True(maxAbs <= 1e-4f);
        // uint8 = trunc(clamp(127.5x + 128, 0, 255)), NHWC
        var expect = torch.clamp(127.5 * x + 128.0, 0, 255).floor().permute(0, 2, 3, 1).to(ScalarType.Byte);
        Assert.True(expect.eq(u8.ToTensor()).all().item<bool>());
        Assert.Contains("decoded 2 x K=32", log.ToString());
    }

    [Fact]
    public void Reconstruct_WritesGridAndReportsPsnr_Inspect_DescribesTheCheckpoint()
    {
        var log = new StringWriter();
        string grid = Path.Combine(dir, "grid.png"), imgs = Path.Combine(dir, "rec.npz");
        TokenizerCommands.RunReconstruct(F("tiny.yaml"), F("tiny.safetensors"), F("images.npz"), 256, imgs, null, grid, "cpu", 2, "ema", log);
        Assert.Contains("reconstructed 2 images at K=256", log.ToString());
        Assert.Contains("PSNR", log.ToString());
        var png = File.ReadAllBytes(grid);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png.Take(4));
        // the grid is 2 rows x 2 images of 256 px with 2 px gaps: width 2*256 + 3*2 = 518
        Assert.Equal(518, System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16, 4)));

        var ilog = new StringWriter();
        TokenizerCommands.RunInspect(F("tiny.safetensors"), "ema", ilog);
        var text = ilog.ToString();
        Assert.Contains("safetensors", text);
        Assert.Contains("bfloat16", text);
        Assert.Contains("architecture: custom", text);
        Assert.Contains("parameters: 1,699,435", text);

        var nlog = new StringWriter();
        TokenizerCommands.RunInspect(F("pickle_nested.pt"), "ema", nlog);
        Assert.Contains("weights: ema", nlog.ToString());
        Assert.Contains("steps: 5000", nlog.ToString());
        Assert.Contains("not a ReTok tokenizer state dict", nlog.ToString());
    }

    [Fact]
    public void ImageFolder_IsDecodedAndAdmCropped_BadFoldersGiveClearErrors()
    {
        // Two 256x256 PNGs (the fixture's images) and one 300x260 PNG: the folder must give the codes of an npz holding
        // the first two as they are and ADM center_crop_arr of the third (flat folder, files in name order).
        var u8 = Npz.LoadKey(F("images.npz"), "arr_0");
        var folder = Directory.CreateDirectory(Path.Combine(dir, "pngs")).FullName;
        int per = 256 * 256 * 3;
        for (int i = 0; i < 2; i++)
            ReTok.Evaluation.Images.ImageIO.SavePng(Path.Combine(folder, $"img{i}.png"), new(256, 256, u8.Data.AsSpan(i * per, per).ToArray()));
        var odd = new ReTok.Models.Images.RgbImage(300, 260);
        for (int j = 0; j < odd.Pixels.Length; j++) odd.Pixels[j] = (byte)((j * 7 + j / 900 * 13) % 251);
        ReTok.Evaluation.Images.ImageIO.SavePng(Path.Combine(folder, "img2.png"), odd);
        var crop = ReTok.Models.Images.AdmCrop.CenterCropArr(odd);
        var expectNpz = Path.Combine(dir, "expect.npz");
        Npz.Save(expectNpz, new Dictionary<string, NpyArray> { ["arr_0"] = new("|u1", [3, 256, 256, 3], [.. u8.Data.AsSpan(0, 2 * per), .. crop.Pixels]) });

        string fromFolder = Path.Combine(dir, "folder.npy"), fromNpz = Path.Combine(dir, "npz.npy");
        var log = new StringWriter();
        TokenizerCommands.RunEncode(F("tiny.yaml"), F("tiny.safetensors"), folder, fromFolder, "cpu", 2, "ema", log);
        TokenizerCommands.RunEncode(F("tiny.yaml"), F("tiny.safetensors"), expectNpz, fromNpz, "cpu", 2, "ema", log);
        Assert.Equal(new long[] { 3, 480 }, Npy.Load(fromFolder).Shape);
        Assert.Equal(Npy.Load(fromNpz).As<long>(), Npy.Load(fromFolder).As<long>());
        TokenizerCommands.RunReconstruct(F("tiny.yaml"), F("tiny.safetensors"), folder, 32, null, null, null, "cpu", 2, "ema", log);
        Assert.Contains("reconstructed 3 images at K=32", log.ToString());

        // A folder with neither npz nor images, and an undecodable image (named in the error).
        var empty = Directory.CreateDirectory(Path.Combine(dir, "empty")).FullName;
        File.WriteAllText(Path.Combine(empty, "notes.txt"), "x");
        var e = Assert.Throws<ArgumentException>(() =>
            TokenizerCommands.RunEncode(F("tiny.yaml"), F("tiny.safetensors"), empty, Path.Combine(dir, "c.npy"), "cpu", 1, "ema", new StringWriter()));
        Assert.Contains("neither .npz files nor images", e.Message);
        File.WriteAllBytes(Path.Combine(folder, "img3.png"), new byte[] { 1 });
        var bad = Assert.Throws<InvalidDataException>(() =>
            TokenizerCommands.RunEncode(F("tiny.yaml"), F("tiny.safetensors"), folder, Path.Combine(dir, "c.npy"), "cpu", 1, "ema", new StringWriter()));
        Assert.Contains("img3.png", bad.Message);
    }
}

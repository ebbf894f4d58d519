using ReTok.Engine;
using ReTok.Models;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using ReTok.Models.Images;
using ReTok.Models.Tokenizer;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Jobs.Kinds.ExtractCodes;

public sealed record ExtractCodesParams : IValidatableParams
{
    /// <summary>Ten-crop + flip of ADM center_crop_arr(img, int(256*crop_range)) as extract_codes_c2i.py --ten-crop; false = the plain 256 image (1 view).</summary>
    public bool TenCrop { get; init; } = true;
    public double CropRange { get; init; } = 1.1;
    /// <summary>Codes kept per view: the first `tokens` of the tokenizer's 480 (the GPT models 256).</summary>
    public int Tokens { get; init; } = 256;
    /// <summary>Images per encoder call (each gives 10 views with ten_crop).</summary>
    public int BatchSize { get; init; } = 4;
    /// <summary>Images per checkpoint.</summary>
    public int ChunkImages { get; init; } = 256;
    /// <summary>Use only the first N images (0 = all).</summary>
    public int MaxImages { get; init; }

    public IEnumerable<string> Validate()
    {
        if (Tokens < 1) yield return $"tokens: must be >= 1, got {Tokens}";
        if (BatchSize < 1) yield return $"batch_size: must be >= 1, got {BatchSize}";
        if (ChunkImages < 1) yield return $"chunk_images: must be >= 1, got {ChunkImages}";
        if (CropRange < 1) yield return $"crop_range: must be >= 1, got {CropRange}";
        if (MaxImages < 0) yield return $"max_images: must be >= 0, got {MaxImages}";
    }
}

/// <summary>
/// extract_codes_c2i.py as a job: dataset.npz (arr_0 uint8 [N,256,256,3], labels) -> codes.npz with codes int64
/// [N*views, tokens] (views of image i are rows i*views..i*views+views-1, torchvision TenCrop order) and labels [N*views].
/// Checkpoints the codes done so far every chunk_images images and resumes from there.
/// </summary>
[JobKind("extract-codes", Queue = "gpu", Description = "tokenizer codes of a dataset (ten-crop + flip) for generator training")]
public sealed class ExtractCodesJob : IJobHandler<ExtractCodesParams>
{
    public async Task RunAsync(JobContext ctx, ExtractCodesParams p)
    {
        var data = await ctx.GetInputFileAsync("data");
        var tokPath = await ctx.GetInputFileAsync("tokenizer");
        var cfgPath = await ctx.GetInputFileAsync("tokenizer_config");
        var header = Npz.Header(data, "arr_0");
        if (header.Shape.Length != 4 || header.Shape[3] != 3 || header.Dtype.TrimStart('|', '<') != "u1")
            throw new JobFailedException($"input 'data' ({data}): arr_0 must be uint8 [N,H,W,3], got {header.Dtype} [{string.Join(",", header.Shape)}]");
        var allLabels = Npz.LoadKey(data, "labels").ToTensor().to(int64);
        long n = header.Shape[0];
        if (p.MaxImages > 0) n = Math.Min(n, p.MaxImages);
        if (allLabels.shape[0] < n) throw new JobFailedException($"input 'data': {allLabels.shape[0]} labels for {n} images");
        int views = p.TenCrop ? 10 : 1;

        var device = Devices.Resolve(ctx.Device);
        using var tok = ReTokTokenizer.FromCheckpoint(TokenizerConfig.Load(cfgPath), tokPath);
        tok.to(device).eval();
        if (p.Tokens > tok.TotalTokens) throw new JobFailedException($"tokens: {p.Tokens} is more than the tokenizer's {tok.TotalTokens} codes");

        var done = new List<Tensor>();
        long start = 0;
        if (await ctx.Checkpoints.LoadAsync() is { } ck)
        {
            var part = Npy.Load(Path.Combine(ck.Dir, "codes.npy")).ToTensor();
            if (part.shape[1] != p.Tokens || part.shape[0] != ck.Step * views)
                throw new JobFailedException($"checkpoint codes [{string.Join(",", part.shape)}] do not match step {ck.Step} x {views} views x {p.Tokens} tokens");
            done.Add(part);
            start = ck.Step;
        }

        int size = tok.Config.ImageSize, crop = p.TenCrop ? (int)(size * p.CropRange) : size;
        long sinceCkpt = 0;
        foreach (var (rowStart, chunk) in Npz.ReadRows(data, "arr_0", p.BatchSize))
        {
            if (rowStart >= n) break;
            if (rowStart + chunk.Shape[0] <= start) continue;
            var imgs = chunk.ToTensor();
            long from = Math.Max(0, start - rowStart), to = Math.Min(chunk.Shape[0], n - rowStart);
            imgs = imgs.narrow(0, from, to - from);
            using (var scope = NewDisposeScope())
            {
                var x = Prepare(imgs, crop);
                var codes = p.TenCrop
                    ? CodeExtraction.ExtractCodes(x, v => tok.Encode(v), tenCrop: true, size: size, keep: p.Tokens)
                    : tok.Encode(CenterView(x, size)).narrow(1, 0, p.Tokens).unsqueeze(1);
                done.Add(codes.reshape(-1, p.Tokens).to(int64).cpu().MoveToOuterDisposeScope());
            }
            long now = rowStart + to;
            sinceCkpt += to - from;
            ctx.ReportProgress(now, n, $"encoded {now}/{n} images ({views} views each)");
            if (ctx.CancellationToken.IsCancellationRequested || (sinceCkpt >= p.ChunkImages && now < n))
            {
                var sofar = cat(done, 0);
                done = new List<Tensor> { sofar };
                await ctx.Checkpoints.SaveAsync(now, dir => { Npy.Save(Path.Combine(dir, "codes.npy"), sofar); return Task.CompletedTask; });
                sinceCkpt = 0;
                ctx.ThrowIfCancellationRequested();
            }
        }

        var all = done.Count > 0 ? cat(done, 0) : zeros(0, p.Tokens, int64);
        if (all.shape[0] != n * views) throw new JobFailedException($"internal: {all.shape[0]} code rows for {n} images x {views} views");
        var labels = allLabels.narrow(0, 0, n).repeat_interleave(views);
        var outPath = Path.Combine(ctx.ScratchDir, "codes.npz");
        // image_index: which dataset image each row is a view of, so a held-out split never shares an image with training
        var imageIndex = arange(n, dtype: int64).repeat_interleave(views);
        Npz.Save(outPath, new Dictionary<string, NpyArray>
        {
            ["codes"] = NpyArray.FromTensor(all), ["labels"] = NpyArray.FromTensor(labels), ["image_index"] = NpyArray.FromTensor(imageIndex),
        });
        await ctx.SaveArtifactFileAsync("codes.npz", outPath, "npz", metadata: new { images = n, views, tokens = p.Tokens, ten_crop = p.TenCrop });
        ctx.Log($"codes.npz: {all.shape[0]} rows ({n} images x {views} views) of {p.Tokens} codes");
    }

    /// <summary>uint8 (B,H,W,3) -> ADM center_crop_arr to crop x crop (uint8, NHWC).</summary>
    static Tensor Prepare(Tensor imgs, int crop)
    {
        if (imgs.shape[1] == crop && imgs.shape[2] == crop) return imgs;
        var outs = new List<Tensor>();
        for (long i = 0; i < imgs.shape[0]; i++) outs.Add(AdmCrop.CenterCropArr(RgbImage.FromTensor(imgs[i]), crop).ToTensor());
        return stack(outs, 0);
    }

    /// <summary>The size x size center of uint8 NHWC, as NCHW floats in [-1,1].</summary>
    static Tensor CenterView(Tensor x, int size)
    {
        long h = x.shape[1], w = x.shape[2];
        var c = x.narrow(1, (h - size) / 2, size).narrow(2, (w - size) / 2, size).permute(0, 3, 1, 2);
        return (c.to_type(float32) / 255f - 0.5f) / 0.5f;
    }
}

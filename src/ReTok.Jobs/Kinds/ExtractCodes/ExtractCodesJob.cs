using ReTok.Engine;
using ReTok.Evaluation.Images;
using ReTok.Models;
using ReTok.Models.Generation;
using ReTok.Models.IO;
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
    /// <summary>
    /// Read the source images directly (an image folder in ImageNet layout, labels from the sorted class folders as
    /// torchvision ImageFolder gives them, listing order) instead of the input `data`: no extraction at the crop size is
    /// stored (ImageNet train at 281 px would be 300 GB). An undecodable file fails the run, naming it.
    /// </summary>
    [DataPath] public string? Source { get; init; }
    /// <summary>Decode threads for `source`; 0 = all cores.</summary>
    public int Workers { get; init; }
    /// <summary>Test hook: sleep this long after each batch (kill-and-resume tests need a run that lasts; the codes do not change).</summary>
    public int DebugBatchDelayMs { get; init; }

    public IEnumerable<string> Validate()
    {
        if (Tokens < 1) yield return $"tokens: must be >= 1, got {Tokens}";
        if (BatchSize < 1) yield return $"batch_size: must be >= 1, got {BatchSize}";
        if (ChunkImages < 1) yield return $"chunk_images: must be >= 1, got {ChunkImages}";
        if (CropRange < 1) yield return $"crop_range: must be >= 1, got {CropRange}";
        if (MaxImages < 0) yield return $"max_images: must be >= 0, got {MaxImages}";
        if (Workers < 0) yield return $"workers: must be >= 0, got {Workers}";
        if (DebugBatchDelayMs < 0) yield return $"debug_batch_delay_ms: must be >= 0, got {DebugBatchDelayMs}";
        if (Source is not null && string.IsNullOrWhiteSpace(Source)) yield return "source: must name a folder of images";
    }
}

/// <summary>
/// extract_codes_c2i.py as a job: dataset.npz (arr_0 uint8 [N,S,S,3], labels) -> codes.npz with codes int64
/// [N*views, tokens] (views of image i are rows i*views..i*views+views-1, torchvision TenCrop order) and labels [N*views].
/// The reference crops the original images: center_crop_arr(img, S) with S = int(image_size * crop_range) (281 at 256 px)
/// for ten-crop, S = image_size otherwise. So the job reads the source images (params.source) or an extraction of them at
/// exactly S (input `data` from `extract-dataset` with image_size S); any other size is refused, since re-cropping an
/// extraction (e.g. 256 -> 281, an upscale) is not the reference's crop. Checkpoints the codes done so far every
/// chunk_images images and resumes from there.
/// </summary>
[JobKind("extract-codes", Queue = "gpu", Description = "tokenizer codes of a dataset (ten-crop + flip) for generator training")]
public sealed class ExtractCodesJob : IJobHandler<ExtractCodesParams>
{
    public async Task RunAsync(JobContext ctx, ExtractCodesParams p)
    {
        bool fromSource = p.Source is not null;
        if (fromSource == ctx.InputRoles.Contains("data"))
            throw new JobFailedException("give exactly one of the input 'data' (a dataset.npz) and params.source (a folder of source images)");
        var tokPath = await ctx.GetInputFileAsync("tokenizer");
        var cfgPath = await ctx.GetInputFileAsync("tokenizer_config");
        var tcfg = TokenizerConfig.Load(cfgPath);
        int size = tcfg.ImageSize, crop = p.TenCrop ? (int)(size * p.CropRange) : size;
        int views = p.TenCrop ? 10 : 1;

        // rows: (first row, uint8 [B,crop,crop,3]) from `start` on; labels of the first n images
        long n;
        long[] labelsOf;
        Func<long, IEnumerable<(long Row, Tensor Images)>> rows;
        if (fromSource)
        {
            var sel = DatasetExtractor.Select(new DatasetExtractOptions { Source = p.Source!, ImageSize = crop, Shuffle = false });
            n = p.MaxImages > 0 ? Math.Min(sel.Images.Count, p.MaxImages) : sel.Images.Count;
            labelsOf = sel.Images.Take((int)n).Select(i => (long)i.Label).ToArray();
            int threads = p.Workers > 0 ? p.Workers : Environment.ProcessorCount;
            rows = start => Decode(sel, start, n, crop, threads, p.BatchSize, ctx.CancellationToken);
            ctx.Log($"source {sel.Layout}: {sel.Images.Count} images in {sel.ClassNames.Count} classes ({sel.LabelSource}); center_crop_arr to {crop} px");
        }
        else
        {
            var data = await ctx.GetInputFileAsync("data");
            var header = Npz.Header(data, "arr_0");
            if (header.Shape.Length != 4 || header.Shape[3] != 3 || header.Dtype.TrimStart('|', '<') != "u1")
                throw new JobFailedException($"input 'data' ({data}): arr_0 must be uint8 [N,H,W,3], got {header.Dtype} [{string.Join(",", header.Shape)}]");
            if (header.Shape[1] != crop || header.Shape[2] != crop)
                throw new JobFailedException(p.TenCrop
                    ? $"input 'data' ({Path.GetFileName(data)}) holds {header.Shape[1]}x{header.Shape[2]} images, but ten-crop with crop_range {p.CropRange} " +
                      $"needs the ADM center crop of the source images at {crop}x{crop} (int({size} * {p.CropRange})), as extract_codes_c2i.py crops the " +
                      $"original files: give params.source (the image folder) or extract the dataset with image_size: {crop}; re-cropping a " +
                      $"{header.Shape[1]} px extraction would resample it"
                    : $"input 'data' ({Path.GetFileName(data)}) holds {header.Shape[1]}x{header.Shape[2]} images, but the tokenizer encodes {size}x{size}: " +
                      $"give params.source or extract the dataset with image_size: {size}");
            var allLabels = Npz.LoadKey(data, "labels").As<long>();
            n = header.Shape[0];
            if (p.MaxImages > 0) n = Math.Min(n, p.MaxImages);
            if (allLabels.Length < n) throw new JobFailedException($"input 'data': {allLabels.Length} labels for {n} images");
            labelsOf = allLabels[..(int)n];
            rows = start => Npz.ReadRows(data, "arr_0", p.BatchSize, fromRow: start)
                .TakeWhile(r => r.Item1 < n)
                .Where(r => r.Item1 + r.Item2.Shape[0] > start)
                .Select(r =>
                {
                    long from = Math.Max(0, start - r.Item1), to = Math.Min(r.Item2.Shape[0], n - r.Item1);
                    return (r.Item1 + from, r.Item2.ToTensor().narrow(0, from, to - from));
                });
        }

        var device = Devices.Resolve(ctx.Device);
        using var tok = ReTokTokenizer.FromCheckpoint(tcfg, tokPath);
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
            ctx.Log($"resuming at image {start}/{n} ({part.shape[0]} code rows from the checkpoint)");
        }

        long sinceCkpt = 0;
        foreach (var (row, imgs) in rows(start))
        {
            using (var scope = NewDisposeScope())
            {
                var codes = p.TenCrop
                    ? CodeExtraction.ExtractCodes(imgs, v => tok.Encode(v), tenCrop: true, size: size, keep: p.Tokens)
                    : tok.Encode(ToModelInput(imgs)).narrow(1, 0, p.Tokens).unsqueeze(1);
                done.Add(codes.reshape(-1, p.Tokens).to(int64).cpu().MoveToOuterDisposeScope());
            }
            long now = row + imgs.shape[0];
            sinceCkpt += imgs.shape[0];
            imgs.Dispose();
            ctx.ReportProgress(now, n, $"encoded {now}/{n} images ({views} views each)");
            if (p.DebugBatchDelayMs > 0) await Task.Delay(p.DebugBatchDelayMs);
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
        var labels = tensor(labelsOf).repeat_interleave(views);
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

    /// <summary>Source images [start, n) decoded and center_crop_arr'd in batches (ExtractDataset's decoder: PIL-exact).</summary>
    static IEnumerable<(long Row, Tensor Images)> Decode(DatasetSelection sel, long start, long n, int crop, int threads, int batch, CancellationToken ct)
    {
        for (long at = start; at < n; at += batch)
        {
            int count = (int)Math.Min(batch, n - at);
            var chunk = DatasetExtractor.ProcessChunk(sel.Images, (int)at, count, crop, threads, ct);
            if (chunk.Failed.Count > 0)
                throw new JobFailedException($"source image {chunk.Failed[0].File} (position {chunk.Failed[0].Position}) cannot be decoded: {chunk.Failed[0].Reason}");
            yield return (at, tensor(chunk.Pixels, new long[] { count, crop, crop, 3 }, ScalarType.Byte));
        }
    }

    /// <summary>uint8 NHWC -> NCHW floats in [-1,1] (ToTensor then Normalize(0.5, 0.5)).</summary>
    static Tensor ToModelInput(Tensor x) => (x.permute(0, 3, 1, 2).to_type(float32) / 255f - 0.5f) / 0.5f;
}

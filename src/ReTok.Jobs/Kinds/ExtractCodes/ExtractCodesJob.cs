using System.Text;
using System.Text.Json;
using ReTok.Engine;
using ReTok.Evaluation.Images;
using ReTok.Jobs.Kinds.Shared;
using ReTok.Models;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using ReTok.Tracking;
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
    /// <summary>
    /// Shards (runs) the images are split over, as sample-gfid's: give the number of GPU (or CPU) worker slots. Shard k
    /// encodes batches [k*B/S, (k+1)*B/S) of the B batches of batch_size images (S = min(num_shards, B)), with its own
    /// checkpoints; extract-codes-aggregate concatenates them into the codes.npz a single run writes.
    /// </summary>
    public int NumShards { get; init; } = 1;
    /// <summary>With num_shards > 1: free the storage of the shards' parts once codes.npz is registered (else it holds the codes twice).</summary>
    public bool ReleaseParts { get; init; } = true;
    /// <summary>Test hook: sleep this long after each batch (kill-and-resume tests need a run that lasts; the codes do not change).</summary>
    public int DebugBatchDelayMs { get; init; }

    public IEnumerable<string> Validate()
    {
        if (Tokens < 1) yield return $"tokens: must be >= 1, got {Tokens}";
        if (BatchSize < 1) yield return $"batch_size: must be >= 1, got {BatchSize}";
        if (ChunkImages < 1) yield return $"chunk_images: must be >= 1, got {ChunkImages}";
        if (CropRange < 1) yield return $"crop_range: must be >= 1, got {CropRange}";
        if (MaxImages < 0) yield return $"max_images: must be >= 0, got {MaxImages}";
        if (NumShards < 1) yield return $"num_shards: must be >= 1, got {NumShards}";
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
/// chunk_images images and resumes from there. With num_shards &gt; 1 it fans out: shard k encodes its range of images
/// (whole batches of the single run's batch grid) with its own checkpoints and stores the rows as a checkpoint part, and
/// extract-codes-aggregate concatenates the parts in image order into the codes.npz a single run writes.
/// </summary>
[JobKind("extract-codes", Queue = "gpu", Description = "tokenizer codes of a dataset (ten-crop + flip) for generator training")]
public sealed class ExtractCodesJob : IFanOutJob<ExtractCodesParams>
{
    /// <summary>The aggregator's state: the run's image count, views per image and shard count.</summary>
    public sealed record FanIn
    {
        public long Count { get; init; }
        public int Views { get; init; }
        public int Shards { get; init; }
    }

    /// <summary>The images to encode: the first N of `data` or `source`, their labels, and batches of them from a row on.</summary>
    sealed record Images(long N, long[] Labels, int Size, int Crop, int Views, Func<long, long, IEnumerable<(long Row, Tensor Images)>> Rows);

    public async Task RunAsync(JobContext ctx, ExtractCodesParams p)
    {
        var img = await OpenAsync(ctx, p);
        if (p.NumShards > 1)
        {
            var ranges = BatchShards.Split(img.N, p.BatchSize, p.NumShards);
            await ctx.SpawnShardsAsync(ranges.Cast<object>().ToList(), new FanIn { Count = img.N, Views = img.Views, Shards = ranges.Count });
            return;
        }
        var all = await EncodeAsync(ctx, p, img, 0, img.N);
        var outPath = Path.Combine(ctx.ScratchDir, "codes.npz");
        SaveCodes(outPath, all, img.Labels, 0, img.Views);
        await SaveOutputAsync(ctx, p, outPath, img.N, img.Views, all.shape[0]);
    }

    /// <summary>One shard: encodes images [start, end) (resumable like a single run) into the part codes_START.npz, listed in parts.json.</summary>
    public async Task RunShardAsync(JobContext ctx, ExtractCodesParams p)
    {
        var range = ctx.GetFanOutState<RowRange>();
        var img = await OpenAsync(ctx, p);
        if (range.Start < 0 || range.End > img.N || range.Start > range.End)
            throw new JobFailedException($"shard range [{range.Start}, {range.End}) is outside the {img.N} images");
        var codes = await EncodeAsync(ctx, p, img, range.Start, range.End);
        var name = $"codes_{range.Start:D10}.npz";
        var path = Path.Combine(ctx.ScratchDir, name);
        SaveCodes(path, codes, img.Labels[(int)range.Start..(int)range.End], range.Start, img.Views);
        await ctx.Checkpoints.SavePartAsync(name, path);
        var json = JsonSerializer.Serialize(new { start = range.Start, end = range.End, parts = new[] { name } });
        await ctx.SaveArtifactAsync("parts.json", new MemoryStream(Encoding.UTF8.GetBytes(json)), "json", overwrite: true);
        ctx.Log($"{name}: {codes.shape[0]} rows (images {range.Start}..{range.End - 1} x {img.Views} views)");
    }

    /// <summary>The fan-in: the shards' parts in shard (= image) order, concatenated into the single run's codes.npz.</summary>
    public async Task AggregateAsync(JobContext ctx, ExtractCodesParams p)
    {
        var fan = ctx.GetFanOutState<FanIn>();
        var shards = await ctx.GetShardsAsync();
        if (shards.Count != fan.Shards) throw new JobFailedException($"expected {fan.Shards} shards, found {shards.Count}");
        var dir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "parts")).FullName;
        var listed = new List<(Run Shard, List<string> Names)>();
        foreach (var sh in shards)
        {
            var file = await ctx.GetRunArtifactFileAsync(sh.Id, "parts.json", $"shard-{sh.ShardIndex}");
            listed.Add((sh, JsonDocument.Parse(await File.ReadAllTextAsync(file)).RootElement.GetProperty("parts").EnumerateArray().Select(e => e.GetString()!).ToList()));
        }
        // done before (codes.npz registered, then the worker died): the parts may be released already, so only release
        if (await ctx.Checkpoints.LoadStateAsync<AggregateState>() is not { Done: true })
        {
            await ConcatenateAsync(ctx, p, fan, listed, dir);
            await ctx.Checkpoints.SaveStateAsync(fan.Count, new AggregateState { Done = true });
        }
        if (p.ReleaseParts)
            foreach (var (sh, names) in listed) await ctx.Checkpoints.ReleasePartsAsync(names, sh.Id);
    }

    sealed record AggregateState
    {
        public bool Done { get; init; }
    }

    static async Task ConcatenateAsync(JobContext ctx, ExtractCodesParams p, FanIn fan, List<(Run Shard, List<string> Names)> listed, string dir)
    {
        var keys = new[] { "codes", "labels", "image_index" };
        var cols = keys.ToDictionary(k => k, _ => new List<Tensor>());
        long next = 0;
        foreach (var (sh, names) in listed)
        {
            foreach (var n in names)
            {
                var part = Npz.Load(await ctx.Checkpoints.FetchPartAsync(sh.Id, n, dir));
                var index = part["image_index"].As<long>();
                // parts must tile [0, Count) in order, views rows per image
                if (index.Length > 0 && index[0] != next)
                    throw new JobFailedException($"shard {sh.ShardIndex} (run {sh.Id}) part {n} starts at image {index[0]}, expected {next}");
                next += index.Length / Math.Max(1, fan.Views);
                foreach (var k in keys) cols[k].Add(part[k].ToTensor());
            }
        }
        if (next != fan.Count) throw new JobFailedException($"the shards' parts hold {next} images, expected {fan.Count}");
        var outPath = Path.Combine(ctx.ScratchDir, "codes.npz");
        var arrays = keys.ToDictionary(k => k, k => NpyArray.FromTensor(cols[k].Count > 0 ? cat(cols[k], 0) : zeros(k == "codes" ? new long[] { 0, p.Tokens } : new long[] { 0 }, int64)));
        Npz.Save(outPath, arrays);
        await SaveOutputAsync(ctx, p, outPath, fan.Count, fan.Views, arrays["codes"].Shape[0]);
    }

    static async Task SaveOutputAsync(JobContext ctx, ExtractCodesParams p, string path, long n, int views, long rows)
    {
        await ctx.SaveArtifactFileAsync("codes.npz", path, "npz", metadata: new { images = n, views, tokens = p.Tokens, ten_crop = p.TenCrop });
        ctx.Log($"codes.npz: {rows} rows ({n} images x {views} views) of {p.Tokens} codes");
    }

    /// <summary>codes.npz of images [first, first + codes/views): codes, labels (one per image, repeated per view), image_index.</summary>
    static void SaveCodes(string path, Tensor codes, long[] labels, long first, int views)
    {
        // image_index: which dataset image each row is a view of, so a held-out split never shares an image with training
        var imageIndex = arange(first, first + labels.Length, dtype: int64).repeat_interleave(views);
        Npz.Save(path, new Dictionary<string, NpyArray>
        {
            ["codes"] = NpyArray.FromTensor(codes), ["labels"] = NpyArray.FromTensor(tensor(labels).repeat_interleave(views)),
            ["image_index"] = NpyArray.FromTensor(imageIndex),
        });
    }

    static async Task<Images> OpenAsync(JobContext ctx, ExtractCodesParams p)
    {
        bool fromSource = p.Source is not null;
        if (fromSource == ctx.InputRoles.Contains("data"))
            throw new JobFailedException("give exactly one of the input 'data' (a dataset.npz) and params.source (a folder of source images)");
        var cfgPath = await ctx.GetInputFileAsync("tokenizer_config");
        var tcfg = TokenizerConfig.Load(cfgPath);
        int size = tcfg.ImageSize, crop = p.TenCrop ? (int)(size * p.CropRange) : size;
        int views = p.TenCrop ? 10 : 1;

        if (fromSource)
        {
            var sel = DatasetExtractor.Select(new DatasetExtractOptions { Source = p.Source!, ImageSize = crop, Shuffle = false });
            long count = p.MaxImages > 0 ? Math.Min(sel.Images.Count, p.MaxImages) : sel.Images.Count;
            int threads = p.Workers > 0 ? p.Workers : Environment.ProcessorCount;
            ctx.Log($"source {sel.Layout}: {sel.Images.Count} images in {sel.ClassNames.Count} classes ({sel.LabelSource}); center_crop_arr to {crop} px");
            return new Images(count, sel.Images.Take((int)count).Select(i => (long)i.Label).ToArray(), size, crop, views,
                (start, end) => Decode(sel, start, end, crop, threads, p.BatchSize, ctx.CancellationToken));
        }
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
        long n = header.Shape[0];
        if (p.MaxImages > 0) n = Math.Min(n, p.MaxImages);
        if (allLabels.Length < n) throw new JobFailedException($"input 'data': {allLabels.Length} labels for {n} images");
        return new Images(n, allLabels[..(int)n], size, crop, views, (start, end) => Npz.ReadRows(data, "arr_0", p.BatchSize, fromRow: start)
            .TakeWhile(r => r.Item1 < end)
            .Where(r => r.Item1 + r.Item2.Shape[0] > start)
            .Select(r =>
            {
                long from = Math.Max(0, start - r.Item1), to = Math.Min(r.Item2.Shape[0], end - r.Item1);
                return (r.Item1 + from, r.Item2.ToTensor().narrow(0, from, to - from));
            }));
    }

    /// <summary>
    /// Codes int64 [(end-start)*views, tokens] of images [start, end), resuming from this run's checkpoint (step = the
    /// absolute image reached) and checkpointing every chunk_images images.
    /// </summary>
    static async Task<Tensor> EncodeAsync(JobContext ctx, ExtractCodesParams p, Images img, long first, long end)
    {
        var tokPath = await ctx.GetInputFileAsync("tokenizer");
        var tcfg = TokenizerConfig.Load(await ctx.GetInputFileAsync("tokenizer_config"));
        int views = img.Views;
        var device = Devices.Resolve(ctx.Device);
        using var tok = ReTokTokenizer.FromCheckpoint(tcfg, tokPath);
        tok.to(device).eval();
        if (p.Tokens > tok.TotalTokens) throw new JobFailedException($"tokens: {p.Tokens} is more than the tokenizer's {tok.TotalTokens} codes");

        var done = new List<Tensor>();
        long start = first;
        if (await ctx.Checkpoints.LoadAsync() is { } ck)
        {
            var part = Npy.Load(Path.Combine(ck.Dir, "codes.npy")).ToTensor();
            if (ck.Step < first || ck.Step > end || part.shape[1] != p.Tokens || part.shape[0] != (ck.Step - first) * views)
                throw new JobFailedException($"checkpoint codes [{string.Join(",", part.shape)}] do not match step {ck.Step} of images {first}..{end} x {views} views x {p.Tokens} tokens");
            done.Add(part);
            start = ck.Step;
            ctx.Log(first == 0 && end == img.N ? $"resuming at image {start}/{end} ({part.shape[0]} code rows from the checkpoint)"
                                               : $"resuming at image {start}/{end} of {first}..{end - 1} ({part.shape[0]} code rows from the checkpoint)");
        }

        long sinceCkpt = 0;
        foreach (var (row, imgs) in img.Rows(start, end))
        {
            using (var scope = NewDisposeScope())
            {
                var codes = p.TenCrop
                    ? CodeExtraction.ExtractCodes(imgs, v => tok.Encode(v), tenCrop: true, size: img.Size, keep: p.Tokens)
                    : tok.Encode(ToModelInput(imgs)).narrow(1, 0, p.Tokens).unsqueeze(1);
                done.Add(codes.reshape(-1, p.Tokens).to(int64).cpu().MoveToOuterDisposeScope());
            }
            long now = row + imgs.shape[0];
            sinceCkpt += imgs.shape[0];
            imgs.Dispose();
            ctx.ReportProgress(now - first, end - first, $"encoded {now - first}/{end - first} images ({views} views each)");
            if (p.DebugBatchDelayMs > 0) await Task.Delay(p.DebugBatchDelayMs);
            if (ctx.CancellationToken.IsCancellationRequested || (sinceCkpt >= p.ChunkImages && now < end))
            {
                var sofar = cat(done, 0);
                done = new List<Tensor> { sofar };
                await ctx.Checkpoints.SaveAsync(now, dir => { Npy.Save(Path.Combine(dir, "codes.npy"), sofar); return Task.CompletedTask; });
                sinceCkpt = 0;
                ctx.ThrowIfCancellationRequested();
            }
        }

        var all = done.Count > 0 ? cat(done, 0) : zeros(0, p.Tokens, int64);
        if (all.shape[0] != (end - first) * views) throw new JobFailedException($"internal: {all.shape[0]} code rows for {end - first} images x {views} views");
        return all;
    }

    /// <summary>Source images [start, end) decoded and center_crop_arr'd in batches (ExtractDataset's decoder: PIL-exact).</summary>
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

using System.Diagnostics;
using System.Text.Json;
using ReTok.Engine;
using ReTok.Evaluation.Images;
using ReTok.Models.IO;

namespace ReTok.Jobs.Kinds.ExtractDataset;

/// <summary>Parameters of extract-dataset (val_ddp.py's extraction, evaluation.md §1).</summary>
public sealed record ExtractDatasetParams : IValidatableParams
{
    /// <summary>Folder on the worker: class sub-folders (ImageNet layout), a flat ILSVRC2012 val folder, or any image folder.</summary>
    [DataPath] public required string Source { get; init; }
    /// <summary>auto: ilsvrc_val when val_labels is given, else image_folder (which falls back to flat when there are no class sub-folders).</summary>
    public DatasetLayout Layout { get; init; } = DatasetLayout.Auto;
    /// <summary>Labels of a flat ILSVRC2012 val folder: the devkit's ILSVRC2012_validation_ground_truth.txt, or LOC_val_solution.csv.</summary>
    [DataPath] public string? ValLabels { get; init; }
    /// <summary>The devkit's data/meta.mat: maps ILSVRC2012_IDs to WordNet ids so labels follow ImageFolder's sorted-WNID order.</summary>
    [DataPath] public string? DevkitMeta { get; init; }
    /// <summary>ADM centre-crop size (val_ddp.py allows 256 and 512).</summary>
    public int ImageSize { get; init; } = 256;
    /// <summary>Seeded shuffle of the npz order (the reference shuffles unseeded "for IS"); false keeps listing order.</summary>
    public bool Shuffle { get; init; } = true;
    public int Seed { get; init; }
    /// <summary>Keep only the first N images (after per_class and the shuffle).</summary>
    public int? Limit { get; init; }
    /// <summary>Keep only the first M images of each class (listing order, before the shuffle).</summary>
    public int? PerClass { get; init; }
    /// <summary>Also store the crops as {index:06d}.png (row index of dataset.npz) in the artifact pngs.tar.</summary>
    public bool SavePngs { get; init; }
    public OnCorrupt OnCorrupt { get; init; } = OnCorrupt.Fail;
    /// <summary>Images per chunk; every chunk is checkpointed (one npz part plus the state).</summary>
    public int ChunkSize { get; init; } = 500;
    /// <summary>Images shown in preview.png (8 per row).</summary>
    public int PreviewImages { get; init; } = 32;
    /// <summary>Decode threads; 0 = all cores.</summary>
    public int Workers { get; init; }
    /// <summary>Pause after each chunk (ms): for demos and resume tests, 0 otherwise.</summary>
    public int ThrottleMs { get; init; }

    /// <summary>The extraction part of these params, for <see cref="DatasetExtractor"/>.</summary>
    public static implicit operator DatasetExtractOptions(ExtractDatasetParams p) => new()
    {
        Source = p.Source, Layout = p.Layout, ValLabels = p.ValLabels, DevkitMeta = p.DevkitMeta, ImageSize = p.ImageSize, Shuffle = p.Shuffle,
        Seed = p.Seed, Limit = p.Limit, PerClass = p.PerClass, OnCorrupt = p.OnCorrupt, ChunkSize = p.ChunkSize, Workers = p.Workers,
    };

    public IEnumerable<string> Validate()
    {
        if (string.IsNullOrWhiteSpace(Source)) yield return "source: must name a folder";
        if (ImageSize is < 8 or > 4096) yield return $"image_size: must be 8..4096, got {ImageSize}";
        if (Limit is < 1) yield return $"limit: must be >= 1, got {Limit}";
        if (PerClass is < 1) yield return $"per_class: must be >= 1, got {PerClass}";
        if (ChunkSize < 1) yield return $"chunk_size: must be >= 1, got {ChunkSize}";
        if (PreviewImages < 1) yield return $"preview_images: must be >= 1, got {PreviewImages}";
        if (Workers < 0) yield return $"workers: must be >= 0, got {Workers}";
        if (ThrottleMs < 0) yield return $"throttle_ms: must be >= 0, got {ThrottleMs}";
        if (Layout == DatasetLayout.IlsvrcVal && ValLabels is null) yield return "val_labels: layout ilsvrc_val needs the devkit's ground-truth file";
        if (DevkitMeta is not null && ValLabels is null) yield return "devkit_meta: only used with val_labels";
    }
}

/// <summary>Resume state (checkpoints/latest/state.json).</summary>
public sealed record ExtractState
{
    public string OrderSha256 { get; init; } = "";
    /// <summary>Selection positions [0, next) are done.</summary>
    public int Next { get; init; }
    public List<string> Parts { get; init; } = new();
    public List<SkippedImage> Skipped { get; init; } = new();
    /// <summary>The outputs are registered; only releasing the parts may be left.</summary>
    public bool Done { get; init; }
}

/// <summary>
/// Extracts an evaluation/training set: ADM centre crops (Pillow-exact) of an image folder into dataset.npz
/// (arr_0 uint8 [N,S,S,3], labels int64 [N]) in a seeded order, plus preview.png, class_names.json,
/// extract_report.json and optionally pngs.tar. Chunked and resumable: every chunk is checkpointed as an npz part and
/// the outputs are registered only once everything is done, so a failed or cancelled run registers no partial output.
/// </summary>
[JobKind("extract-dataset", Queue = "cpu", MaxAttempts = 3, Description = "ADM centre-crop an image folder into dataset.npz (+ preview, class names)")]
public sealed class ExtractDatasetJob : IJobHandler<ExtractDatasetParams>
{
    public async Task RunAsync(JobContext ctx, ExtractDatasetParams p)
    {
        var sel = DatasetExtractor.Select(p);
        int total = sel.Images.Count, size = p.ImageSize;
        var partsDir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "parts")).FullName;

        var state = await ctx.Checkpoints.LoadStateAsync<ExtractState>() ?? new ExtractState { OrderSha256 = sel.OrderSha256 };
        if (state.OrderSha256 != sel.OrderSha256)
            throw new JobFailedException($"source {p.Source} lists different images than when this run started (selection hash {sel.OrderSha256[..12]} vs {state.OrderSha256[..12]}); submit a new run");
        if (state.Done)
        {
            await ctx.Checkpoints.ReleasePartsAsync(state.Parts);
            return;
        }
        ctx.Log(state.Next == 0
            ? $"extracting {total} images from {p.Source} ({sel.Layout}; labels: {sel.LabelSource}; {sel.ClassNames.Count} classes) to {size}x{size}, chunks of {p.ChunkSize}, on_corrupt {p.OnCorrupt.ToString().ToLowerInvariant()}"
            : $"resuming at image {state.Next}/{total} ({state.Parts.Count} parts done, {state.Skipped.Count} skipped)");

        var local = new Dictionary<string, string>();
        var sw = Stopwatch.StartNew();
        int startedAt = state.Next;
        try
        {
            foreach (var chunk in DatasetExtractor.ExtractChunks(sel, p, state.Next, partsDir, ctx.CancellationToken))
            {
                foreach (var f in chunk.Failed) ctx.Log($"skipped {f.File}: {f.Reason}", "warn");
                var skipped = state.Skipped.Concat(chunk.Failed).ToList();
                var parts = state.Parts.ToList();
                if (chunk.Part is { } path)
                {
                    var name = Path.GetFileName(path);
                    await ctx.Checkpoints.SavePartAsync(name, path);
                    local[name] = path;
                    parts.Add(name);
                }
                state = state with { Next = chunk.Next, Parts = parts, Skipped = skipped };
                await ctx.Checkpoints.SaveStateAsync(state.Next, state);
                double rate = (state.Next - startedAt) / Math.Max(1e-3, sw.Elapsed.TotalSeconds);
                ctx.ReportProgress(state.Next, total, $"{state.Next}/{total} images ({rate:F1} img/s){(skipped.Count > 0 ? $", {skipped.Count} skipped" : "")}");
                if (p.ThrottleMs > 0 && state.Next < total) await Task.Delay(p.ThrottleMs, ctx.CancellationToken);
            }
        }
        catch (CorruptImageException e)
        {
            throw new JobFailedException($"{e.Message} (on_corrupt: fail; set on_corrupt: skip to leave such images out and count them)", e);
        }
        double imagesPerS = (state.Next - startedAt) / Math.Max(1e-3, sw.Elapsed.TotalSeconds);

        // Everything below only assembles what the chunks produced; outputs are registered together at the end.
        var partFiles = new List<string>();
        foreach (var name in state.Parts)
            partFiles.Add(local.TryGetValue(name, out var lp) ? lp : await ctx.Checkpoints.FetchPartAsync(ctx.RunId, name, partsDir));
        long count = partFiles.Sum(f => Npz.Header(f, "labels").Shape[0]);
        if (count == 0) throw new JobFailedException($"no image of {p.Source} could be decoded ({state.Skipped.Count} skipped); nothing to write");

        var outDir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "out")).FullName;
        var npz = Path.Combine(outDir, "dataset.npz");
        ctx.ReportProgress(total, total, $"writing dataset.npz ({count} images)");
        DatasetExtractor.Assemble(partFiles, npz, size);

        var preview = Path.Combine(outDir, "preview.png");
        using (var first = Npz.ReadRows(npz, "arr_0", Math.Min(p.PreviewImages, (int)count)).First().Chunk.ToTensor())
            ImageGrid.Save(preview, first, nrow: 8);
        var classNames = Path.Combine(outDir, "class_names.json");
        await File.WriteAllTextAsync(classNames, JsonSerializer.Serialize(sel.ClassNames, new JsonSerializerOptions { WriteIndented = true }));
        var report = Path.Combine(outDir, "extract_report.json");
        await File.WriteAllTextAsync(report, JsonSerializer.Serialize(new
        {
            source = Path.GetFullPath(p.Source), layout = sel.Layout, label_source = sel.LabelSource, image_size = size,
            images = count, selected = total, classes = sel.ClassNames.Count, shuffle = p.Shuffle, seed = p.Seed,
            limit = p.Limit, per_class = p.PerClass, on_corrupt = p.OnCorrupt.ToString().ToLowerInvariant(),
            order_sha256 = sel.OrderSha256, skipped_count = state.Skipped.Count,
            skipped = state.Skipped.Select(s => new { position = s.Position, file = s.File, reason = s.Reason }),
        }, new JsonSerializerOptions { WriteIndented = true }));
        string? pngTar = null;
        if (p.SavePngs)
        {
            pngTar = Path.Combine(outDir, "pngs.tar");
            ctx.ReportProgress(total, total, $"writing {count} PNGs");
            DatasetExtractor.WritePngTar(npz, pngTar, DatasetExtractor.Threads(p), ctx.CancellationToken);
        }

        ctx.LogMetrics(0, ("extract/images", count), ("extract/skipped", state.Skipped.Count), ("extract/images_per_s", imagesPerS));
        // One transaction for all outputs: a failure while storing them (or a kill) registers none of them.
        var outputs = new List<(string, string, string, bool, string?, object?)>
        {
            ("class_names.json", classNames, "json", true, null, null),
            ("extract_report.json", report, "json", true, null, null),
            ("preview.png", preview, "image", true, null, null),
            ("dataset.npz", npz, "npz", true, null,
                new { images = count, image_size = size, classes = sel.ClassNames.Count, skipped = state.Skipped.Count, order_sha256 = sel.OrderSha256 }),
        };
        if (pngTar is not null) outputs.Add(("pngs.tar", pngTar, "tar", true, "application/x-tar", new { images = count, names = "{row:06d}.png" }));
        await ctx.SaveArtifactFilesAsync(outputs.ToArray());
        ctx.Log($"dataset.npz: {count} images of {size}x{size}, {sel.ClassNames.Count} classes, {state.Skipped.Count} skipped; {imagesPerS:F1} img/s");
        await ctx.Checkpoints.SaveStateAsync(total, state with { Done = true });
        await ctx.Checkpoints.ReleasePartsAsync(state.Parts);
    }
}

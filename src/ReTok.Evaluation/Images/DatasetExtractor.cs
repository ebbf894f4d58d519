using System.Diagnostics;
using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using ReTok.Models.IO;
using ReTok.Models.Images;

namespace ReTok.Evaluation.Images;

public enum DatasetLayout { Auto, ImageFolder, Flat, IlsvrcVal }

/// <summary>What to do with an image that cannot be decoded (truncated, not an image, unreadable).</summary>
public enum OnCorrupt { Fail, Skip }

/// <summary>
/// What <see cref="DatasetExtractor"/> selects and how it crops: the extraction part of extract-dataset's params (the kind
/// converts its params to these; the CLI and extract-codes build them directly). Defaults are the kind's.
/// </summary>
public sealed record DatasetExtractOptions
{
    public required string Source { get; init; }
    public DatasetLayout Layout { get; init; } = DatasetLayout.Auto;
    public string? ValLabels { get; init; }
    public string? DevkitMeta { get; init; }
    public int ImageSize { get; init; } = 256;
    public bool Shuffle { get; init; } = true;
    public int Seed { get; init; }
    public int? Limit { get; init; }
    public int? PerClass { get; init; }
    public OnCorrupt OnCorrupt { get; init; } = OnCorrupt.Fail;
    public int ChunkSize { get; init; } = 500;
    /// <summary>Decode threads; 0 = all cores.</summary>
    public int Workers { get; init; }
}

/// <summary>One source image in extraction order.</summary>
public sealed record SourceImage(string Path, string RelativePath, int Label);

/// <summary>The ordered selection: images, class names (index = label), and how the labels were found.</summary>
public sealed record DatasetSelection(IReadOnlyList<SourceImage> Images, IReadOnlyList<string> ClassNames, string Layout, string LabelSource)
{
    /// <summary>sha256 over the ordered relative paths and labels: a resumed run checks it still sees the same selection.</summary>
    public string OrderSha256 { get; } = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(
        string.Join("\n", Images.Select(i => $"{i.RelativePath}\t{i.Label}")))));
}

/// <summary>An image that was left out (on_corrupt: skip): its position in the selection, file and the decoder's reason.</summary>
public sealed record SkippedImage
{
    public int Position { get; init; }
    public string File { get; init; } = "";
    public string Reason { get; init; } = "";
}

/// <summary>What one chunk produced: crops of the images that decoded, their labels and selection positions, and the failures.</summary>
public sealed record ChunkResult(byte[] Pixels, long[] Labels, long[] Positions, List<SkippedImage> Failed)
{
    public int Count => Labels.Length;
}

/// <summary>A chunk done by <see cref="DatasetExtractor.ExtractChunks"/>: selection positions [Start, Next), its npz part
/// (null when none of its images decoded) and the images left out.</summary>
public sealed record ExtractedChunk(int Start, int Next, string? Part, IReadOnlyList<SkippedImage> Failed);

/// <summary>on_corrupt: fail met an image that does not decode; the message names the file and the decoder's reason.</summary>
public sealed class CorruptImageException(SkippedImage image) : Exception($"{image.File}: {image.Reason}");

/// <summary>
/// The one folder -> npz extraction, without the engine (the extract-dataset job, `retok dataset extract` and
/// `retok eval prepare-val` all run it): listing an image folder in torchvision ImageFolder order or a flat ILSVRC2012
/// val folder with the devkit's labels, the seeded order, ADM centre crops (Pillow-exact, src/ReTok.Models/Images) of
/// a chunk in parallel, on_corrupt, and the npz layout (arr_0 uint8 [N,S,S,3], labels int64 [N]).
/// </summary>
public static class DatasetExtractor
{
    /// <summary>Lists, labels, filters (per_class), orders (seeded shuffle) and truncates (limit) the source.</summary>
    public static DatasetSelection Select(DatasetExtractOptions p)
    {
        var root = Path.GetFullPath(p.Source);
        if (!Directory.Exists(root)) throw new DirectoryNotFoundException($"source: folder {root} does not exist");
        var layout = p.Layout;
        if (layout == DatasetLayout.Auto) layout = p.ValLabels is not null ? DatasetLayout.IlsvrcVal : DatasetLayout.ImageFolder;

        List<SourceImage> images;
        List<string> classes;
        string labelSource;
        switch (layout)
        {
            case DatasetLayout.ImageFolder:
            {
                var l = ImageFolder.List(root);   // class sub-folders, or the flat fallback when there are none
                classes = l.Classes.Count > 0 ? l.Classes.ToList() : ["unlabeled"];
                images = l.Files.Select((f, i) => new SourceImage(f, Path.GetRelativePath(root, f), l.Labels[i])).ToList();
                labelSource = l.Classes.Count > 0 ? "class sub-folders (sorted by name, torchvision ImageFolder)" : "none (flat folder: every label is 0)";
                if (l.Classes.Count == 0) layout = DatasetLayout.Flat;
                break;
            }
            case DatasetLayout.Flat:
                images = FlatFiles(root).Select(f => new SourceImage(f, Path.GetFileName(f), 0)).ToList();
                classes = ["unlabeled"];
                labelSource = "none (flat folder: every label is 0)";
                break;
            case DatasetLayout.IlsvrcVal:
            {
                if (p.ValLabels is null) throw new ArgumentException("layout ilsvrc_val needs val_labels (the devkit's ILSVRC2012_validation_ground_truth.txt, or LOC_val_solution.csv)");
                var files = FlatFiles(root);
                var gt = IlsvrcLabels.Load(p.ValLabels, p.DevkitMeta);
                images = new List<SourceImage>(files.Count);
                foreach (var f in files)
                {
                    var num = IlsvrcLabels.ImageNumber(f)
                        ?? throw new InvalidDataException($"{f}: not an ILSVRC2012 val file name (ILSVRC2012_val_NNNNNNNN.JPEG); use layout: flat for other folders");
                    if (!gt.LabelOf.TryGetValue(num, out var label))
                        throw new InvalidDataException($"{f}: image {num} has no label in {p.ValLabels} ({gt.LabelOf.Count} labels)");
                    images.Add(new SourceImage(f, Path.GetFileName(f), label));
                }
                classes = gt.ClassNames.ToList();
                labelSource = gt.Description;
                break;
            }
            default: throw new ArgumentException($"layout: unknown value {layout}");
        }
        if (images.Count == 0) throw new InvalidDataException($"{root}: no images found (extensions {string.Join(" ", ImageIO.Extensions)})");

        // per_class: the first M of each class in listing order (before the shuffle, so the subset does not depend on the seed).
        if (p.PerClass is int m)
            images = images.GroupBy(i => i.Label).OrderBy(g => g.Key).SelectMany(g => g.Take(m)).ToList();
        if (p.Shuffle)
        {
            // Fisher-Yates with .NET's seeded Random (its seeded algorithm is fixed across .NET versions).
            var rng = new Random(p.Seed);
            for (int i = images.Count - 1; i > 0; i--) { int j = rng.Next(i + 1); (images[i], images[j]) = (images[j], images[i]); }
        }
        if (p.Limit is int n) images = images.Take(n).ToList();
        return new DatasetSelection(images, classes, layout.ToString(), labelSource);
    }

    static List<string> FlatFiles(string root) =>
        Directory.GetFiles(root).Where(ImageIO.IsImageFile).OrderBy(s => Path.GetFileName(s), StringComparer.Ordinal).ToList();

    /// <summary>Decode threads: <c>workers</c>, or all cores when it is 0.</summary>
    public static int Threads(DatasetExtractOptions p) => p.Workers > 0 ? p.Workers : Environment.ProcessorCount;

    /// <summary>
    /// Decodes (PIL convert('RGB') semantics: grey, palette, RGBA, CMYK are converted) and ADM-centre-crops images
    /// [offset, offset+count) of the selection in parallel. Images that fail to decode are returned in Failed; the caller
    /// applies on_corrupt.
    /// </summary>
    public static ChunkResult ProcessChunk(IReadOnlyList<SourceImage> images, int offset, int count, int size, int parallelism, CancellationToken ct)
    {
        var files = images.Skip(offset).Take(count).Select(i => i.Path).ToList();
        var (crops, errors) = ImageFolder.CenterCrops(files, size, Math.Max(1, parallelism), ct);
        int ok = crops.Count(c => c is not null), per = size * size * 3;
        var pixels = new byte[(long)ok * per];
        var labels = new long[ok];
        var positions = new long[ok];
        var failed = new List<SkippedImage>();
        for (int i = 0, k = 0; i < count; i++)
        {
            var img = images[offset + i];
            if (crops[i] is not { } crop)
            {
                var e = errors[i];
                var reason = e is null ? "unknown error" : e is InvalidDataException ? e.Message : $"{e.GetType().Name}: {e.Message}";
                failed.Add(new SkippedImage { Position = offset + i, File = img.RelativePath, Reason = reason });
                continue;
            }
            Buffer.BlockCopy(crop, 0, pixels, k * per, per);
            labels[k] = img.Label;
            positions[k] = offset + i;
            k++;
        }
        return new ChunkResult(pixels, labels, positions, failed);
    }

    /// <summary>
    /// Extracts the selection from position <paramref name="start"/> in chunks of chunk_size, one npz part per chunk
    /// (partsDir/extract_{start:D9}.npz); yields after each chunk so the caller can checkpoint, log and report. Under
    /// on_corrupt: fail the first undecodable image throws <see cref="CorruptImageException"/> before its chunk is saved.
    /// </summary>
    public static IEnumerable<ExtractedChunk> ExtractChunks(DatasetSelection sel, DatasetExtractOptions p, int start, string partsDir, CancellationToken ct)
    {
        int total = sel.Images.Count;
        for (int at = start; at < total; at += p.ChunkSize)
        {
            ct.ThrowIfCancellationRequested();
            int n = Math.Min(p.ChunkSize, total - at);
            var chunk = ProcessChunk(sel.Images, at, n, p.ImageSize, Threads(p), ct);
            if (chunk.Failed.Count > 0 && p.OnCorrupt == OnCorrupt.Fail) throw new CorruptImageException(chunk.Failed[0]);
            string? part = null;
            if (chunk.Count > 0) SavePart(part = Path.Combine(partsDir, $"extract_{at:D9}.npz"), chunk, p.ImageSize);
            yield return new ExtractedChunk(at, at + n, part, chunk.Failed);
        }
    }

    /// <summary>
    /// The whole extraction in one go, without checkpoints (the CLI commands): parts in a temp folder, then one npz.
    /// Logs skipped images and progress to <paramref name="log"/>. Returns (images, skipped, images/s).
    /// </summary>
    public static (long Images, int Skipped, double Rate) ExtractToNpz(DatasetExtractOptions p, string npzPath, TextWriter? log, CancellationToken ct)
    {
        var sel = Select(p);
        var tmp = Directory.CreateTempSubdirectory("retok-extract").FullName;
        try
        {
            var sw = Stopwatch.StartNew();
            var parts = new List<string>();
            int skipped = 0;
            foreach (var c in ExtractChunks(sel, p, 0, tmp, ct))
            {
                foreach (var f in c.Failed) log?.WriteLine($"skipped {f.File}: {f.Reason}");
                skipped += c.Failed.Count;
                if (c.Part is null) continue;
                parts.Add(c.Part);
                log?.WriteLine($"{c.Next}/{sel.Images.Count} images ({c.Next / Math.Max(1e-3, sw.Elapsed.TotalSeconds):F1} img/s)");
            }
            if (parts.Count == 0) throw new InvalidDataException($"{p.Source}: no image could be decoded ({skipped} skipped)");
            long n = Assemble(parts, npzPath, p.ImageSize);
            return (n, skipped, n / Math.Max(1e-3, sw.Elapsed.TotalSeconds));
        }
        finally { try { Directory.Delete(tmp, true); } catch { } }
    }

    /// <summary>A chunk as an npz part: arr_0 uint8 [n,S,S,3], labels int64 [n], position int64 [n] (index in the selection).</summary>
    public static void SavePart(string path, ChunkResult c, int size) => Npz.Save(path, new Dictionary<string, NpyArray>
    {
        ["arr_0"] = new("|u1", [c.Count, size, size, 3], c.Pixels),
        ["labels"] = NpyArray.Of(c.Labels, c.Count),
        ["position"] = NpyArray.Of(c.Positions, c.Count),
    });

    /// <summary>Concatenates parts (in order) into the dataset npz: arr_0 uint8 [N,S,S,3] then labels int64 [N]; returns N.</summary>
    public static long Assemble(IReadOnlyList<string> parts, string npzPath, int size)
    {
        long n = parts.Sum(p => Npz.Header(p, "labels").Shape[0]);
        using var w = new NpzStreamWriter(npzPath);
        w.BeginArray("arr_0", "|u1", [n, size, size, 3]);
        foreach (var p in parts)
        {
            var a = Npz.LoadKey(p, "arr_0");
            if (a.Shape.Length != 4 || a.Shape[1] != size || a.Shape[2] != size) throw new InvalidDataException($"part {p}: arr_0 [{string.Join(",", a.Shape)}] is not [n,{size},{size},3]");
            w.Append(a.Data);
        }
        w.BeginArray("labels", "<i8", [n]);
        foreach (var p in parts) w.Append(Npz.LoadKey(p, "labels").Data);
        w.Commit();
        return n;
    }

    /// <summary>Row k of the dataset npz as an 8-bit RGB PNG (Pillow reads it back bit-identically), in row order.</summary>
    public static IEnumerable<(long Row, byte[] Png)> Pngs(string npzPath, int parallelism, CancellationToken ct)
    {
        foreach (var (start, a) in Npz.ReadRows(npzPath, "arr_0", 256))
        {
            int n = (int)a.Shape[0], h = (int)a.Shape[1], w = (int)a.Shape[2], per = h * w * 3;
            var pngs = new byte[n][];
            Parallel.For(0, n, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, parallelism), CancellationToken = ct }, i =>
                pngs[i] = ImageIO.EncodePng(new RgbImage(w, h, a.Data.AsSpan(i * per, per).ToArray())));
            for (int i = 0; i < n; i++) yield return (start + i, pngs[i]);
        }
    }

    /// <summary>
    /// The dataset's rows as {row:06d}.png in a tar with sorted names, a fixed time and mode, so equal datasets give
    /// byte-identical tars.
    /// </summary>
    public static void WritePngTar(string npzPath, string tarPath, int parallelism, CancellationToken ct)
    {
        using var fs = new FileStream(tarPath, FileMode.Create, FileAccess.Write);
        using var tw = new TarWriter(fs, TarEntryFormat.Ustar, leaveOpen: false);
        foreach (var (row, png) in Pngs(npzPath, parallelism, ct))
            tw.WriteEntry(new UstarTarEntry(TarEntryType.RegularFile, $"{row:000000}.png")
            {
                ModificationTime = DateTimeOffset.UnixEpoch, Mode = (UnixFileMode)0b110_100_100, DataStream = new MemoryStream(png),
            });
    }
}

/// <summary>
/// Labels of the flat ILSVRC2012 validation folder. Sources: the devkit's data/ILSVRC2012_validation_ground_truth.txt
/// (line i = ILSVRC2012_ID of ILSVRC2012_val_{i:08d}.JPEG, 1-based), mapped to WordNet ids through the devkit's
/// data/meta.mat when given; or Kaggle's LOC_val_solution.csv (ImageId, "WNID x y x y ..."). With WordNet ids the
/// label is the index in the sorted WNID list, i.e. the label torchvision's ImageFolder gives the same class in the
/// train folder. Without meta.mat the label is ILSVRC2012_ID − 1 (the devkit's own class order).
/// </summary>
public sealed partial class IlsvrcLabels
{
    public required Dictionary<int, int> LabelOf { get; init; }
    public required IReadOnlyList<string> ClassNames { get; init; }
    public required string Description { get; init; }

    [GeneratedRegex(@"ILSVRC2012_val_(\d{8})", RegexOptions.IgnoreCase)]
    private static partial Regex ValName();

    public static int? ImageNumber(string path) => ValName().Match(Path.GetFileName(path)) is { Success: true } m ? int.Parse(m.Groups[1].Value) : null;

    public static IlsvrcLabels Load(string path, string? metaMat)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"val_labels: {path} does not exist", path);
        // Errors name the file and line but never quote it: val_labels may be any file a misconfigured or hostile spec
        // points at, and failure reasons are shown to every viewer.
        var lines = File.ReadAllLines(path).Select((l, i) => (Text: l.Trim(), Line: i + 1)).Where(l => l.Text.Length > 0).ToList();
        if (lines.Count > 0 && lines[0].Text.StartsWith("ImageId", StringComparison.OrdinalIgnoreCase))
        {
            var wnidOf = new Dictionary<int, string>();
            foreach (var (l, line) in lines.Skip(1))
            {
                var parts = l.Split(',', 2);
                var num = ImageNumber(parts[0]) ?? throw new InvalidDataException($"{path}:{line}: no ILSVRC2012_val_NNNNNNNN id in the first column");
                var wnid = parts.Length > 1 ? parts[1].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault() : null;
                if (wnid is null || !wnid.StartsWith('n')) throw new InvalidDataException($"{path}:{line}: no WordNet id (nXXXXXXXX) in the second column");
                wnidOf[num] = wnid;
            }
            var classes = wnidOf.Values.Distinct().Order(StringComparer.Ordinal).ToList();
            var index = classes.Select((c, i) => (c, i)).ToDictionary(x => x.c, x => x.i);
            return new IlsvrcLabels
            {
                LabelOf = wnidOf.ToDictionary(kv => kv.Key, kv => index[kv.Value]), ClassNames = classes,
                Description = $"{Path.GetFileName(path)} (WordNet ids; label = index in the sorted WNIDs, as ImageFolder)",
            };
        }
        var ids = new Dictionary<int, int>();
        for (int i = 0; i < lines.Count; i++)
        {
            if (!int.TryParse(lines[i].Text, out var id) || id < 1)
                throw new InvalidDataException($"{path}:{lines[i].Line}: expected an ILSVRC2012_ID (a positive integer) on this line ({lines[i].Text.Length} characters of something else)");
            ids[i + 1] = id;
        }
        int maxId = ids.Values.DefaultIfEmpty(0).Max();
        if (metaMat is null)
            return new IlsvrcLabels
            {
                LabelOf = ids.ToDictionary(kv => kv.Key, kv => kv.Value - 1),
                ClassNames = Enumerable.Range(1, maxId).Select(i => $"ilsvrc2012_id_{i:0000}").ToList(),
                Description = $"{Path.GetFileName(path)} (label = ILSVRC2012_ID - 1, the devkit's class order; give devkit_meta for WordNet ids in ImageFolder order)",
            };
        var synsets = DevkitMeta.Load(metaMat);
        var leaf = synsets.Where(s => s.Id >= 1 && s.Id <= 1000).ToDictionary(s => s.Id, s => s.Wnid);
        foreach (var id in ids.Values.Distinct())
            if (!leaf.ContainsKey(id)) throw new InvalidDataException($"{metaMat}: no synset with ILSVRC2012_ID {id} (used in {path})");
        var names = leaf.Values.Distinct().Order(StringComparer.Ordinal).ToList();
        var idx = names.Select((c, i) => (c, i)).ToDictionary(x => x.c, x => x.i);
        return new IlsvrcLabels
        {
            LabelOf = ids.ToDictionary(kv => kv.Key, kv => idx[leaf[kv.Value]]), ClassNames = names,
            Description = $"{Path.GetFileName(path)} + {Path.GetFileName(metaMat)} (WordNet ids; label = index in the sorted WNIDs, as ImageFolder)",
        };
    }
}

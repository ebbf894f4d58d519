using ReTok.Models.Images;
using static TorchSharp.torch;

namespace ReTok.Evaluation.Images;

/// <summary>
/// An image folder as torchvision's ImageFolder lists it (class sub-folders sorted by name, files sorted within each,
/// recursively, Python ordinal string order) or, when the root has no sub-folder with images, a flat folder of files
/// sorted by name (val_ddp's PNG folder order).
/// </summary>
public sealed record ImageFolderListing(string Root, IReadOnlyList<string> Files, IReadOnlyList<int> Labels, IReadOnlyList<string> Classes)
{
    public int Count => Files.Count;
}

public static class ImageFolder
{
    public static ImageFolderListing List(string root)
    {
        if (!Directory.Exists(root)) throw new DirectoryNotFoundException($"image folder not found: {root}");
        var classes = Directory.GetDirectories(root).Select(Path.GetFileName).OfType<string>().OrderBy(s => s, StringComparer.Ordinal).ToList();
        var files = new List<string>(); var labels = new List<int>();
        var used = new List<string>();
        foreach (var c in classes)
        {
            var cf = Walk(Path.Combine(root, c)).ToList();
            if (cf.Count == 0) continue;
            int label = used.Count; used.Add(c);
            files.AddRange(cf); labels.AddRange(Enumerable.Repeat(label, cf.Count));
        }
        if (files.Count == 0)
        {
            files = Directory.GetFiles(root).Where(ImageIO.IsImageFile).OrderBy(s => Path.GetFileName(s), StringComparer.Ordinal).ToList();
            labels = Enumerable.Repeat(0, files.Count).ToList();
            used = new List<string>();
        }
        if (files.Count == 0) throw new InvalidDataException($"{root}: no images found (extensions {string.Join(" ", ImageIO.Extensions)})");
        return new ImageFolderListing(root, files, labels, used);
    }

    // os.walk sorted: a directory's own files, then its sub-directories in name order.
    static IEnumerable<string> Walk(string dir)
    {
        foreach (var f in Directory.GetFiles(dir).Where(ImageIO.IsImageFile).OrderBy(s => Path.GetFileName(s), StringComparer.Ordinal)) yield return f;
        foreach (var d in Directory.GetDirectories(dir).OrderBy(s => Path.GetFileName(s), StringComparer.Ordinal))
            foreach (var f in Walk(d)) yield return f;
    }

    /// <summary>
    /// Decodes and ADM-centre-crops the files in parallel (-1: as many threads as the pool gives): per file its uint8
    /// [size,size,3] pixels, or the exception that stopped it, so callers choose between failing and skipping.
    /// </summary>
    public static (byte[]?[] Crops, Exception?[] Errors) CenterCrops(IReadOnlyList<string> files, int size, int parallelism = -1, CancellationToken ct = default)
    {
        var crops = new byte[]?[files.Count];
        var errors = new Exception?[files.Count];
        Parallel.For(0, files.Count, new ParallelOptions { MaxDegreeOfParallelism = parallelism, CancellationToken = ct }, i =>
        {
            try { crops[i] = AdmCrop.CenterCropArr(ImageIO.LoadRgb(files[i]), size).Pixels; }
            catch (Exception ex) when (ex is not OperationCanceledException and not OutOfMemoryException) { errors[i] = ex; }
        });
        return (crops, errors);
    }

    /// <summary>Decodes and ADM-centre-crops files [start, start+count) in parallel into uint8 [count,size,size,3].</summary>
    public static Tensor LoadRange(IReadOnlyList<string> files, int start, int count, int size = 256)
    {
        var (crops, errors) = CenterCrops(files.Skip(start).Take(count).ToList(), size);
        int bad = Array.FindIndex(errors, e => e is not null);
        if (bad >= 0)
        {
            // the first bad file's own exception when it names the file
            if (errors[bad] is InvalidDataException or FileNotFoundException) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(errors[bad]!).Throw();
            throw new InvalidDataException($"{files[start + bad]}: {errors[bad]!.Message}", errors[bad]);
        }
        int per = size * size * 3;
        var buf = new byte[(long)count * per];
        for (int i = 0; i < count; i++) Buffer.BlockCopy(crops[i]!, 0, buf, i * per, per);
        var t = empty(new long[] { count, size, size, 3 }, ScalarType.Byte);
        if (buf.Length > 0) t.bytes = buf;
        return t;
    }

    /// <summary>All images of a folder as uint8 [N,size,size,3] (small folders; use <see cref="Batches"/> for 50k, or the extract-dataset job).</summary>
    public static Tensor Load(string root, int size = 256) { var l = List(root); return LoadRange(l.Files, 0, l.Count, size); }

    public static IEnumerable<(int Start, Tensor Batch)> Batches(ImageFolderListing l, int size = 256, int batchSize = 64)
    {
        for (int s = 0; s < l.Count; s += batchSize) yield return (s, LoadRange(l.Files, s, Math.Min(batchSize, l.Count - s), size));
    }
}

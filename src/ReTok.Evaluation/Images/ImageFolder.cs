using ReTok.Models.IO;
using ReTok.Models.Images;
using TorchSharp;
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

    /// <summary>Decodes and ADM-centre-crops files [start, start+count) in parallel into uint8 [count,size,size,3].</summary>
    public static Tensor LoadRange(IReadOnlyList<string> files, int start, int count, int size = 256)
    {
        var buf = new byte[(long)count * size * size * 3];
        int per = size * size * 3;
        try
        {
            Parallel.For(0, count, i =>
            {
                var f = files[start + i];
                RgbImage img;
                try { img = AdmCrop.CenterCropArr(ImageIO.LoadRgb(f), size); }
                catch (Exception ex) when (ex is not InvalidDataException and not FileNotFoundException)
                { throw new InvalidDataException($"{f}: {ex.Message}", ex); }
                Buffer.BlockCopy(img.Pixels, 0, buf, i * per, per);
            });
        }
        // the first bad file's own exception (it names the file), not Parallel's AggregateException
        catch (AggregateException ae) when (ae.InnerExceptions.Count > 0 && ae.InnerExceptions[0] is InvalidDataException or FileNotFoundException)
        { System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(ae.InnerExceptions[0]).Throw(); }
        var t = empty(new long[] { count, size, size, 3 }, ScalarType.Byte);
        if (buf.Length > 0) t.bytes = buf;
        return t;
    }

    /// <summary>All images of a folder as uint8 [N,size,size,3] (small folders; use <see cref="Batches"/> or <see cref="WriteNpz"/> for 50k).</summary>
    public static Tensor Load(string root, int size = 256) { var l = List(root); return LoadRange(l.Files, 0, l.Count, size); }

    public static IEnumerable<(int Start, Tensor Batch)> Batches(ImageFolderListing l, int size = 256, int batchSize = 64)
    {
        for (int s = 0; s < l.Count; s += batchSize) yield return (s, LoadRange(l.Files, s, Math.Min(batchSize, l.Count - s), size));
    }

    /// <summary>
    /// Streams a folder into an npz with key arr_0 uint8 [N,size,size,3] (val_ddp's val_imagenet.npz). The reference
    /// shuffles with an unseeded random.shuffle; we keep listing order unless <paramref name="shuffleSeed"/> is given.
    /// </summary>
    public static long WriteNpz(string root, string npzPath, int size = 256, int? shuffleSeed = null, int? limit = null, IProgress<(long Done, long Total)>? progress = null)
    {
        var l = List(root);
        var files = l.Files.Take(limit ?? int.MaxValue).ToList();
        if (shuffleSeed is int seed) { var rng = new Random(seed); for (int i = files.Count - 1; i > 0; i--) { int j = rng.Next(i + 1); (files[i], files[j]) = (files[j], files[i]); } }
        using var w = new NpzStreamWriter(npzPath);
        w.BeginArray("arr_0", "|u1", new long[] { files.Count, size, size, 3 });
        for (int s = 0; s < files.Count; s += 64)
        {
            int n = Math.Min(64, files.Count - s);
            using var b = LoadRange(files, s, n, size);
            w.Append(b.bytes);
            progress?.Report((s + n, files.Count));
        }
        w.Commit();
        return files.Count;
    }
}

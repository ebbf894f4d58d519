using SkiaSharp;

namespace ReTok.Evaluation.Images;

/// <summary>Image files made here rather than downloaded: the benchmarks' noise JPEGs and the encoder every synthetic set
/// (also the quickstart's <c>SyntheticDataset</c>) writes with.</summary>
public static class SyntheticImages
{
    /// <summary>
    /// n JPEGs {k:0000}.jpg (quality 90) of ImageNet-like sizes, 500x375, 375x500 (k % 3 == 1) or 800x600 (k % 5 == 4):
    /// sine ramps in R and G and noise in B, so decode and resize work as on photos. Returns the paths in name order.
    /// </summary>
    public static List<string> NoiseJpegs(string dir, int n)
    {
        Directory.CreateDirectory(dir);
        var files = new List<string>();
        var rng = new Random(1);
        for (int k = 0; k < n; k++)
        {
            var (w, h) = (k % 3, k % 5) switch { (1, _) => (375, 500), (_, 4) => (800, 600), _ => (500, 375) };
            using var bmp = new SKBitmap(new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Opaque));
            var px = new byte[w * h * 4];
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                {
                    int o = (y * w + x) * 4;
                    px[o] = (byte)(128 + 100 * Math.Sin(x / 13.0 + k)); px[o + 1] = (byte)(128 + 100 * Math.Sin(y / 7.0));
                    px[o + 2] = (byte)rng.Next(256); px[o + 3] = 255;
                }
            System.Runtime.InteropServices.Marshal.Copy(px, 0, bmp.GetPixels(), px.Length);
            var path = Path.Combine(dir, $"{k:0000}.jpg");
            Write(bmp, path, SKEncodedImageFormat.Jpeg, 90);
            files.Add(path);
        }
        return files;
    }

    /// <summary>Encodes the bitmap (Skia's JPEG/PNG encoders; quality applies to JPEG) into a file.</summary>
    public static void Write(SKBitmap bmp, string path, SKEncodedImageFormat format, int quality)
    {
        using var data = bmp.Encode(format, quality);
        using var f = File.Create(path);
        data.SaveTo(f);
    }
}

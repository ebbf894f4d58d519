using ReTok.Evaluation.Images;
using SkiaSharp;

namespace ReTok.Jobs.Quickstart;

/// <summary>
/// A small labelled image set in ImageNet layout (one folder per class, JPEG and PNG, awkward sizes) so the quickstart
/// needs no download. Each class has its own hue and shape, so a tiny tokenizer and AR model have something to learn.
/// One solid shape per class and no sub-patch texture: at 64 px (the quickstart's first size), stripes and checkers alias, and the
/// set's 8x8-cell average (what a coarse code can at best convey) scored 19.3 dB PSNR with them, 21.8 dB without.
/// </summary>
public static class SyntheticDataset
{
    public static readonly string[] ClassNames = { "n00000000_disc", "n00000001_square", "n00000002_bar", "n00000003_ring",
        "n00000004_cross", "n00000005_diamond", "n00000006_triangle", "n00000007_gradient" };

    /// <summary>Writes <paramref name="perClass"/> images for each of the first <paramref name="classes"/> classes; returns the count.</summary>
    public static int Generate(string dir, int classes = 4, int perClass = 8, int seed = 0)
    {
        if (classes < 1 || classes > ClassNames.Length) throw new ArgumentOutOfRangeException(nameof(classes), $"1..{ClassNames.Length}");
        var rng = new Random(seed);
        int n = 0;
        for (int c = 0; c < classes; c++)
        {
            var cdir = Path.Combine(dir, ClassNames[c]);
            Directory.CreateDirectory(cdir);
            for (int i = 0; i < perClass; i++)
            {
                int w = rng.Next(260, 420), h = rng.Next(260, 420);
                using var bmp = new SKBitmap(w, h, SKColorType.Rgba8888, SKAlphaType.Opaque);
                using (var canvas = new SKCanvas(bmp)) Draw(canvas, c, w, h, rng);
                var png = i % 2 == 0;
                var path = Path.Combine(cdir, $"{ClassNames[c].Split('_')[0]}_{i:D4}.{(png ? "png" : "jpg")}");
                SyntheticImages.Write(bmp, path, png ? SKEncodedImageFormat.Png : SKEncodedImageFormat.Jpeg, 95);
                n++;
            }
        }
        return n;
    }

    static void Draw(SKCanvas g, int cls, int w, int h, Random rng)
    {
        float hue = cls * 360f / ClassNames.Length + rng.Next(-12, 12);
        var bg = SKColor.FromHsv((hue + 180) % 360, 25 + rng.Next(20), 85 + rng.Next(10));
        var fg = SKColor.FromHsv((hue + 360) % 360, 70 + rng.Next(25), 60 + rng.Next(35));
        g.Clear(bg);
        using var p = new SKPaint { Color = fg, IsAntialias = true, Style = SKPaintStyle.Fill };
        float cx = w * (0.35f + 0.3f * (float)rng.NextDouble()), cy = h * (0.35f + 0.3f * (float)rng.NextDouble());
        float r = Math.Min(w, h) * (0.2f + 0.1f * (float)rng.NextDouble());
        switch (cls)
        {
            case 0: g.DrawCircle(cx, cy, r, p); break;
            case 1: g.DrawRect(cx - r, cy - r, 2 * r, 2 * r, p); break;
            case 2: g.DrawRect(cx - 1.4f * r, cy - r / 2, 2.8f * r, r, p); break;
            case 3: p.Style = SKPaintStyle.Stroke; p.StrokeWidth = r / 2; g.DrawCircle(cx, cy, r * 0.8f, p); break;
            case 4: g.DrawRect(cx - r, cy - r / 3, 2 * r, 2 * r / 3, p); g.DrawRect(cx - r / 3, cy - r, 2 * r / 3, 2 * r, p); break;
            case 5:
                using (var path = new SKPath())
                {
                    path.MoveTo(cx, cy - 1.2f * r); path.LineTo(cx + r, cy); path.LineTo(cx, cy + 1.2f * r); path.LineTo(cx - r, cy); path.Close();
                    g.DrawPath(path, p);
                }
                break;
            case 6:
                using (var path = new SKPath())
                {
                    path.MoveTo(cx, cy - r); path.LineTo(cx + r, cy + r); path.LineTo(cx - r, cy + r); path.Close();
                    g.DrawPath(path, p);
                }
                break;
            default:
                using (var shader = SKShader.CreateLinearGradient(new SKPoint(0, 0), new SKPoint(w, h), new[] { bg, fg }, SKShaderTileMode.Clamp))
                using (var gp = new SKPaint { Shader = shader }) g.DrawRect(0, 0, w, h, gp);
                break;
        }
    }
}

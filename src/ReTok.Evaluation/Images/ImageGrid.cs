using ReTok.Models.Images;
using SkiaSharp;
using static TorchSharp.torch;

namespace ReTok.Evaluation.Images;

/// <summary>A grid of uint8 NHWC images like torchvision's make_grid (nrow per row, padding px of padValue around each cell).</summary>
public static class ImageGrid
{
    /// <param name="captionHeight">extra rows of padValue under each cell, for a caption (<see cref="SaveCaptioned"/>).</param>
    public static RgbImage Make(Tensor images, int nrow = 8, int padding = 2, byte padValue = 0, int captionHeight = 0)
    {
        if (images.dim() != 4 || images.shape[3] != 3 || images.dtype != ScalarType.Byte)
            throw new ArgumentException($"expected uint8 NHWC images [N,H,W,3], got {images.dtype} [{string.Join(",", images.shape)}]");
        int n = (int)images.shape[0], h = (int)images.shape[1], w = (int)images.shape[2];
        if (n == 0) throw new ArgumentException("no images for the grid");
        int cols = Math.Min(nrow, n), rows = (n + cols - 1) / cols;
        int gw = cols * (w + padding) + padding, gh = rows * (h + captionHeight + padding) + padding;
        var grid = new RgbImage(gw, gh);
        if (padValue != 0) Array.Fill(grid.Pixels, padValue);
        var src = images.contiguous().cpu().bytes.ToArray();
        for (int k = 0; k < n; k++)
        {
            int gx = padding + (k % cols) * (w + padding), gy = padding + (k / cols) * (h + captionHeight + padding);
            for (int y = 0; y < h; y++)
                Buffer.BlockCopy(src, ((k * h + y) * w) * 3, grid.Pixels, ((gy + y) * gw + gx) * 3, w * 3);
        }
        return grid;
    }

    public static void Save(string path, Tensor images, int nrow = 8, int padding = 2, byte padValue = 0)
    {
        using var big = Legible(images);
        ImageIO.SavePng(path, Make(big, nrow, padding, padValue));
    }

    /// <summary>Tiles below 64 px (the quickstart's 32 px images) are enlarged by an integer factor, nearest neighbour, so a
    /// person can see them and a caption fits; the pixels themselves are unchanged.</summary>
    public static Tensor Legible(Tensor images, int minSide = 64)
    {
        long side = Math.Min(images.shape[1], images.shape[2]);
        if (side >= minSide) return images.alias();
        long f = (minSide + side - 1) / side;
        return images.repeat_interleave(f, 1).repeat_interleave(f, 2);
    }

    /// <summary>Fonts tried for captions: $RETOK_FONT, then Debian's DejaVu Sans (fonts-dejavu-core). The NoDependencies
    /// SkiaSharp build has no fontconfig, so its default typeface draws nothing: a font file is the reliable way.</summary>
    static readonly string[] FontFiles = { Environment.GetEnvironmentVariable("RETOK_FONT") ?? "",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf" };

    /// <summary>Loads the caption font, or null when none of <see cref="FontFiles"/> exists.</summary>
    public static SKTypeface? CaptionFont() =>
        FontFiles.Where(File.Exists).Select(SKTypeface.FromFile).FirstOrDefault(t => t is not null);

    /// <summary>
    /// The grid with a caption under each cell (e.g. a sample's class). Returns false, and writes the grid without
    /// captions, when no font file is found (see <see cref="FontFiles"/>).
    /// </summary>
    public static bool SaveCaptioned(string path, Tensor images, IReadOnlyList<string> captions, int nrow = 8, int padding = 2)
    {
        using var big = Legible(images);
        images = big;
        int n = (int)images.shape[0], h = (int)images.shape[1], w = (int)images.shape[2];
        if (captions.Count != n) throw new ArgumentException($"{captions.Count} captions for {n} images");
        using var font = CaptionFont();
        if (font is null) { Save(path, images, nrow, padding); return false; }
        int capH = Math.Max(12, Math.Min(18, w / 5)), cols = Math.Min(nrow, n);
        var grid = Make(images, nrow, padding, captionHeight: capH);
        using var bmp = new SKBitmap(grid.Width, grid.Height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        var px = new byte[grid.Width * grid.Height * 4];
        for (int i = 0; i < grid.Width * grid.Height; i++)
            (px[i * 4], px[i * 4 + 1], px[i * 4 + 2], px[i * 4 + 3]) = (grid.Pixels[i * 3], grid.Pixels[i * 3 + 1], grid.Pixels[i * 3 + 2], 255);
        System.Runtime.InteropServices.Marshal.Copy(px, 0, bmp.GetPixels(), px.Length);
        using (var canvas = new SKCanvas(bmp))
        using (var skFont = new SKFont(font, capH * 0.8f))
        using (var ink = new SKPaint { Color = SKColors.White, IsAntialias = true })
            for (int k = 0; k < n; k++)
            {
                float x = padding + (k % cols) * (w + padding), y = padding + (k / cols) * (h + capH + padding) + h;
                var text = captions[k];
                while (text.Length > 1 && skFont.MeasureText(text) > w) text = text[..^1];
                canvas.DrawText(text, x + (w - skFont.MeasureText(text)) / 2, y + capH * 0.8f, SKTextAlign.Left, skFont, ink);
            }
        px = bmp.Bytes;
        for (int i = 0; i < grid.Width * grid.Height; i++) (grid.Pixels[i * 3], grid.Pixels[i * 3 + 1], grid.Pixels[i * 3 + 2]) = (px[i * 4], px[i * 4 + 1], px[i * 4 + 2]);
        ImageIO.SavePng(path, grid);
        return true;
    }
}

using SkiaSharp;

namespace ReTok.Evaluation.Images;

/// <summary>Writes uint8 RGB images (N x H x W x 3, row-major bytes) as one PNG grid, e.g. originals beside reconstructions.</summary>
public static class ImageGrid
{
    /// <param name="rows">each row is a list of images (H x W x 3 bytes) of equal size, drawn left to right.</param>
    public static void SavePng(string path, IReadOnlyList<IReadOnlyList<byte[]>> rows, int height, int width, int gap = 2)
    {
        int cols = rows.Max(r => r.Count);
        int gw = cols * width + (cols + 1) * gap, gh = rows.Count * height + (rows.Count + 1) * gap;
        using var bmp = new SKBitmap(new SKImageInfo(gw, gh, SKColorType.Rgba8888, SKAlphaType.Opaque));
        bmp.Erase(SKColors.White);
        for (int r = 0; r < rows.Count; r++)
            for (int c = 0; c < rows[r].Count; c++)
            {
                var img = rows[r][c];
                if (img.Length != height * width * 3) throw new ArgumentException($"grid image ({r},{c}) has {img.Length} bytes, expected {height}x{width}x3");
                int ox = gap + c * (width + gap), oy = gap + r * (height + gap);
                for (int y = 0; y < height; y++)
                    for (int x = 0; x < width; x++)
                    {
                        int i = (y * width + x) * 3;
                        bmp.SetPixel(ox + x, oy + y, new SKColor(img[i], img[i + 1], img[i + 2]));
                    }
            }
        using var data = bmp.Encode(SKEncodedImageFormat.Png, 100);
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        using var f = File.Create(full);
        data.SaveTo(f);
    }
}

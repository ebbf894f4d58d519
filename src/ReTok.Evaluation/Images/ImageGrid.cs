using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Evaluation.Images;

/// <summary>A grid of uint8 NHWC images like torchvision's make_grid (nrow per row, padding px of padValue around each cell).</summary>
public static class ImageGrid
{
    public static RgbImage Make(Tensor images, int nrow = 8, int padding = 2, byte padValue = 0)
    {
        if (images.dim() != 4 || images.shape[3] != 3 || images.dtype != ScalarType.Byte)
            throw new ArgumentException($"expected uint8 NHWC images [N,H,W,3], got {images.dtype} [{string.Join(",", images.shape)}]");
        int n = (int)images.shape[0], h = (int)images.shape[1], w = (int)images.shape[2];
        if (n == 0) throw new ArgumentException("no images for the grid");
        int cols = Math.Min(nrow, n), rows = (n + cols - 1) / cols;
        int gw = cols * (w + padding) + padding, gh = rows * (h + padding) + padding;
        var grid = new RgbImage(gw, gh);
        if (padValue != 0) Array.Fill(grid.Pixels, padValue);
        var src = images.contiguous().cpu().bytes.ToArray();
        for (int k = 0; k < n; k++)
        {
            int gx = padding + (k % cols) * (w + padding), gy = padding + (k / cols) * (h + padding);
            for (int y = 0; y < h; y++)
                Buffer.BlockCopy(src, ((k * h + y) * w) * 3, grid.Pixels, ((gy + y) * gw + gx) * 3, w * 3);
        }
        return grid;
    }

    public static void Save(string path, Tensor images, int nrow = 8, int padding = 2, byte padValue = 0)
        => ImageIO.SavePng(path, Make(images, nrow, padding, padValue));
}

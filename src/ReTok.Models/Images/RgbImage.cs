using static TorchSharp.torch;

namespace ReTok.Models.Images;

/// <summary>An 8-bit RGB image, row-major HWC (what PIL's <c>np.asarray(img.convert('RGB'))</c> holds).</summary>
public sealed record RgbImage(int Width, int Height, byte[] Pixels)
{
    public RgbImage(int width, int height) : this(width, height, new byte[checked(width * height * 3)]) { }

    public byte this[int y, int x, int c] => Pixels[(y * Width + x) * 3 + c];

    /// <summary>Copy of the rectangle [x, x+w) x [y, y+h).</summary>
    public RgbImage Crop(int x, int y, int w, int h)
    {
        if (x < 0 || y < 0 || w < 0 || h < 0 || x + w > Width || y + h > Height)
            throw new ArgumentOutOfRangeException(nameof(x), $"crop {w}x{h}+{x}+{y} outside a {Width}x{Height} image");
        var r = new RgbImage(w, h);
        for (int row = 0; row < h; row++)
            Buffer.BlockCopy(Pixels, ((y + row) * Width + x) * 3, r.Pixels, row * w * 3, w * 3);
        return r;
    }

    /// <summary>Copy of a uint8 [H, W, 3] tensor (the training loader's and the jobs' image tensors).</summary>
    public static RgbImage FromTensor(Tensor hwc)
    {
        if (hwc.dtype != ScalarType.Byte || hwc.dim() != 3 || hwc.shape[2] != 3)
            throw new ArgumentException($"expected a uint8 [H,W,3] image, got {hwc.dtype} [{string.Join(",", hwc.shape)}]");
        return new RgbImage((int)hwc.shape[1], (int)hwc.shape[0], hwc.contiguous().cpu().data<byte>().ToArray());
    }

    /// <summary>uint8 [H, W, 3] on the CPU.</summary>
    public Tensor ToTensor() => tensor(Pixels, new long[] { Height, Width, 3 }, ScalarType.Byte);
}

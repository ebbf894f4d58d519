using static TorchSharp.torch;

namespace ReTok.Evaluation.Inception;

/// <summary>
/// TensorFlow 1.x legacy <c>ResizeBilinear</c> (align_corners=false, half_pixel_centers=false, no antialias), which the
/// Inception graph applies to the evaluator's float 0..255 input: src = dst * (in/out) with a float32 scale,
/// lower = floor(src), upper = min(ceil(src), in-1), lerp in x for the two rows, then in y, all in float32.
/// This is not torch's align_corners=False bilinear (half-pixel), which pytorch-fid uses.
/// </summary>
public static class Tf1Resize
{
    /// <summary>x: float32 NHWC.</summary>
    public static Tensor Bilinear(Tensor x, int outH, int outW)
    {
        using var scope = NewDisposeScope();
        int inH = (int)x.shape[1], inW = (int)x.shape[2];
        var (loY, hiY, ly) = Weights(inH, outH, x.device);
        var (loX, hiX, lx) = Weights(inW, outW, x.device);
        ly = ly.view(1, outH, 1, 1);
        lx = lx.view(1, 1, outW, 1);
        var top = x.index_select(1, loY);
        var bot = x.index_select(1, hiY);
        var tl = top.index_select(2, loX); var tr = top.index_select(2, hiX);
        var bl = bot.index_select(2, loX); var br = bot.index_select(2, hiX);
        var t = tl + (tr - tl) * lx;
        var b = bl + (br - bl) * lx;
        return (t + (b - t) * ly).MoveToOuterDisposeScope();
    }

    static (Tensor Lo, Tensor Hi, Tensor Lerp) Weights(int inSize, int outSize, Device dev)
    {
        float scale = inSize / (float)outSize;
        var lo = new long[outSize]; var hi = new long[outSize]; var lerp = new float[outSize];
        for (int i = 0; i < outSize; i++)
        {
            float src = i * scale, f = MathF.Floor(src);
            lo[i] = Math.Max((long)f, 0);
            hi[i] = Math.Min((long)MathF.Ceiling(src), inSize - 1);
            lerp[i] = src - f;
        }
        return (tensor(lo, device: dev), tensor(hi, device: dev), tensor(lerp, device: dev));
    }
}

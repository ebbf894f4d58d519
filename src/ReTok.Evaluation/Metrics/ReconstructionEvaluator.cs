using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Evaluation.Metrics;

public sealed record ReconResults(long Count, double Psnr, double Ssim, double? LpipsBatchMean, double? LpipsImageMean, int LpipsBatches)
{
    /// <summary>reconstruction_ddp.py's summary lines ("PSNR: %f, SSIM: %f " / "LPIPS_vgg: %f ").</summary>
    public string ToText() =>
        $"PSNR: {Psnr:F6}, SSIM: {Ssim:F6}\n" + (LpipsBatchMean is double l ? $"LPIPS_vgg: {l:F6}\n" : "");
}

/// <summary>
/// Accumulates ReTok's reconstruction metrics batch by batch (reconstruction_ddp.py quantitative_eval):
/// PSNR/SSIM per image on the uint8 reconstruction (mean over images), LPIPS-VGG per batch on the GT in [-1,1] and the
/// raw, unclamped decoder output, reported as the mean of per-batch means (the reference's aggregation; it depends on the
/// batch size) and, for reference, as the plain per-image mean.
/// </summary>
public sealed class ReconstructionEvaluator : IDisposable
{
    readonly LpipsVgg? _lpips;
    readonly Device _device;
    double _psnr, _ssim, _lpipsBatchSum, _lpipsImageSum;
    long _n, _lpipsImages;
    int _batches;

    public ReconstructionEvaluator(LpipsVgg? lpips = null, Device? device = null)
    {
        _device = device ?? CPU;
        _lpips = lpips;
        _lpips?.to(_device).eval();
    }

    /// <summary>Decoder output NCHW in [-1,1] -> uint8 NHWC as <c>clamp(127.5*x + 128, 0, 255).to(uint8)</c> (float32, truncation).</summary>
    public static Tensor ToUint8(Tensor decoded)
    {
        using var scope = NewDisposeScope();
        var u = (decoded.to(ScalarType.Float32) * 127.5f + 128f).clamp(0, 255).permute(0, 2, 3, 1).to(ScalarType.Byte);
        return u.cpu().contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>uint8 NHWC -> float32 NCHW in [-1,1] as ToTensor + Normalize(0.5, 0.5).</summary>
    public static Tensor ToModelInput(Tensor uint8Nhwc)
    {
        using var scope = NewDisposeScope();
        var x = (uint8Nhwc.to(ScalarType.Float32) / 255f - 0.5f) / 0.5f;
        return x.permute(0, 3, 1, 2).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One batch: GT uint8 NHWC, reconstruction uint8 NHWC, and optionally the raw decoder output NCHW (for LPIPS; when
    /// null, LPIPS uses the uint8 reconstruction mapped back to [-1,1], which loses the unclamped range).
    /// </summary>
    public void AddBatch(Tensor gtUint8, Tensor reconUint8, Tensor? reconRaw = null)
    {
        if (!gtUint8.shape.SequenceEqual(reconUint8.shape) || gtUint8.dim() != 4 || gtUint8.shape[3] != 3)
            throw new ArgumentException($"GT [{string.Join(",", gtUint8.shape)}] and reconstruction [{string.Join(",", reconUint8.shape)}] must both be uint8 [N,H,W,3]");
        int n = (int)gtUint8.shape[0], h = (int)gtUint8.shape[1], w = (int)gtUint8.shape[2], per = h * w * 3;
        var g = gtUint8.cpu().contiguous().bytes.ToArray();
        var r = reconUint8.cpu().contiguous().bytes.ToArray();
        var ps = new double[n]; var ss = new double[n];
        Parallel.For(0, n, i =>
        {
            ps[i] = ReconMetrics.Psnr(g.AsSpan(i * per, per), r.AsSpan(i * per, per));
            ss[i] = ReconMetrics.Ssim(g.AsSpan(i * per, per), r.AsSpan(i * per, per), h, w);
        });
        _psnr += ps.Sum(); _ssim += ss.Sum(); _n += n;
        if (_lpips is null) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var a = ToModelInput(gtUint8).to(_device);
        var b = reconRaw is null ? ToModelInput(reconUint8).to(_device) : reconRaw.to(ScalarType.Float32).to(_device);
        var d = _lpips.call(a, b).to(ScalarType.Float64).cpu();
        _lpipsBatchSum += d.mean().item<double>();
        _lpipsImageSum += d.sum().item<double>();
        _lpipsImages += n;
        _batches++;
    }

    public ReconResults Result() => new(_n, _n == 0 ? double.NaN : _psnr / _n, _n == 0 ? double.NaN : _ssim / _n,
        _batches == 0 ? null : _lpipsBatchSum / _batches, _lpipsImages == 0 ? null : _lpipsImageSum / _lpipsImages, _batches);

    public void Dispose() { }
}

using ReTok.Models.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.Training;

public enum PilFilter { Box, Bilinear, Bicubic }

/// <summary>
/// PIL's Image.resize for 8-bit images (Resample.c, Pillow 9.4): separable passes, horizontal first then vertical, each
/// skipped when that size does not change; per pass 22-bit fixed-point coefficients from precompute_coeffs and
/// normalize_coeffs_8bpc, out = clamp((2^21 + sum p*k) >> 22, 0, 255). Same integer arithmetic as PIL, so results
/// are bit-identical (DataTests.PilResizeIsBitExact).
/// </summary>
public static class PilResize
{
    private const int PrecisionBits = 32 - 8 - 2;

    private static (double Support, Func<double, double> Filter) FilterOf(PilFilter f) => f switch
    {
        PilFilter.Box => (0.5, x => x > -0.5 && x <= 0.5 ? 1.0 : 0.0),
        PilFilter.Bilinear => (1.0, x => { x = Math.Abs(x); return x < 1.0 ? 1.0 - x : 0.0; }),
        PilFilter.Bicubic => (2.0, Bicubic),
        _ => throw new ArgumentOutOfRangeException(nameof(f)),
    };

    private static double Bicubic(double x)
    {
        const double a = -0.5;
        if (x < 0.0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }

    /// <summary>precompute_coeffs + normalize_coeffs_8bpc: per output index its first input index, tap count, and
    /// <c>kSize</c> integer coefficients starting at <c>o * kSize</c>.</summary>
    public static (int[] First, int[] Count, int[] K, int KSize) Coefficients(int inSize, int outSize, PilFilter filter)
    {
        var (support0, fn) = FilterOf(filter);
        double scale = (double)inSize / outSize, filterscale = Math.Max(scale, 1.0);
        double support = support0 * filterscale, ss = 1.0 / filterscale;
        int ksize = (int)Math.Ceiling(support) * 2 + 1;
        var first = new int[outSize];
        var count = new int[outSize];
        var kk = new int[outSize * ksize];
        var k = new double[ksize];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale, ww = 0.0;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            for (int x = 0; x < xmax; x++)
            {
                double w = fn((x + xmin - center + 0.5) * ss);
                k[x] = w;
                ww += w;
            }
            for (int x = 0; x < xmax; x++)
            {
                double v = ww != 0.0 ? k[x] / ww : k[x];
                kk[xx * ksize + x] = v < 0 ? (int)(-0.5 + v * (1 << PrecisionBits)) : (int)(0.5 + v * (1 << PrecisionBits));
            }
            first[xx] = xmin;
            count[xx] = xmax;
        }
        return (first, count, kk, ksize);
    }

    /// <summary>uint8 [H, W, C] -> uint8 [outH, outW, C].</summary>
    public static Tensor Resize(Tensor hwc, int outW, int outH, PilFilter filter)
    {
        if (hwc.dtype != ScalarType.Byte || hwc.dim() != 3) throw new ArgumentException($"PIL resize expects uint8 [H,W,C], got {hwc.dtype} [{string.Join(",", hwc.shape)}]");
        if (outW < 1 || outH < 1) throw new ArgumentException($"PIL resize to {outW}x{outH}");
        int h = (int)hwc.shape[0], w = (int)hwc.shape[1], c = (int)hwc.shape[2];
        var src = hwc.contiguous().data<byte>().ToArray();
        if (outW != w)
        {
            var (first, count, kk, ks) = Coefficients(w, outW, filter);
            var dst = new byte[h * outW * c];
            for (int y = 0; y < h; y++)
                for (int xx = 0; xx < outW; xx++)
                    for (int ch = 0; ch < c; ch++)
                    {
                        long acc = 1L << (PrecisionBits - 1);
                        int row = y * w * c + first[xx] * c + ch;
                        for (int t = 0; t < count[xx]; t++) acc += src[row + t * c] * (long)kk[xx * ks + t];
                        dst[(y * outW + xx) * c + ch] = Clip8(acc);
                    }
            (src, w) = (dst, outW);
        }
        if (outH != h)
        {
            var (first, count, kk, ks) = Coefficients(h, outH, filter);
            var dst = new byte[outH * w * c];
            int stride = w * c;
            for (int yy = 0; yy < outH; yy++)
                for (int i = 0; i < stride; i++)
                {
                    long acc = 1L << (PrecisionBits - 1);
                    int col = first[yy] * stride + i;
                    for (int t = 0; t < count[yy]; t++) acc += src[col + t * stride] * (long)kk[yy * ks + t];
                    dst[yy * stride + i] = Clip8(acc);
                }
            (src, h) = (dst, outH);
        }
        return tensor(src, new long[] { h, w, c }, ScalarType.Byte);
    }

    private static byte Clip8(long acc)
    {
        long v = acc >> PrecisionBits;
        return (byte)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

/// <summary>ADM crops (dataset/augmentation.py) on uint8 HWC tensors, with the random draws injected.</summary>
public static class Crops
{
    /// <summary>Draws an integer in [lo, hi) (Python random.randrange semantics).</summary>
    public delegate long RandRange(long lo, long hi);

    private static Tensor HalveWhileLarge(Tensor img, int minSide)
    {
        while (Math.Min(img.shape[0], img.shape[1]) >= 2 * minSide)
            img = PilResize.Resize(img, (int)img.shape[1] / 2, (int)img.shape[0] / 2, PilFilter.Box);
        return img;
    }

    private static Tensor ResizeShortSide(Tensor img, int side)
    {
        long h = img.shape[0], w = img.shape[1];
        double scale = (double)side / Math.Min(w, h);
        // Python round(): half to even, as Math.Round's default
        return PilResize.Resize(img, (int)Math.Round(w * scale), (int)Math.Round(h * scale), PilFilter.Bicubic);
    }

    /// <summary>random_crop_arr: short side S = randrange(ceil(size/maxFrac), ceil(size/minFrac)+1), BOX halving while
    /// min side >= 2S, bicubic to short side S, then crop_y = randrange(H-size+1), crop_x = randrange(W-size+1).</summary>
    public static Tensor RandomCropArr(Tensor hwc, int size, RandRange randrange, double minCropFrac = 0.8, double maxCropFrac = 1.0)
    {
        long s = randrange((long)Math.Ceiling(size / maxCropFrac), (long)Math.Ceiling(size / minCropFrac) + 1);
        var img = ResizeShortSide(HalveWhileLarge(hwc, (int)s), (int)s);
        long cy = randrange(0, img.shape[0] - size + 1);
        long cx = randrange(0, img.shape[1] - size + 1);
        return img[TensorIndex.Slice(cy, cy + size), TensorIndex.Slice(cx, cx + size)].contiguous();
    }

    /// <summary>center_crop_arr (evaluation): halving, bicubic to short side = size, centre crop at (dim - size) // 2.</summary>
    public static Tensor CenterCropArr(Tensor hwc, int size)
    {
        var img = ResizeShortSide(HalveWhileLarge(hwc, size), size);
        long cy = (img.shape[0] - size) / 2, cx = (img.shape[1] - size) / 2;
        return img[TensorIndex.Slice(cy, cy + size), TensorIndex.Slice(cx, cx + size)].contiguous();
    }
}

/// <summary>Random access to uint8 [H, W, 3] images.</summary>
public interface IImageSource
{
    long Count { get; }
    Tensor Get(long index);
}

/// <summary>Images held in one uint8 [N, H, W, 3] tensor.</summary>
public sealed class TensorImageSource : IImageSource
{
    private readonly Tensor images;

    public TensorImageSource(Tensor nhwc, string what = "images")
    {
        if (nhwc.dtype != ScalarType.Byte || nhwc.dim() != 4 || nhwc.shape[3] != 3)
            throw new ArgumentException($"{what}: expected uint8 [N,H,W,3], got {nhwc.dtype} [{string.Join(",", nhwc.shape)}]");
        images = nhwc;
    }

    public long Count => images.shape[0];
    public Tensor Get(long index) => images[index];
}

public enum Augmentation { RandomCropFlip, CenterCrop, None }

/// <summary>Loader settings. Defaults are the reference's (random_crop_arr 256 with crop fractions 0.8-1.0, horizontal
/// flip p = 0.5, seed 0, drop_last). <c>Workers</c> parallelises per-image augmentation; results do not depend on it.</summary>
public sealed record DataConfig(
    int BatchSize,
    int ImageSize = 256,
    long Seed = 0,
    Augmentation Augmentation = Augmentation.RandomCropFlip,
    double MinCropFrac = 0.8,
    double MaxCropFrac = 1.0,
    bool HorizontalFlip = true,
    int Workers = 1);

/// <summary>Where the loader is: the next batch is batch <c>Batch</c> of epoch <c>Epoch</c>.</summary>
public sealed record DataPosition(long Epoch, long Batch);

public static class EpochOrder
{
    /// <summary>DistributedSampler(shuffle=True, seed) with one replica: randperm(N) under a generator seeded seed + epoch.</summary>
    public static long[] Permutation(long n, long seed, long epoch)
    {
        using var g = new torch.Generator((ulong)(seed + epoch));
        using var p = randperm(n, generator: g);
        return p.data<long>().ToArray();
    }
}

/// <summary>
/// Deterministic, resumable batches: epoch e visits images in <see cref="EpochOrder.Permutation"/> order, batches of
/// BatchSize with the incomplete tail dropped. Each image's crop/flip randomness comes from a generator seeded by
/// (seed, epoch, dataset index), so a batch depends only on its <see cref="DataPosition"/>: saving the position and
/// restoring it reproduces exactly the same batches (the reference does not reproduce augmentation on resume).
/// </summary>
public sealed class TrainingDataLoader
{
    private readonly IImageSource source;
    public DataConfig Config { get; }
    public DataPosition Position { get; set; }
    private long[]? order;
    private long orderEpoch = -1;

    public TrainingDataLoader(IImageSource source, DataConfig config, DataPosition? start = null)
    {
        if (config.BatchSize < 1) throw new ArgumentException($"batch size must be >= 1, got {config.BatchSize}");
        if (source.Count < config.BatchSize)
            throw new ArgumentException($"dataset has {source.Count} images, fewer than one batch of {config.BatchSize}");
        this.source = source;
        Config = config;
        Position = start ?? new DataPosition(0, 0);
    }

    public long BatchesPerEpoch => source.Count / Config.BatchSize;

    /// <summary>Next batch as float32 [B, 3, S, S] in [-1, 1] on the CPU; advances <see cref="Position"/>.</summary>
    public Tensor Next()
    {
        var pos = Position;
        if (pos.Batch >= BatchesPerEpoch) pos = new DataPosition(pos.Epoch + 1, 0);
        if (orderEpoch != pos.Epoch) { order = EpochOrder.Permutation(source.Count, Config.Seed, pos.Epoch); orderEpoch = pos.Epoch; }
        int b = Config.BatchSize;
        var items = new Tensor[b];
        var opts = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Config.Workers) };
        Parallel.For(0, b, opts, i =>
        {
            long idx = order![pos.Batch * b + i];
            items[i] = Sample(idx, pos.Epoch);
        });
        Position = new DataPosition(pos.Epoch, pos.Batch + 1);
        using var scope = NewDisposeScope();
        var u8 = stack(items).permute(0, 3, 1, 2);                     // [B,3,S,S]
        foreach (var t in items) t.Dispose();
        var x = u8.to(float32) / 255.0f;                                 // ToTensor
        return ((x - 0.5f) / 0.5f).contiguous().MoveToOuterDisposeScope(); // Normalize(0.5, 0.5)
    }

    /// <summary>One augmented uint8 [S, S, 3] image.</summary>
    public Tensor Sample(long datasetIndex, long epoch)
    {
        using var scope = NewDisposeScope();
        var img = source.Get(datasetIndex);
        using var g = new torch.Generator(SampleSeed(Config.Seed, epoch, datasetIndex));
        Tensor outImg = Config.Augmentation switch
        {
            Augmentation.RandomCropFlip => Crops.RandomCropArr(img, Config.ImageSize,
                (lo, hi) => randint(lo, hi, new long[] { 1 }, dtype: int64, generator: g).item<long>(), Config.MinCropFrac, Config.MaxCropFrac),
            Augmentation.CenterCrop => Crops.CenterCropArr(img, Config.ImageSize),
            _ => img.shape[0] == Config.ImageSize && img.shape[1] == Config.ImageSize ? img
                : throw new InvalidDataException($"image {datasetIndex} is {img.shape[0]}x{img.shape[1]}, augmentation None needs {Config.ImageSize}x{Config.ImageSize}"),
        };
        if (Config.Augmentation == Augmentation.RandomCropFlip && Config.HorizontalFlip && rand(new long[] { 1 }, generator: g).item<float>() < 0.5f)
            outImg = outImg.flip(1);
        return outImg.contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>SplitMix64 of (seed, epoch, index): independent per-image streams.</summary>
    public static ulong SampleSeed(long seed, long epoch, long index)
    {
        ulong Mix(ulong z)
        {
            z += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
        return Mix(Mix(Mix((ulong)seed) ^ (ulong)epoch) ^ (ulong)index);
    }
}

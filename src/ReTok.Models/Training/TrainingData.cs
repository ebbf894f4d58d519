using ReTok.Models.Images;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.Training;

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

    /// <summary>Next batch as float32 [B, 3, S, S] in [-1, 1] on the CPU; advances <see cref="Position"/>. Data parallel:
    /// rank r of N loads only its rows [r*B/N, (r+1)*B/N) of the global batch (each image's augmentation is a function
    /// of its dataset index, so the slice holds exactly those rows of the single-replica batch).</summary>
    public Tensor Next(int rank = 0, int worldSize = 1)
    {
        var pos = Position;
        if (pos.Batch >= BatchesPerEpoch) pos = new DataPosition(pos.Epoch + 1, 0);
        if (orderEpoch != pos.Epoch) { order = EpochOrder.Permutation(source.Count, Config.Seed, pos.Epoch); orderEpoch = pos.Epoch; }
        int b = Config.BatchSize;
        if (b % worldSize != 0) throw new ArgumentException($"data parallel: a batch of {b} does not split into {worldSize} replicas");
        int local = b / worldSize;
        var items = new Tensor[local];
        var opts = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Config.Workers) };
        Parallel.For(0, local, opts, i =>
        {
            long idx = order![pos.Batch * b + rank * local + i];
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
            Augmentation.RandomCropFlip => AdmCrop.RandomCropArr(RgbImage.FromTensor(img), Config.ImageSize,
                (lo, hi) => randint(lo, hi, new long[] { 1 }, dtype: int64, generator: g).item<long>(), Config.MinCropFrac, Config.MaxCropFrac).ToTensor(),
            Augmentation.CenterCrop => AdmCrop.CenterCropArr(RgbImage.FromTensor(img), Config.ImageSize).ToTensor(),
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

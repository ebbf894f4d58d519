using System.Diagnostics;
using ReTok.Evaluation.Features;
using ReTok.Evaluation.Weights;
using ReTok.Models.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Evaluation.Inception;

/// <summary>Runs the FID Inception over uint8 NHWC batches (the evaluator uses 64 images per batch; results do not depend on it).</summary>
public sealed class InceptionExtractor : IDisposable
{
    public FidInceptionV3 Model { get; }
    public Device Device { get; }
    public int BatchSize { get; set; } = 64;
    /// <summary>sha256 of the weights file (part of feature-cache keys); "formula" for test weights.</summary>
    public string WeightsId { get; }

    public InceptionExtractor(FidInceptionV3 model, string weightsId, Device? device = null)
    {
        Device = device ?? CPU;
        Model = model;
        Model.to(Device);
        Model.eval();
        WeightsId = weightsId;
    }

    /// <summary>Loads pt_inception-2015-12-05-6726825d.pth (legacy or zip torch format) or a .safetensors conversion of it.</summary>
    public static InceptionExtractor Load(string weightsPath, Device? device = null)
    {
        var model = new FidInceptionV3();
        var sd = StateDictFile.Read(weightsPath);
        StateDictFile.LoadInto(model, sd, weightsPath, mayBeMissing: StateDictFile.IsBatchNormCounter, mayBeUnexpected: StateDictFile.IsBatchNormCounter);
        foreach (var t in sd.Values) t.Dispose();
        return new InceptionExtractor(model, WeightsRegistry.Sha256(weightsPath), device);
    }

    public InceptionFeatures Run(Tensor images)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var f = Model.call(images.to(Device));
        return new InceptionFeatures(f.Pool.cpu().MoveToOuterDisposeScope(), f.Spatial.cpu().MoveToOuterDisposeScope(), f.Logits.cpu().MoveToOuterDisposeScope());
    }

    /// <summary>Features of every image in a uint8 [N,H,W,3] tensor.</summary>
    public FeatureSet Extract(Tensor images, IProgress<(long Done, long Total)>? progress = null)
    {
        long n = images.shape[0];
        return ExtractBatches(Batches(images, BatchSize), n, progress);
    }

    static IEnumerable<Tensor> Batches(Tensor images, int bs)
    {
        for (long i = 0; i < images.shape[0]; i += bs) yield return images.narrow(0, i, Math.Min(bs, images.shape[0] - i));
    }

    /// <summary>Streams key <paramref name="key"/> (default arr_0, uint8 NHWC) of an npz in batches, as the evaluator's reader.</summary>
    public FeatureSet ExtractNpz(string npzPath, string key = "arr_0", IProgress<(long Done, long Total)>? progress = null)
    {
        var h = Npz.Header(npzPath, key);
        if (h.Shape.Length != 4 || h.Shape[3] != 3)
            throw new InvalidDataException($"{npzPath}: '{key}' has shape [{string.Join(",", h.Shape)}], expected an NHWC image batch [N,H,W,3]");
        if (h.Dtype != "|u1" && h.Dtype != "<f4")
            throw new InvalidDataException($"{npzPath}: '{key}' has dtype {h.Dtype}, expected uint8 (or float32 0..255) images");
        return ExtractBatches(Npz.ReadRows(npzPath, key, BatchSize).Select(c => c.Chunk.ToTensor()), h.Shape[0], progress, disposeBatches: true);
    }

    /// <summary>Features of a stream of uint8 NHWC batches (e.g. reconstructions as they are decoded); <paramref name="total"/> is for progress only.</summary>
    public FeatureSet ExtractBatches(IEnumerable<Tensor> batches, long total, IProgress<(long Done, long Total)>? progress = null, bool disposeBatches = false)
    {
        var pools = new List<Tensor>(); var spatials = new List<Tensor>(); var logits = new List<Tensor>();
        long done = 0;
        foreach (var b in batches)
        {
            var f = Run(b);
            pools.Add(f.Pool); spatials.Add(f.Spatial); logits.Add(f.Logits);
            done += b.shape[0];
            if (disposeBatches) b.Dispose();
            progress?.Report((done, total));
        }
        if (pools.Count == 0) throw new InvalidDataException("no images to extract features from");
        var fs = new FeatureSet(cat(pools, 0), cat(spatials, 0), cat(logits, 0));
        foreach (var t in pools.Concat(spatials).Concat(logits)) t.Dispose();
        return fs;
    }

    public void Dispose() => Model.Dispose();
}

/// <summary>Progress line on stderr ("features 1280/50000 (412.3 img/s, eta 118s)"), at most every 2 s.</summary>
public sealed class StderrProgress : IProgress<(long Done, long Total)>
{
    readonly string _label;
    readonly Stopwatch _sw = Stopwatch.StartNew();
    double _last = -10;

    public StderrProgress(string label) => _label = label;

    public void Report((long Done, long Total) v)
    {
        double t = _sw.Elapsed.TotalSeconds;
        if (v.Done < v.Total && t - _last < 2) return;
        _last = t;
        double rate = v.Done / Math.Max(t, 1e-9);
        Console.Error.WriteLine($"{_label} {v.Done}/{v.Total} ({rate:F1} img/s, eta {(v.Total - v.Done) / Math.Max(rate, 1e-9):F0}s)");
    }
}

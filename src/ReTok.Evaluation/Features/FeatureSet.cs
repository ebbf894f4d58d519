using ReTok.Models.IO;
using static TorchSharp.torch;

namespace ReTok.Evaluation.Features;

/// <summary>
/// Inception features of an image batch, float32: pool [N,2048] (FID, IS via logits, precision/recall), spatial [N,2023]
/// (sFID), logits [N,1008] (unbiased, for IS). Saved as npz keys <c>pool</c>, <c>spatial</c>, <c>logits</c>.
/// </summary>
public sealed class FeatureSet : IDisposable
{
    public Tensor Pool { get; }
    public Tensor Spatial { get; }
    public Tensor Logits { get; }

    public FeatureSet(Tensor pool, Tensor spatial, Tensor logits)
    {
        if (pool.shape[0] != spatial.shape[0] || pool.shape[0] != logits.shape[0])
            throw new ArgumentException($"feature row counts differ: pool {pool.shape[0]}, spatial {spatial.shape[0]}, logits {logits.shape[0]}");
        Pool = pool.to(ScalarType.Float32); Spatial = spatial.to(ScalarType.Float32); Logits = logits.to(ScalarType.Float32);
    }

    public long Count => Pool.shape[0];

    public static readonly string[] Keys = { "pool", "spatial", "logits" };

    public static bool IsFeatureFile(IReadOnlyCollection<string> npzKeys) => Keys.All(npzKeys.Contains);

    public void Save(string path) => Npz.Save(path, new Dictionary<string, NpyArray>
    {
        ["pool"] = NpyArray.FromTensor(Pool),
        ["spatial"] = NpyArray.FromTensor(Spatial),
        ["logits"] = NpyArray.FromTensor(Logits),
    });

    public static FeatureSet Load(string path)
    {
        var keys = Npz.Keys(path);
        if (!IsFeatureFile(keys)) throw new InvalidDataException($"{path}: not a features file (needs keys pool, spatial, logits; has {string.Join(", ", keys)})");
        var pool = Npz.LoadKey(path, "pool").ToTensor();
        var spatial = Npz.LoadKey(path, "spatial").ToTensor();
        var logits = Npz.LoadKey(path, "logits").ToTensor();
        if (pool.dim() != 2 || pool.shape[1] != 2048 || spatial.dim() != 2 || spatial.shape[1] != 2023 || logits.dim() != 2 || logits.shape[1] != 1008)
            throw new InvalidDataException($"{path}: feature shapes pool [{string.Join(",", pool.shape)}], spatial [{string.Join(",", spatial.shape)}], logits [{string.Join(",", logits.shape)}]; expected [N,2048], [N,2023], [N,1008]");
        return new FeatureSet(pool, spatial, logits);
    }

    public void Dispose() { Pool.Dispose(); Spatial.Dispose(); Logits.Dispose(); }
}

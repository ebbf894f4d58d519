using ReTok.Models.IO;
using static TorchSharp.torch;

namespace ReTok.Tests.Training;

/// <summary>Fixtures written by tests/fixtures/gen/training.py (see there for how each was produced).</summary>
internal static class TrainingFixtures
{
    public static string PathOf(string name) => System.IO.Path.Combine(AppContext.BaseDirectory, "fixtures", "training", name);

    public static Dictionary<string, Tensor> Load(string name) =>
        Npz.Load(PathOf(name)).ToDictionary(kv => kv.Key, kv => kv.Value.ToTensor());

    public static double Scalar(this Dictionary<string, Tensor> d, string key) => d[key].to(float64).item<double>();

    /// <summary>max |a - b| over all elements (float64).</summary>
    public static double MaxDiff(Tensor a, Tensor b)
    {
        Assert.Equal(b.shape, a.shape);
        return (a.detach().to(float64) - b.detach().to(float64)).abs().max().item<double>();
    }

    public static double MaxAbs(Tensor a) => a.detach().to(float64).abs().max().item<double>();

    /// <summary>(name, shape) rows of a reference state-dict listing (.tsv: name TAB comma-separated shape).</summary>
    public static List<(string Name, long[] Shape)> StateDictListing(string name) =>
        File.ReadAllLines(PathOf(name)).Where(l => l.Length > 0).Select(l =>
        {
            var parts = l.Split('\t');
            var shape = parts.Length < 2 || parts[1].Length == 0 ? Array.Empty<long>() : parts[1].Split(',').Select(long.Parse).ToArray();
            return (parts[0], shape);
        }).ToList();
}

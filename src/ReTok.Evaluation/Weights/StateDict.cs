using static TorchSharp.torch;

namespace ReTok.Evaluation.Weights;

/// <summary>Deterministic formula weights shared with the python fixture generators (tests and benchmarks); files are read by ReTok.Models.IO.StateDictFile.</summary>
public static class StateDict
{
    /// <summary>Deterministic test weights shared with the python fixture generators: w[i] = offset + sin(0.37*i + k) * scale (float64, then cast).</summary>
    public static Tensor Formula(long[] shape, int k, double scale, double offset = 0)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        var v = new float[n];
        for (long i = 0; i < n; i++) v[i] = (float)(offset + Math.Sin(0.37 * i + k) * scale);
        return tensor(v).reshape(shape);
    }

    /// <summary>
    /// Fills every parameter/buffer (num_batches_tracked excluded) with <see cref="Formula"/>, k = index in the ordinal-sorted
    /// key list, as tests/fixtures/gen/*.py fill_formula does; <paramref name="rule"/> gives (scale, offset) per key;
    /// <paramref name="referenceName"/> maps our key to the reference's name when the two layouts differ (sorting and rule use it).
    /// </summary>
    public static void ApplyFormula(nn.Module module, Func<string, long[], (double Scale, double Offset)> rule, Func<string, string>? referenceName = null)
    {
        referenceName ??= n => n;
        var sd = module.state_dict();
        var keys = sd.Keys.Where(k => !k.EndsWith("num_batches_tracked")).OrderBy(k => referenceName(k), StringComparer.Ordinal).ToList();
        using var _ = no_grad();
        for (int k = 0; k < keys.Count; k++)
        {
            var t = sd[keys[k]];
            var (scale, offset) = rule(referenceName(keys[k]), t.shape);
            using var v = Formula(t.shape, k, scale, offset);
            t.copy_(v);
        }
    }
}

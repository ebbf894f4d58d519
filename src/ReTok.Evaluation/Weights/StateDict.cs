using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Evaluation.Weights;

public static class StateDict
{
    /// <summary>
    /// Copies a reference state dict into a module by name with shape checks. Every module parameter/buffer must be present,
    /// except BatchNorm's num_batches_tracked (absent from pre-1.0 checkpoints, unused in eval); extra keys listed in
    /// <paramref name="ignoreExtra"/> (prefixes) are tolerated, any other extra key is an error naming it.
    /// </summary>
    public static void Load(nn.Module module, IReadOnlyDictionary<string, Tensor> sd, string source, params string[] ignoreExtra)
    {
        var own = module.state_dict();
        var missing = own.Keys.Where(k => !sd.ContainsKey(k) && !k.EndsWith("num_batches_tracked")).ToList();
        if (missing.Count > 0)
            throw new InvalidDataException($"{source}: missing {missing.Count} weight(s) for {module.GetName()}: {string.Join(", ", missing.Take(8))}{(missing.Count > 8 ? ", ..." : "")}");
        var extra = sd.Keys.Where(k => !own.ContainsKey(k) && !k.EndsWith("num_batches_tracked") && !ignoreExtra.Any(k.StartsWith)).ToList();
        if (extra.Count > 0)
            throw new InvalidDataException($"{source}: unexpected weight(s) {string.Join(", ", extra.Take(8))} (is this the right file?)");
        using var _ = no_grad();
        foreach (var (k, t) in own)
        {
            if (!sd.TryGetValue(k, out var src)) continue;
            if (!src.shape.SequenceEqual(t.shape))
                throw new InvalidDataException($"{source}: weight '{k}' has shape [{string.Join(",", src.shape)}], expected [{string.Join(",", t.shape)}]");
            t.copy_(src.to(t.dtype));
        }
    }

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

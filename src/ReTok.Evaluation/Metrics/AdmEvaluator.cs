using System.Globalization;
using System.Text;
using System.Text.Json;
using ReTok.Evaluation.Features;
using ReTok.Evaluation.Inception;
using ReTok.Models.IO;

namespace ReTok.Evaluation.Metrics;

/// <summary>The ADM evaluator's five numbers, in its output order. NaN = not computable from the inputs (e.g. P/R without images).</summary>
public sealed record AdmResults(double InceptionScore, double Fid, double SFid, double Precision, double Recall)
{
    /// <summary>The evaluator's lines ("Inception Score: 215.8370361328125", "FID: ...", ...), Python float repr.</summary>
    public string ToText()
    {
        var sb = new StringBuilder();
        sb.Append("Inception Score: ").Append(PyRepr(InceptionScore)).Append('\n');
        sb.Append("FID: ").Append(PyRepr(Fid)).Append('\n');
        sb.Append("sFID: ").Append(PyRepr(SFid)).Append('\n');
        sb.Append("Precision: ").Append(PyRepr(Precision)).Append('\n');
        sb.Append("Recall: ").Append(PyRepr(Recall)).Append('\n');
        return sb.ToString();
    }

    public string ToJson() => JsonSerializer.Serialize(new Dictionary<string, double?>
    {
        ["inception_score"] = Nullable(InceptionScore), ["fid"] = Nullable(Fid), ["sfid"] = Nullable(SFid),
        ["precision"] = Nullable(Precision), ["recall"] = Nullable(Recall),
    }, new JsonSerializerOptions { WriteIndented = true });

    static double? Nullable(double v) => double.IsFinite(v) ? v : null;

    /// <summary>Python's repr of a float: shortest round-trip digits, fixed notation for 1e-4 <= |v| < 1e16 ("1.0"), else "1e-05"/"1.5e+16"; "nan".</summary>
    public static string PyRepr(double v)
    {
        if (double.IsNaN(v)) return "nan";
        if (double.IsInfinity(v)) return v > 0 ? "inf" : "-inf";
        if (v == 0) return double.IsNegative(v) ? "-0.0" : "0.0";
        // shortest round-trip digits and decimal exponent from .NET's "R" (either notation)
        var r = Math.Abs(v).ToString("R", CultureInfo.InvariantCulture);
        int e = 0;
        var ei = r.IndexOf('E');
        if (ei >= 0) { e = int.Parse(r[(ei + 1)..], CultureInfo.InvariantCulture); r = r[..ei]; }
        var dot = r.IndexOf('.');
        string intPart = dot >= 0 ? r[..dot] : r, frac = dot >= 0 ? r[(dot + 1)..] : "";
        var digits = (intPart + frac).TrimStart('0');
        int exp10 = e + intPart.Length - 1 - ((intPart + frac).Length - (intPart + frac).TrimStart('0').Length); // exponent of the first digit
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        string sign = v < 0 ? "-" : "";
        if (exp10 >= -4 && exp10 < 16)
        {
            string s;
            if (exp10 >= 0)
            {
                var ip = digits.Length > exp10 + 1 ? digits[..(exp10 + 1)] : digits.PadRight(exp10 + 1, '0');
                var fp = digits.Length > exp10 + 1 ? digits[(exp10 + 1)..] : "0";
                s = ip + "." + fp;
            }
            else s = "0." + new string('0', -exp10 - 1) + digits;
            return sign + s;
        }
        var mant = digits.Length > 1 ? digits[0] + "." + digits[1..] : digits;
        return $"{sign}{mant}e{(exp10 < 0 ? "-" : "+")}{Math.Abs(exp10):00}";
    }
}

/// <summary>
/// One side of a comparison: statistics for FID (pool) and sFID (spatial), plus per-image features when images were given
/// (needed for IS and precision/recall). Built from an image batch (arr_0), a features file, or a reference batch with
/// mu/sigma/mu_s/sigma_s (used as given, as the evaluator's read_statistics; its arr_0, if any, still feeds precision/recall).
/// </summary>
public sealed class EvalBatch : IDisposable
{
    public required string Source { get; init; }
    public required FidStatistics Pool { get; init; }
    public required FidStatistics Spatial { get; init; }
    public FeatureSet? Features { get; init; }
    public bool StatisticsFromFile { get; init; }

    public static EvalBatch FromFeatures(FeatureSet f, string source) => new()
    {
        Source = source, Features = f,
        Pool = FidStatistics.FromActivations(f.Pool), Spatial = FidStatistics.FromActivations(f.Spatial),
    };

    public void Dispose() { Pool.Dispose(); Spatial.Dispose(); Features?.Dispose(); }
}

public static class AdmEvaluator
{
    /// <summary>
    /// Opens an npz: features file (pool/spatial/logits) -> used directly; file with "mu" -> its mu/sigma/mu_s/sigma_s,
    /// plus features of its arr_0 when present; otherwise features of arr_0. <paramref name="extractor"/> is only called
    /// when images must be run through Inception; <paramref name="cache"/> (optional) stores those features.
    /// </summary>
    public static EvalBatch Open(string npzPath, Func<InceptionExtractor>? extractor, FeatureCache? cache = null, Action<string>? log = null)
    {
        var keys = Npz.Keys(npzPath);
        if (FeatureSet.IsFeatureFile(keys))
            return EvalBatch.FromFeatures(FeatureSet.Load(npzPath), npzPath);

        FeatureSet? feats = null;
        if (keys.Contains("arr_0"))
        {
            if (extractor is null) throw new InvalidOperationException($"{npzPath}: holds images (arr_0); Inception weights are needed to compute features (--inception)");
            FeatureSet Compute()
            {
                var ex = extractor();
                log?.Invoke($"computing Inception features of {npzPath}");
                return ex.ExtractNpz(npzPath, "arr_0", new StderrProgress($"features {Path.GetFileName(npzPath)}"));
            }
            feats = cache is null ? Compute() : cache.GetOrCompute(npzPath, extractor().WeightsId, Compute, log);
        }
        return OpenWithFeatures(npzPath, feats, log, keys);
    }

    /// <summary>
    /// As <see cref="Open"/>, with the features of the file's arr_0 supplied by the caller (e.g. from a cache). A features
    /// file is read as is; a file with statistics (mu, sigma, mu_s, sigma_s) uses them as given and needs
    /// <paramref name="arr0Features"/> only for precision/recall (null: none); any other file needs them.
    /// </summary>
    public static EvalBatch OpenWithFeatures(string npzPath, FeatureSet? arr0Features, Action<string>? log = null, IReadOnlyCollection<string>? npzKeys = null)
    {
        var keys = npzKeys ?? Npz.Keys(npzPath);
        if (FeatureSet.IsFeatureFile(keys))
        {
            arr0Features?.Dispose();
            return EvalBatch.FromFeatures(FeatureSet.Load(npzPath), npzPath);
        }
        var feats = arr0Features;
        if (keys.Contains("mu"))
        {
            foreach (var k in new[] { "sigma", "mu_s", "sigma_s" })
                if (!keys.Contains(k)) throw new InvalidDataException($"{npzPath}: has 'mu' but no '{k}' (a reference batch needs mu, sigma, mu_s, sigma_s)");
            log?.Invoke($"using the statistics stored in {npzPath}");
            return new EvalBatch
            {
                Source = npzPath, Features = feats, StatisticsFromFile = true,
                Pool = new FidStatistics(Npz.LoadKey(npzPath, "mu").ToTensor(), Npz.LoadKey(npzPath, "sigma").ToTensor()),
                Spatial = new FidStatistics(Npz.LoadKey(npzPath, "mu_s").ToTensor(), Npz.LoadKey(npzPath, "sigma_s").ToTensor()),
            };
        }
        if (feats is null) throw new InvalidDataException($"{npzPath}: neither images (arr_0), features (pool/spatial/logits) nor statistics (mu/sigma); has {string.Join(", ", keys)}");
        return EvalBatch.FromFeatures(feats, npzPath);
    }

    /// <summary>IS (sample only), FID and sFID (sample vs reference), precision/recall (reference vs sample features), as evaluator.py main.</summary>
    public static AdmResults Compare(EvalBatch reference, EvalBatch sample, Action<string>? warn = null, ManifoldEstimator? manifold = null)
    {
        double isc = sample.Features is null ? double.NaN : InceptionScore.Compute(sample.Features.Logits);
        double fid = sample.Pool.FrechetDistance(reference.Pool, warn);
        double sfid = sample.Spatial.FrechetDistance(reference.Spatial, warn);
        double p = double.NaN, r = double.NaN;
        if (reference.Features is not null && sample.Features is not null)
            (p, r) = (manifold ?? new ManifoldEstimator()).Evaluate(reference.Features.Pool, sample.Features.Pool);
        else
            warn?.Invoke("precision/recall need per-image features of both batches (images or a features file); reported as nan");
        if (sample.Features is null) warn?.Invoke("Inception Score needs the sample's per-image features; reported as nan");
        return new AdmResults(isc, fid, sfid, p, r);
    }
}

using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace ReTok.Tracking;

/// <summary>
/// Evaluation provenance of a metric (issue 18.3; docs/evaluation.md "Provenance"): which evaluator at which version,
/// which network weights and reference statistics (by sha256), how images were cropped/resized, how many samples, at
/// what precision and seed. Irreproducible FID is mostly a protocol mismatch (another reference batch, another resize,
/// 10k instead of 50k samples), so <see cref="ProtocolHash"/> fingerprints exactly the fields that change the number;
/// the seed, the K of the key, the code commit and the run are recorded but left out of it.
/// </summary>
public sealed record EvalProvenance
{
    /// <summary>e.g. "ADM evaluator (guided-diffusion evaluations/evaluator.py) port".</summary>
    public required string Evaluator { get; init; }
    /// <summary>Version of the evaluation math (bumped when a change moves the numbers); part of the protocol.</summary>
    public required string EvaluatorVersion { get; init; }
    /// <summary>The code commit the run ran (runs.code_version); informative, not part of the protocol.</summary>
    public string? CodeVersion { get; init; }
    /// <summary>Feature network weights file name (e.g. pt_inception-2015-12-05-6726825d.pth) and its sha256.</summary>
    public string? Weights { get; init; }
    public string? WeightsSha256 { get; init; }
    /// <summary>Reference statistics / reference batch (e.g. run:12/VIRTUAL_imagenet256_labeled.npz) and its sha256.</summary>
    public string? Reference { get; init; }
    public string? ReferenceSha256 { get; init; }
    /// <summary>Crop/resize mode, e.g. "ADM centre crop 256, PIL bicubic".</summary>
    public string? Preprocess { get; init; }
    /// <summary>Images the metric is computed over.</summary>
    public long Samples { get; init; }
    /// <summary>Compute precision of what produced the images (fp32, bf16, ...).</summary>
    public string? Precision { get; init; }
    public long? Seed { get; init; }
    /// <summary>Tokens K where relevant (also in the key).</summary>
    public int? K { get; init; }

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>The fields that change the number, in a fixed order; the reference by content when its sha256 is known.</summary>
    public IEnumerable<(string Name, string? Value)> ProtocolFields()
    {
        yield return ("evaluator", Evaluator);
        yield return ("evaluator_version", EvaluatorVersion);
        yield return ("weights", WeightsSha256 ?? Weights);
        yield return ("reference", ReferenceSha256 ?? Reference);
        yield return ("preprocess", Preprocess);
        yield return ("samples", Samples.ToString(System.Globalization.CultureInfo.InvariantCulture));
        yield return ("precision", Precision);
    }

    /// <summary>sha256 (hex) of <see cref="ProtocolFields"/> as "name=value\n" lines.</summary>
    public string ProtocolHash() =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Concat(ProtocolFields().Select(f => $"{f.Name}={f.Value}\n")))));

    /// <summary>The first 8 hex digits: what the results table shows.</summary>
    public static string Short(string protocolHash) => protocolHash.Length > 8 ? protocolHash[..8] : protocolHash;

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static EvalProvenance? FromJson(string json)
    {
        try { return JsonSerializer.Deserialize<EvalProvenance>(json, Json); }
        catch (JsonException) { return null; }
    }

    /// <summary>One line for a tooltip.</summary>
    public string Describe() =>
        $"{Evaluator} v{EvaluatorVersion}{(CodeVersion is null ? "" : $" @ {CodeVersion}")}; weights {Weights ?? "?"} ({Sha(WeightsSha256)}); " +
        $"reference {Reference ?? "?"} ({Sha(ReferenceSha256)}); {Preprocess ?? "preprocess ?"}; {Samples} samples; precision {Precision ?? "?"}; seed {Seed?.ToString() ?? "?"}" +
        (K is { } k ? $"; K={k}" : "");

    static string Sha(string? s) => s is null ? "sha256 ?" : "sha256 " + Short(s);
}

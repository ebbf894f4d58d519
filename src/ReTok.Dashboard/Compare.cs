using System.Text.Json;
using YamlDotNet.Serialization;

namespace ReTok.Dashboard;

public sealed record ParamRow(string Key, IReadOnlyList<string?> Values, bool Differs);
public sealed record MetricRow(string Key, IReadOnlyList<double?> Values, IReadOnlyList<long?> Steps);
public sealed record CompareDto(IReadOnlyList<RunDto> Runs, IReadOnlyList<ParamRow> Params, IReadOnlyList<MetricRow> Metrics);

/// <summary>Side-by-side runs: flattened parameters (dotted keys) with the differing ones flagged, and the last value of each metric key.</summary>
public static class Compare
{
    public static async Task<CompareDto> BuildAsync(DashboardData data, IReadOnlyList<long> ids, CancellationToken ct)
    {
        var runs = await data.GetRunsAsync(ids, ct);
        var flat = runs.Select(r => Flatten(r.Parameters)).ToList();
        var keys = flat.SelectMany(f => f.Keys).Distinct().Order(StringComparer.Ordinal).ToList();
        var pars = keys.Select(k =>
        {
            var vals = flat.Select(f => f.TryGetValue(k, out var v) ? v : null).ToList();
            return new ParamRow(k, vals, vals.Distinct().Count() > 1);
        }).ToList();
        pars.Insert(0, new ParamRow("(kind)", runs.Select(r => (string?)r.Kind).ToList(), runs.Select(r => r.Kind).Distinct().Count() > 1));
        var latest = await data.LatestAsync(runs.Select(r => r.Id).ToList(), ct);
        var mkeys = latest.Values.SelectMany(d => d.Keys).Distinct().Order(StringComparer.Ordinal).ToList();
        var metrics = mkeys.Select(k => new MetricRow(k,
            runs.Select(r => latest[r.Id].TryGetValue(k, out var m) ? m.Value : (double?)null).ToList(),
            runs.Select(r => latest[r.Id].TryGetValue(k, out var m) ? m.Step : (long?)null).ToList())).ToList();
        return new CompareDto(runs.Select(RunDto.From).ToList(), pars, metrics);
    }

    /// <summary>Parameters JSON as dotted key -> JSON text of the value (objects recurse; arrays stay whole).</summary>
    public static Dictionary<string, string> Flatten(string json)
    {
        var result = new Dictionary<string, string>();
        using var doc = JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "{}" : json);
        void Walk(JsonElement e, string prefix)
        {
            if (e.ValueKind == JsonValueKind.Object && e.EnumerateObject().Any())
                foreach (var p in e.EnumerateObject()) Walk(p.Value, prefix.Length == 0 ? p.Name : $"{prefix}.{p.Name}");
            else result[prefix.Length == 0 ? "(root)" : prefix] = e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText();
        }
        Walk(doc.RootElement, "");
        return result;
    }

    /// <summary>Parameters JSON shown as YAML (the spec language), keys in stored order.</summary>
    public static string ToYaml(string json)
    {
        using var doc = JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "{}" : json);
        var obj = ToObject(doc.RootElement);
        if (obj is Dictionary<string, object?> { Count: 0 }) return "{}\n";
        return new SerializerBuilder().Build().Serialize(obj);
    }

    static object? ToObject(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().ToDictionary(p => p.Name, p => ToObject(p.Value)),
        JsonValueKind.Array => e.EnumerateArray().Select(ToObject).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out var l) ? l : e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };
}

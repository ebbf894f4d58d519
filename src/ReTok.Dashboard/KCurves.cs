using System.Text.RegularExpressions;
using ReTok.Plots;

namespace ReTok.Dashboard;

/// <summary>One metric as a function of K for one run: <c>psnr</c> (variant "") or <c>gfid</c> at <c>cfg=1.5</c>.</summary>
public sealed record KCurve(string Metric, string Variant, IReadOnlyList<(int K, double Value)> Points)
{
    public string Title => Variant.Length == 0 ? $"{Metric} vs K" : $"{Metric} vs K ({Variant})";
}

/// <summary>
/// Metrics over the number of tokens K, the paper's main figure (rFID/PSNR vs K). Key convention (docs/dashboard.md):
/// <c>NAME@k=K[,QUALIFIERS]</c>; the last step of each key counts. One home for parsing that convention (the results
/// table filters it to its metric names).
/// </summary>
public static partial class KCurves
{
    [GeneratedRegex(@"^(?<m>[A-Za-z0-9_./-]+)@k=(?<k>\d+)(?:,(?<q>.+))?$")]
    private static partial Regex KeyPattern();

    public static bool TryParseKey(string key, out string metric, out int k, out string variant)
    {
        var m = KeyPattern().Match(key);
        (metric, k, variant) = ("", 0, "");
        if (!m.Success || !int.TryParse(m.Groups["k"].Value, out k) || k < 1) return false;
        metric = m.Groups["m"].Value.ToLowerInvariant();
        variant = m.Groups["q"].Success ? m.Groups["q"].Value : "";
        return true;
    }

    /// <summary>A run's curves from its last value per key, K ascending; a metric at a single K is still a curve (one point).</summary>
    public static List<KCurve> From(IEnumerable<(string Key, double Value)> latest) =>
        latest.Select(m => TryParseKey(m.Key, out var metric, out var k, out var v) ? (metric, v, k, m.Value) : default)
            .Where(p => p.metric is { Length: > 0 })
            .GroupBy(p => (p.metric, p.v))
            .OrderBy(g => g.Key.metric, StringComparer.Ordinal).ThenBy(g => g.Key.v, StringComparer.Ordinal)
            .Select(g => new KCurve(g.Key.metric, g.Key.v, g.OrderBy(p => p.k).Select(p => (p.k, p.Value)).ToList()))
            .ToList();

    /// <summary>One chart per (metric, variant), one series per run, K on a log2 axis (drawn by Pages/KCurveCharts.razor).</summary>
    public static List<(string Title, Chart Chart)> Charts(IReadOnlyList<(string Label, List<KCurve> Curves)> runs, int max = 24)
    {
        var titles = runs.SelectMany(r => r.Curves.Select(c => c.Title)).Distinct().Order(StringComparer.Ordinal).Take(max);
        return titles.Select(title =>
        {
            var series = runs.Select(r => (r.Label, Curve: r.Curves.FirstOrDefault(c => c.Title == title)))
                .Where(x => x.Curve is not null)
                .Select(x => new Series(x.Label, x.Curve!.Points.Select(p => ((double)p.K, p.Value)).ToList())).ToList();
            return (title, new Chart(title, "tokens K", "", series, Log2X: true));
        }).ToList();
    }
}

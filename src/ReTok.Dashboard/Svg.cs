using System.Globalization;
using System.Text;

namespace ReTok.Dashboard;

/// <summary>One curve of a chart: a label (run) and its (step, value) points in step order.</summary>
public sealed record Series(string Label, IReadOnlyList<(double X, double Y)> Points);

/// <summary>
/// Inline SVG line charts (step on x, value on y, several runs overlaid). Server-side SVG instead of PNG: no native
/// drawing library in the web host, crisp at any zoom, and the numbers stay inspectable in the page source.
/// </summary>
public static class Svg
{
    static readonly string[] Colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
    const int W = 520, H = 280, L = 62, R = 12, T = 26, B = 40;

    /// <param name="log2X">x on a log2 axis with ticks at powers of two (token counts K = 1 … 480); x must be &gt; 0.</param>
    public static string LineChart(string title, IReadOnlyList<Series> series, string xLabel = "step", bool log2X = false)
    {
        if (log2X) series = series.Select(s => s with { Points = s.Points.Where(p => p.X > 0).Select(p => (Math.Log2(p.X), p.Y)).ToList() }).ToList();
        string XNum(double x) => log2X ? Html.Num(Math.Round(Math.Pow(2, x))) : Html.Num(x);
        var pts = series.SelectMany(s => s.Points).Where(p => double.IsFinite(p.X) && double.IsFinite(p.Y)).ToList();
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{Html.E(title)}\">");
        sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\"/><text x=\"{W / 2}\" y=\"16\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"600\">{Html.E(title)}</text>");
        if (pts.Count == 0)
            return sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{W / 2}\" y=\"{H / 2}\" text-anchor=\"middle\" fill=\"#888\">no finite points</text></svg>").ToString();

        var (x0, x1) = Range(pts.Min(p => p.X), pts.Max(p => p.X));
        var (y0, y1) = Range(pts.Min(p => p.Y), pts.Max(p => p.Y));
        var xt = log2X ? Enumerable.Range((int)Math.Floor(x0), (int)Math.Ceiling(x1) - (int)Math.Floor(x0) + 1).Select(i => (double)i).ToArray() : Ticks(x0, x1);
        var yt = Ticks(y0, y1);
        (x0, x1) = (Math.Min(x0, xt[0]), Math.Max(x1, xt[^1]));
        (y0, y1) = (Math.Min(y0, yt[0]), Math.Max(y1, yt[^1]));
        // Halves: x1 - x0 overflows to infinity for values near ±1.8e308 (a diverged metric), halves never do.
        double Px(double x) => L + (x / 2 - x0 / 2) / (x1 / 2 - x0 / 2) * (W - L - R);
        double Py(double y) => H - B - (y / 2 - y0 / 2) / (y1 / 2 - y0 / 2) * (H - T - B);

        sb.Append("<g font-size=\"10\" fill=\"#555\">");
        foreach (var t in yt)
            sb.Append(F($"<line x1=\"{L}\" x2=\"{W - R}\" y1=\"{Py(t):F1}\" y2=\"{Py(t):F1}\" stroke=\"#eee\"/><text x=\"{L - 4}\" y=\"{Py(t) + 3:F1}\" text-anchor=\"end\">{Html.Num(t)}</text>"));
        foreach (var t in xt)
            sb.Append(F($"<line x1=\"{Px(t):F1}\" x2=\"{Px(t):F1}\" y1=\"{T}\" y2=\"{H - B}\" stroke=\"#f3f3f3\"/><text x=\"{Px(t):F1}\" y=\"{H - B + 13}\" text-anchor=\"middle\">{XNum(t)}</text>"));
        sb.Append(F($"<text x=\"{(L + W - R) / 2}\" y=\"{H - 6}\" text-anchor=\"middle\">{Html.E(xLabel)}</text></g>"));
        sb.Append(F($"<rect x=\"{L}\" y=\"{T}\" width=\"{W - L - R}\" height=\"{H - T - B}\" fill=\"none\" stroke=\"#999\"/>"));

        for (var i = 0; i < series.Count; i++)
        {
            var color = Colors[i % Colors.Length];
            var ps = series[i].Points.Where(p => double.IsFinite(p.X) && double.IsFinite(p.Y)).ToList();
            if (ps.Count == 1)
                sb.Append(F($"<circle class=\"pt\" cx=\"{Px(ps[0].X):F1}\" cy=\"{Py(ps[0].Y):F1}\" r=\"3\" fill=\"{color}\"><title>{Html.E(series[i].Label)}: {Html.Num(ps[0].Y)} @ {XNum(ps[0].X)}</title></circle>"));
            else if (ps.Count > 1)
            {
                sb.Append(F($"<polyline class=\"curve\" data-series=\"{Html.E(series[i].Label)}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\""));
                foreach (var p in Decimate(ps, 800)) sb.Append(F($"{Px(p.X):F1},{Py(p.Y):F1} "));
                sb.Append("\"/>");
                if (log2X)   // a handful of K values: mark each measured point, with its value on hover
                    foreach (var p in ps)
                        sb.Append(F($"<circle class=\"pt\" cx=\"{Px(p.X):F1}\" cy=\"{Py(p.Y):F1}\" r=\"2.5\" fill=\"{color}\"><title>{Html.E(series[i].Label)}: {Html.Num(p.Y)} @ K={XNum(p.X)}</title></circle>"));
            }
            if (series.Count > 1 || series[i].Label.Length > 0)
                sb.Append(F($"<g font-size=\"10\"><rect x=\"{L + 8}\" y=\"{T + 6 + 13 * i}\" width=\"10\" height=\"3\" fill=\"{color}\"/><text x=\"{L + 22}\" y=\"{T + 10 + 13 * i}\" fill=\"#333\">{Html.E(series[i].Label)}</text></g>"));
        }
        return sb.Append("</svg>").ToString();
    }

    static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    static (double, double) Range(double lo, double hi)
    {
        if (hi > lo) return (lo, hi);
        var pad = Math.Abs(lo) > 0 ? Math.Abs(lo) * 0.05 : 1;
        return (lo - pad, hi + pad);
    }

    /// <summary>
    /// About five "nice" ticks (1, 2, 5 x 10^n) covering [lo, hi], ascending and finite for any input: bounds near
    /// ±double.MaxValue (hi - lo overflows), NaN or infinite bounds (ignored) and lo == hi included.
    /// </summary>
    public static double[] Ticks(double lo, double hi)
    {
        if (!double.IsFinite(lo)) lo = double.IsFinite(hi) ? hi : 0;
        if (!double.IsFinite(hi)) hi = lo;
        if (hi < lo) (lo, hi) = (hi, lo);
        if (hi == lo) (lo, hi) = Range(lo, hi);
        var raw = (hi / 2 - lo / 2) / 2.5; // (hi - lo) / 5 without overflowing
        var mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        var step = new[] { 1, 2, 5, 10 }.Select(m => m * mag).FirstOrDefault(s => s >= raw && double.IsFinite(s), raw);
        var k0 = Math.Floor(lo / step); // ticks are (k0 + i) * step; the first can overflow to -inf near -MaxValue
        var ticks = new List<double>();
        for (var i = 0; i < 24 && ticks.Count < 20; i++)
        {
            var v = (k0 + i) * step;
            if (double.IsNegativeInfinity(v)) continue;
            if (!double.IsFinite(v) || v > hi + step * 0.5) break;
            ticks.Add(v);
        }
        if (ticks.Count == 0) ticks.Add(lo);
        if (ticks.Count < 2) ticks.Add(double.IsFinite(ticks[0] + step) ? ticks[0] + step : hi > ticks[0] ? hi : ticks[0] + Math.Abs(ticks[0]) * 0.05 + 1);
        return ticks.ToArray();
    }

    /// <summary>Keeps at most about <paramref name="max"/> points (min and max of each bucket, so spikes survive).</summary>
    static IEnumerable<(double X, double Y)> Decimate(List<(double X, double Y)> ps, int max)
    {
        if (ps.Count <= max) return ps;
        var per = (int)Math.Ceiling(ps.Count / (max / 2.0));
        var result = new List<(double, double)>();
        for (var i = 0; i < ps.Count; i += per)
        {
            var chunk = ps.Skip(i).Take(per).ToList();
            var mn = chunk.MinBy(p => p.Y);
            var mx = chunk.MaxBy(p => p.Y);
            if (mn.X <= mx.X) { result.Add(mn); if (mx != mn) result.Add(mx); }
            else { result.Add(mx); result.Add(mn); }
        }
        return result;
    }
}

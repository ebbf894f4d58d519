using System.Globalization;
using System.Net;
using System.Text;
using SkiaSharp;

namespace ReTok.Plots;

/// <summary>One curve of a chart: a name (run, metric, "best") and its (x, y) points in x order.</summary>
public sealed record Series(string Name, IReadOnlyList<(double X, double Y)> Points);

/// <summary>
/// The one plotting helper: a line chart of several series, drawn as inline SVG for the dashboard (no native drawing
/// library in the web host, crisp at any zoom, the numbers stay inspectable in the page source) and as PNG for job
/// artifacts (SkiaSharp). Both renderers take ranges, ticks and pixel positions from the same <see cref="Layout"/>,
/// so a curve reads the same on a page and in an artifact.
/// </summary>
/// <param name="Log2X">x on a log2 axis with ticks at powers of two (token counts K = 1 … 480); x must be &gt; 0.</param>
public sealed record Chart(string Title, string XLabel, string YLabel, IReadOnlyList<Series> Series, bool Log2X = false)
{
    static readonly string[] Colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
    const int L = 62, R = 12, T = 26, B = 40;

    /// <summary>The dashboard's size; PNG panels pass their own.</summary>
    public const int SvgWidth = 520, SvgHeight = 280;

    /// <summary>Ranges, ticks and the data -> pixel mapping for one size; x already on the log2 axis when asked.</summary>
    sealed class Layout
    {
        public readonly int W, H;
        public readonly IReadOnlyList<Series> Series;
        public readonly double[] XTicks = [], YTicks = [];
        public readonly bool Empty;
        readonly double _x0, _x1, _y0, _y1;
        readonly bool _log2X;

        public Layout(Chart c, int w, int h)
        {
            (W, H, _log2X) = (w, h, c.Log2X);
            Series = (c.Log2X ? c.Series.Select(s => s with { Points = s.Points.Where(p => p.X > 0).Select(p => (Math.Log2(p.X), p.Y)).ToList() }) : c.Series)
                .Select(s => s with { Points = s.Points.Where(p => double.IsFinite(p.X) && double.IsFinite(p.Y)).ToList() }).ToList();
            var pts = Series.SelectMany(s => s.Points).ToList();
            Empty = pts.Count == 0;
            if (Empty) return;
            (_x0, _x1) = Range(pts.Min(p => p.X), pts.Max(p => p.X));
            (_y0, _y1) = Range(pts.Min(p => p.Y), pts.Max(p => p.Y));
            XTicks = c.Log2X ? Enumerable.Range((int)Math.Floor(_x0), (int)Math.Ceiling(_x1) - (int)Math.Floor(_x0) + 1).Select(i => (double)i).ToArray() : Ticks(_x0, _x1);
            YTicks = Ticks(_y0, _y1);
            (_x0, _x1) = (Math.Min(_x0, XTicks[0]), Math.Max(_x1, XTicks[^1]));
            (_y0, _y1) = (Math.Min(_y0, YTicks[0]), Math.Max(_y1, YTicks[^1]));
        }

        // Halves: x1 - x0 overflows to infinity for values near ±1.8e308 (a diverged metric), halves never do.
        public double Px(double x) => L + (x / 2 - _x0 / 2) / (_x1 / 2 - _x0 / 2) * (W - L - R);
        public double Py(double y) => H - B - (y / 2 - _y0 / 2) / (_y1 / 2 - _y0 / 2) * (H - T - B);
        public string XNum(double x) => _log2X ? Num(Math.Round(Math.Pow(2, x))) : Num(x);

        /// <summary>
        /// Top-left pixel of the legend box (one row per series): of the plot's four corners, the one whose box covers
        /// the fewest samples of the curves (matplotlib's loc="best"), top-left on ties, so the legend does not hide data.
        /// </summary>
        public (float X, float Y) LegendAt(int rowHeight, double charWidth)
        {
            double bw = 22 + charWidth * Series.Max(s => s.Name.Length), bh = 6 + rowHeight * Series.Count;
            var samples = new List<(double X, double Y)>();
            foreach (var s in Series)
            {
                var ps = Decimate(s.Points, 400).ToList();
                if (ps.Count == 1) samples.Add((Px(ps[0].X), Py(ps[0].Y)));
                for (var i = 1; i < ps.Count; i++)
                {
                    var (a, b) = ((X: Px(ps[i - 1].X), Y: Py(ps[i - 1].Y)), (X: Px(ps[i].X), Y: Py(ps[i].Y)));
                    int n = (int)Math.Clamp(Math.Ceiling(Math.Sqrt((b.X - a.X) * (b.X - a.X) + (b.Y - a.Y) * (b.Y - a.Y)) / 3), 1, 400);   // every 3 px
                    for (var k = 0; k <= n; k++) samples.Add((a.X + k * (b.X - a.X) / n, a.Y + k * (b.Y - a.Y) / n));
                }
            }
            (double X, double Y)[] corners = [(L + 4, T + 2), (W - R - 4 - bw, T + 2), (L + 4, H - B - 2 - bh), (W - R - 4 - bw, H - B - 2 - bh)];
            var best = corners.MinBy(c => samples.Count(p => p.X >= c.X - 6 && p.X <= c.X + bw + 6 && p.Y >= c.Y - 6 && p.Y <= c.Y + bh + 6));   // dots reach 6 px
            return ((float)best.X, (float)best.Y);
        }
    }

    /// <summary>Inline SVG (the dashboard's pages).</summary>
    public string ToSvg()
    {
        var g = new Layout(this, SvgWidth, SvgHeight);
        var (W, H) = (g.W, g.H);
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{E(Title)}\">");
        sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\"/><text x=\"{W / 2}\" y=\"16\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"600\">{E(Title)}</text>");
        if (g.Empty)
            return sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{W / 2}\" y=\"{H / 2}\" text-anchor=\"middle\" fill=\"#888\">no finite points</text></svg>").ToString();

        sb.Append("<g font-size=\"10\" fill=\"#555\">");
        foreach (var t in g.YTicks)
            sb.Append(F($"<line x1=\"{L}\" x2=\"{W - R}\" y1=\"{g.Py(t):F1}\" y2=\"{g.Py(t):F1}\" stroke=\"#eee\"/><text x=\"{L - 4}\" y=\"{g.Py(t) + 3:F1}\" text-anchor=\"end\">{Num(t)}</text>"));
        foreach (var t in g.XTicks)
            sb.Append(F($"<line x1=\"{g.Px(t):F1}\" x2=\"{g.Px(t):F1}\" y1=\"{T}\" y2=\"{H - B}\" stroke=\"#f3f3f3\"/><text x=\"{g.Px(t):F1}\" y=\"{H - B + 13}\" text-anchor=\"middle\">{g.XNum(t)}</text>"));
        sb.Append(F($"<text x=\"{(L + W - R) / 2}\" y=\"{H - 6}\" text-anchor=\"middle\">{E(XLabel)}</text>"));
        if (YLabel.Length > 0)
            sb.Append(F($"<text transform=\"translate(12 {(T + H - B) / 2}) rotate(-90)\" text-anchor=\"middle\">{E(YLabel)}</text>"));
        sb.Append("</g>");
        sb.Append(F($"<rect x=\"{L}\" y=\"{T}\" width=\"{W - L - R}\" height=\"{H - T - B}\" fill=\"none\" stroke=\"#999\"/>"));

        var (lx, ly) = g.LegendAt(13, 5.5);
        for (var i = 0; i < g.Series.Count; i++)
        {
            var color = Colors[i % Colors.Length];
            var s = g.Series[i];
            var ps = s.Points;
            if (ps.Count == 1)
                sb.Append(F($"<circle class=\"pt\" cx=\"{g.Px(ps[0].X):F1}\" cy=\"{g.Py(ps[0].Y):F1}\" r=\"3\" fill=\"{color}\"><title>{E(s.Name)}: {Num(ps[0].Y)} @ {g.XNum(ps[0].X)}</title></circle>"));
            else if (ps.Count > 1)
            {
                sb.Append(F($"<polyline class=\"curve\" data-series=\"{E(s.Name)}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\""));
                foreach (var p in Decimate(ps, 800)) sb.Append(F($"{g.Px(p.X):F1},{g.Py(p.Y):F1} "));
                sb.Append("\"/>");
                if (Log2X)   // a handful of K values: mark each measured point, with its value on hover
                    foreach (var p in ps)
                        sb.Append(F($"<circle class=\"pt\" cx=\"{g.Px(p.X):F1}\" cy=\"{g.Py(p.Y):F1}\" r=\"2.5\" fill=\"{color}\"><title>{E(s.Name)}: {Num(p.Y)} @ K={g.XNum(p.X)}</title></circle>"));
            }
            if (g.Series.Count > 1 || s.Name.Length > 0)
                sb.Append(F($"<g class=\"legend\" font-size=\"10\"><rect x=\"{lx + 4:F1}\" y=\"{ly + 4 + 13 * i:F1}\" width=\"10\" height=\"3\" fill=\"{color}\"/>"))
                  .Append(F($"<text x=\"{lx + 18:F1}\" y=\"{ly + 8 + 13 * i:F1}\" fill=\"#333\">{E(s.Name)}</text></g>"));
        }
        return sb.Append("</svg>").ToString();
    }

    /// <summary>Draws the chart into a w x h box at the canvas origin (the same layout as <see cref="ToSvg"/>).</summary>
    public void Draw(SKCanvas canvas, int w, int h)
    {
        var g = new Layout(this, w, h);
        using var text = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var grey = new SKPaint { Color = new SKColor(0x55, 0x55, 0x55), IsAntialias = true };
        using var title = new SKFont(SKTypeface.Default, 14);
        using var small = new SKFont(SKTypeface.Default, 11);
        canvas.DrawText(Title, w / 2f, 17, SKTextAlign.Center, title, text);
        if (g.Empty)
        {
            canvas.DrawText("no finite points", w / 2f, h / 2f, SKTextAlign.Center, small, grey);
            return;
        }
        using var grid = new SKPaint { Color = new SKColor(0xee, 0xee, 0xee), StrokeWidth = 1, Style = SKPaintStyle.Stroke };
        foreach (var t in g.YTicks)
        {
            canvas.DrawLine(L, (float)g.Py(t), w - R, (float)g.Py(t), grid);
            canvas.DrawText(Num(t), L - 4, (float)g.Py(t) + 4, SKTextAlign.Right, small, grey);
        }
        foreach (var t in g.XTicks)
        {
            canvas.DrawLine((float)g.Px(t), T, (float)g.Px(t), h - B, grid);
            canvas.DrawText(g.XNum(t), (float)g.Px(t), h - B + 14, SKTextAlign.Center, small, grey);
        }
        canvas.DrawText(XLabel, (L + w - R) / 2f, h - 6, SKTextAlign.Center, small, grey);
        if (YLabel.Length > 0)
        {
            canvas.Save();
            canvas.Translate(13, (T + h - B) / 2f);
            canvas.RotateDegrees(-90);
            canvas.DrawText(YLabel, 0, 0, SKTextAlign.Center, small, grey);
            canvas.Restore();
        }
        using var frame = new SKPaint { Color = new SKColor(0x99, 0x99, 0x99), StrokeWidth = 1, Style = SKPaintStyle.Stroke };
        canvas.DrawRect(L, T, w - L - R, h - T - B, frame);

        var (lx, ly) = g.LegendAt(14, 6);
        for (var i = 0; i < g.Series.Count; i++)
        {
            var color = SKColor.Parse(Colors[i % Colors.Length]);
            var ps = g.Series[i].Points;
            using var line = new SKPaint { Color = color, StrokeWidth = 2, Style = SKPaintStyle.Stroke, IsAntialias = true };
            using var dot = new SKPaint { Color = color, Style = SKPaintStyle.Fill, IsAntialias = true };
            if (ps.Count > 1)
            {
                using var path = new SKPath();
                var d = Decimate(ps.ToList(), 2 * w).ToList();
                path.MoveTo((float)g.Px(d[0].X), (float)g.Py(d[0].Y));
                foreach (var p in d.Skip(1)) path.LineTo((float)g.Px(p.X), (float)g.Py(p.Y));
                canvas.DrawPath(path, line);
            }
            // few points (K values, CFG scales, a marked best): each one is a measurement worth a dot; a lone one is bigger
            if (ps.Count <= 64)
                foreach (var p in ps) canvas.DrawCircle((float)g.Px(p.X), (float)g.Py(p.Y), ps.Count == 1 ? 6 : 4, dot);
            if (g.Series.Count > 1 || g.Series[i].Name.Length > 0)
            {
                canvas.DrawRect(lx + 4, ly + 4 + 14 * i, 10, 3, dot);
                canvas.DrawText(g.Series[i].Name, lx + 18, ly + 9 + 14 * i, SKTextAlign.Left, small, text);
            }
        }
    }

    /// <summary>One chart as a w x h PNG file (written atomically).</summary>
    public void SavePng(string path, int w = 640, int h = 420) => SavePng(path, "", [this], 1, w, h);

    /// <summary>Several charts as panels of one PNG, <paramref name="cols"/> per row, under a heading when it is not empty.</summary>
    public static void SavePng(string path, string heading, IReadOnlyList<Chart> panels, int cols, int w, int h)
    {
        int rows = Math.Max(1, (panels.Count + cols - 1) / cols), top = heading.Length > 0 ? 30 : 0;
        using var surface = SKSurface.Create(new SKImageInfo(cols * w, rows * h + top));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        if (heading.Length > 0)
        {
            using var font = new SKFont(SKTypeface.Default, 16);
            using var paint = new SKPaint { Color = SKColors.Black, IsAntialias = true };
            canvas.DrawText(heading, 10, 21, SKTextAlign.Left, font, paint);
        }
        for (var i = 0; i < panels.Count; i++)
        {
            canvas.Save();
            canvas.Translate((i % cols) * w, top + (i / cols) * h);
            panels[i].Draw(canvas, w, h);
            canvas.Restore();
        }
        using var img = surface.Snapshot();
        using var data = img.Encode(SKEncodedImageFormat.Png, 100);
        // atomic: a reader (or a resumed run) never sees half a PNG
        var tmp = $"{path}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var st = File.Create(tmp)) data.SaveTo(st);
            File.Move(tmp, path, overwrite: true);
        }
        finally { File.Delete(tmp); }
    }

    /// <summary>A number as the pages print it: short, invariant, exponent for very large or small magnitudes.</summary>
    public static string Num(double d) => double.IsNaN(d) ? "NaN" : Math.Abs(d) >= 1e5 || (Math.Abs(d) < 1e-3 && d != 0)
        ? d.ToString("0.###e+0", CultureInfo.InvariantCulture) : d.ToString("0.####", CultureInfo.InvariantCulture);

    static string E(string s) => WebUtility.HtmlEncode(s);

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
    static IEnumerable<(double X, double Y)> Decimate(IReadOnlyList<(double X, double Y)> ps, int max)
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

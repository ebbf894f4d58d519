using System.Text.RegularExpressions;
using ReTok.Plots;
using SkiaSharp;

namespace ReTok.Tests.Plots;

/// <summary>Issue 16.5: one plotting helper; the PNG of a job artifact and the dashboard's SVG come from one layout.</summary>
public sealed class ChartTests
{
    static readonly Chart Curve = new("gFID vs CFG scale", "CFG scale", "gFID",
        [new Series("gFID", [(1.0, 9.5), (1.5, 7.25), (2.0, 8.0)]), new Series("best 1.5", [(1.5, 7.25)])]);

    [Fact]
    public void Png_and_panels_have_the_asked_size_and_are_not_blank()
    {
        var dir = Directory.CreateTempSubdirectory("chart-").FullName;
        try
        {
            var one = Path.Combine(dir, "one.png");
            Curve.SavePng(one);
            using (var bmp = SKBitmap.Decode(one))
            {
                Assert.Equal((640, 420), (bmp.Width, bmp.Height));
                Assert.True(bmp.Pixels.Distinct().Count() > 4, "the PNG is blank");
            }
            var grid = Path.Combine(dir, "grid.png");
            Chart.SavePng(grid, "heading", [Curve, Curve, Curve, Curve], cols: 3, w: 420, h: 320);
            using var g = SKBitmap.Decode(grid);
            Assert.Equal((1260, 2 * 320 + 30), (g.Width, g.Height));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Svg_has_a_curve_per_series_and_the_y_label_only_when_given()
    {
        var svg = Curve.ToSvg();
        Assert.Single(Regex.Matches(svg, "<polyline class=\"curve\""));
        Assert.Single(Regex.Matches(svg, "<circle class=\"pt\""));   // the lone "best" point
        Assert.Contains(">gFID</text>", svg);
        Assert.Contains(">CFG scale</text>", svg);
        Assert.DoesNotContain("rotate(-90)", (Curve with { YLabel = "" }).ToSvg());
    }

    [Fact]
    public void The_legend_goes_to_the_corner_the_curves_leave_free()
    {
        static (double X, double Y) FirstLegendRect(string svg)
        {
            var m = Regex.Match(svg, "<g class=\"legend\" font-size=\"10\"><rect x=\"([0-9.]+)\" y=\"([0-9.]+)\"");
            Assert.True(m.Success, "no legend");
            return (double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), double.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
        }
        // rFID falling with K: the curve starts top-left and ends bottom-right, so the legend belongs top-right
        var falling = new Chart("rFID vs K", "K", "rFID", [new Series("ours", [(32, 9.0), (64, 4.0), (128, 2.0), (256, 1.0)]),
            new Series("baseline", [(32, 8.5), (64, 4.5), (128, 2.5), (256, 1.2)])], Log2X: true);
        var (x, y) = FirstLegendRect(falling.ToSvg());
        Assert.True(x > Chart.SvgWidth / 2 && y < Chart.SvgHeight / 2, $"legend at ({x}, {y}), not top-right");
        // two points only (the experiment page's rFID at K = 32 and 256): the segment between them counts, not just its ends
        (x, y) = FirstLegendRect(new Chart("rFID vs K", "K", "rFID", [new Series("#2 rec-eval", [(32, 2.5), (256, 1.0)])], Log2X: true).ToSvg());
        Assert.True(x > Chart.SvgWidth / 2 && y < Chart.SvgHeight / 2, $"legend at ({x}, {y}), not top-right");
        // PSNR rising with K: top-left is free and stays the choice
        var rising = falling with { Series = falling.Series.Select(s => s with { Points = s.Points.Select(p => (p.X, 20 - p.Y)).ToList() }).ToList() };
        (x, y) = FirstLegendRect(rising.ToSvg());
        Assert.True(x < Chart.SvgWidth / 2 && y < Chart.SvgHeight / 2, $"legend at ({x}, {y}), not top-left");
    }
}

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
}

using System.Text.RegularExpressions;
using ReTok.Dashboard;
using ReTok.Plots;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>Issue 19.1: metrics of the form NAME@k=K drawn against K (log2 axis) on the run, compare and experiment pages.</summary>
public sealed class KCurveTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    [Fact]
    public void Keys_group_by_metric_and_variant_in_K_order()
    {
        var curves = KCurves.From([("psnr@k=64", 20.0), ("psnr@k=8", 12.0), ("PSNR@k=16", 15.0), ("gfid@k=256,cfg=1.5", 2.3), ("loss", 1.0),
            ("rfid@k=0", 9.0), ("gfid@k=128,cfg=1.5", 3.1)]);
        Assert.Equal(new[] { "gfid vs K (cfg=1.5)", "psnr vs K" }, curves.Select(c => c.Title));
        Assert.Equal(new[] { (8, 12.0), (16, 15.0), (64, 20.0) }, curves[1].Points);
        Assert.Equal(new[] { 128, 256 }, curves[0].Points.Select(p => p.K));
        Assert.False(KCurves.TryParseKey("rfid@k=", out _, out _, out _));
        Assert.True(ResultsTable.TryParseKey("gfid@k=256,cfg=1.5", out var m, out var k, out var v) && (m, k, v) == ("gfid", 256, "cfg=1.5"));
        Assert.False(ResultsTable.TryParseKey("psnr@k=64", out _, out _, out _));   // the paper table keeps its five metrics
    }

    [Fact]
    public void Log2_axis_ticks_are_the_powers_of_two_and_points_keep_their_K()
    {
        var svg = new Chart("psnr vs K", "tokens K", "", [new Series("a", [(8, 12), (16, 15), (32, 18), (64, 20)])], Log2X: true).ToSvg();
        var ticks = Regex.Matches(svg, "text-anchor=\"middle\">(\\d+)</text>").Select(x => x.Groups[1].Value).ToList();
        Assert.Equal(new[] { "8", "16", "32", "64" }, ticks);
        Assert.Equal(4, Regex.Matches(svg, "<circle class=\"pt\"").Count);
        Assert.Contains("20 @ K=64", svg);
        // equal spacing on the page: log2 makes 8 -> 16 as wide as 32 -> 64
        var xs = Regex.Matches(svg, "<circle class=\"pt\" cx=\"([0-9.]+)\"").Select(x => double.Parse(x.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(xs[1] - xs[0], xs[3] - xs[2], 1);
    }

    [Fact]
    public async Task Run_compare_and_experiment_pages_draw_metrics_against_K()
    {
        var exp = await f.Tracker.EnsureExperimentAsync("k-curves");
        async Task<long> Eval(string name, double offset)
        {
            var id = (await f.Tracker.Runs.InsertAsync(new Run { Name = name, Kind = "eval-reconstruction", Status = RunStatus.Succeeded, ExperimentId = exp, Parameters = "{}" })).Id;
            await f.Tracker.LogMetricsAsync(id, new[] { 8, 16, 32, 64 }.Select(k => new MetricValue($"psnr@k={k}", 0, offset + Math.Log2(k))).Append(new MetricValue("rec", 0, 0.1)).ToList());
            return id;
        }
        long a = await Eval("retok-a", 10), b = await Eval("retok-b", 12);
        using var c = f.Client(UserRole.Viewer);

        var run = await c.GetStringAsync($"/runs/{a}");
        var kBlock = Regex.Match(run, "<div class=\"charts\" id=\"k-curves\">(.*?)</div>", RegexOptions.Singleline).Groups[1].Value;
        Assert.Contains("data-key=\"psnr vs K\"", kBlock);
        Assert.Equal(4, Regex.Matches(kBlock, "<circle class=\"pt\"").Count);
        Assert.Contains("16 @ K=64", kBlock);   // 10 + log2(64)
        Assert.DoesNotContain("data-key=\"psnr@k=8\"", run);   // no single-dot step chart per K any more
        Assert.Contains("data-key=\"rec\"", run);              // other metrics keep their step charts

        var cmp = await c.GetStringAsync($"/compare?ids={a},{b}");
        Assert.Contains("Metrics vs K", cmp);
        Assert.Contains($"data-series=\"#{a} retok-a\"", cmp);
        Assert.Contains($"data-series=\"#{b} retok-b\"", cmp);

        var page = await c.GetStringAsync("/experiments/k-curves");
        var expBlock = Regex.Match(page, "id=\"k-curves\">(.*?)</div>", RegexOptions.Singleline).Groups[1].Value;
        Assert.Contains($"data-series=\"#{a} retok-a\"", expBlock);
        Assert.Contains($"data-series=\"#{b} retok-b\"", expBlock);
        Assert.Contains("18 @ K=64", expBlock);   // 12 + log2(64), run b
    }
}

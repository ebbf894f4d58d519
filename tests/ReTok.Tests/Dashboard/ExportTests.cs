using System.Net;
using ReTok.Dashboard;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>Issue 19.7: the results table as CSV / Markdown / LaTeX and a run's metrics as CSV, from the API and the pages.</summary>
public sealed class ExportTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    [Fact]
    public async Task Results_table_exports_as_csv_markdown_and_latex_with_the_page_numbers()
    {
        using var c = f.Client(UserRole.Viewer);
        var csv = await c.GetAsync("/api/experiments/paper/results/export?format=csv");
        Assert.Equal(HttpStatusCode.OK, csv.StatusCode);
        Assert.Equal("text/csv", csv.Content.Headers.ContentType!.MediaType);
        Assert.Contains("results-paper.csv", csv.Content.Headers.ContentDisposition!.ToString());
        var lines = (await csv.Content.ReadAsStringAsync()).Split("\r\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("tokenizer,rfid,rfid_run,generator,tokens,gfid,gfid_run,is,precision,recall,variant,rfid_protocol,gfid_protocol," +
            "rfid_other,rfid_other_run,rfid_other_protocol,gfid_other,gfid_other_run,gfid_other_protocol", lines[0]);
        // the same row as the JSON table: best gFID over variants, rFID from the eval run by lineage, full precision
        Assert.Contains($"ReTok-S-B,1.01,{f.RecRun},LlamaGen-L,256,2.66,{f.GenRun},231.7,0.82,0.57,cfg=1.5,,,,,,,,", lines);   // no provenance recorded
        Assert.Contains($"ReTok-S-B,2.5,{f.RecRun},,32,,,,,,,,,,,,,,", lines);

        var md = await c.GetStringAsync("/api/experiments/paper/results/export?format=markdown");
        Assert.StartsWith("| Tokenizer | rFID↓ |", md);
        Assert.Contains("| ReTok-S-B | 1.01 | LlamaGen-L | 256 | 2.66 | 231.7 | 0.82 | 0.57 | cfg=1.5 |", md);

        var tex = await c.GetStringAsync("/api/experiments/paper/results/export?format=latex");
        Assert.Contains("\\toprule", tex);
        Assert.Contains("ReTok-S-B & 1.01 & LlamaGen-L & 256 & 2.66 & 231.7 & 0.82 & 0.57 & cfg=1.5 \\\\", tex);

        var bad = await c.GetAsync("/api/results/export?format=xlsx");
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("format: expected csv, markdown or latex, got 'xlsx'", await bad.Content.ReadAsStringAsync());

        var page = await c.GetStringAsync("/experiments/paper");
        Assert.Contains("href=\"/api/experiments/paper/results/export?format=latex\"", page);
    }

    [Fact]
    public void Exports_escape_what_each_format_would_misread()
    {
        var row = new ResultRow("=cmd|'/C calc'!A0, \"x\"", "gen_1 & 50%", 256, "a|b", new ResultCell(1.5, 7, "rfid@k=256"), null, null, null, null);
        var csv = Exports.Csv([row]).Split("\r\n")[1];
        Assert.StartsWith("\"'=cmd|'/C calc'!A0, \"\"x\"\"\",1.5,7,gen_1 & 50%,256", csv);   // formula disarmed, quotes doubled
        Assert.Contains("| a\\|b |", Exports.Markdown([row]));
        Assert.Contains("gen\\_1 \\& 50\\%", Exports.Latex([row]));
    }

    [Fact]
    public async Task Run_metrics_export_every_point_as_csv()
    {
        using var c = f.Client(UserRole.Viewer);
        var body = await c.GetStringAsync($"/api/runs/{f.TokRun}/metrics.csv");
        var lines = body.Split("\r\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("key,step,value,time", lines[0]);
        var loss = lines.Skip(1).Where(l => l.StartsWith("train/loss,")).ToList();
        Assert.Equal(50, loss.Count);
        var last = loss[^1].Split(',');
        Assert.Equal("490", last[1]);
        Assert.Equal(2.0 / (1 + 0.2 * 49), double.Parse(last[2], System.Globalization.CultureInfo.InvariantCulture));   // "R": round-trips exactly
        Assert.Equal(HttpStatusCode.NotFound, (await c.GetAsync("/api/runs/999999/metrics.csv")).StatusCode);
        Assert.Contains($"href=\"/api/runs/{f.TokRun}/metrics.csv\"", await c.GetStringAsync($"/runs/{f.TokRun}"));
    }
}

using System.Text.Json;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>
/// Issue 18.3 through the API: each rFID/gFID cell carries its evaluation protocol (short hash + provenance), and a
/// column never mixes protocols: a number under another protocol than the column's majority goes to "other protocol".
/// </summary>
public sealed class ProvenanceTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    static EvalProvenance Adm(long samples, long seed) => new()
    {
        Evaluator = "ADM evaluator (guided-diffusion evaluations/evaluator.py) port", EvaluatorVersion = "1",
        Weights = "pt_inception-2015-12-05-6726825d.pth", WeightsSha256 = new string('a', 64),
        Reference = "run:1/VIRTUAL_imagenet256_labeled.npz", ReferenceSha256 = new string('b', 64),
        Preprocess = "ADM centre crop 256, PIL bicubic", Samples = samples, Precision = "fp32", Seed = seed, K = 32,
    };

    async Task<long> RunAsync(long exp, string name, EvalProvenance p, params (string Key, double Value)[] metrics)
    {
        var tags = name.Split('/') is [var tok, var gen] ? new List<string> { $"tokenizer={tok}", $"generator={gen}" } : [$"tokenizer={name}"];
        var id = (await f.Tracker.Runs.InsertAsync(new Run { Kind = "selftest", Name = name, Status = RunStatus.Succeeded, ExperimentId = exp, Tags = tags })).Id;
        await f.Tracker.LogMetricsAsync(id, metrics.Select(m => new MetricValue(m.Key, 0, m.Value)).ToList());
        await f.Tracker.RecordProvenanceAsync(id, metrics.Select(m => m.Key).ToList(), p);
        return id;
    }

    [Fact]
    public async Task Results_show_each_cells_protocol_and_keep_other_protocols_out_of_the_column()
    {
        var exp = await f.Tracker.EnsureExperimentAsync("protocols");
        var (full, tenK) = (Adm(50000, 0), Adm(10000, 0));
        var r1 = await RunAsync(exp, "T1", full, ("rfid@k=32", 1.0));
        await RunAsync(exp, "T2", full with { Seed = 5 }, ("rfid@k=32", 2.0));      // another seed: the same protocol
        var r3 = await RunAsync(exp, "T1", tenK, ("rfid@k=32", 0.5));               // newer, but 10k samples
        var g1 = await RunAsync(exp, "T1/G", full, ("gfid@k=32", 3.0), ("is@k=32", 100));
        var g2 = await RunAsync(exp, "T1/G", tenK, ("gfid@k=32", 2.0), ("is@k=32", 150));   // lower gFID, other protocol
        await RunAsync(exp, "T2/G", full with { Seed = 9 }, ("gfid@k=32", 4.0));
        var p50 = EvalProvenance.Short(full.ProtocolHash());
        var p10 = EvalProvenance.Short(tenK.ProtocolHash());

        using var c = f.Client(UserRole.Viewer);
        using var doc = JsonDocument.Parse(await c.GetStringAsync("/api/experiments/protocols/results"));
        var rows = doc.RootElement.EnumerateArray().ToList();
        Assert.Equal(2, rows.Count);
        var t1 = rows.Single(r => r.GetProperty("tokenizer").GetString() == "T1");
        Assert.Equal(1.0, t1.GetProperty("r_fid").GetProperty("value").GetDouble());
        Assert.Equal(r1, t1.GetProperty("r_fid").GetProperty("run_id").GetInt64());
        Assert.Equal(p50, t1.GetProperty("r_fid").GetProperty("protocol").GetString());
        Assert.Equal(r3, t1.GetProperty("r_fid_other").GetProperty("run_id").GetInt64());
        Assert.Equal(p10, t1.GetProperty("r_fid_other").GetProperty("protocol").GetString());
        // the column's protocol beats a lower number under another one; IS follows its own gFID
        Assert.Equal(g1, t1.GetProperty("g_fid").GetProperty("run_id").GetInt64());
        Assert.Equal(100, t1.GetProperty("is").GetProperty("value").GetDouble());
        Assert.Equal(g2, t1.GetProperty("g_fid_other").GetProperty("run_id").GetInt64());
        var prov = t1.GetProperty("g_fid").GetProperty("provenance");
        Assert.Equal(50000, prov.GetProperty("samples").GetInt64());
        Assert.Equal(new string('b', 64), prov.GetProperty("reference_sha256").GetString());
        Assert.Equal("ADM centre crop 256, PIL bicubic", prov.GetProperty("preprocess").GetString());
        var t2 = rows.Single(r => r.GetProperty("tokenizer").GetString() == "T2");
        Assert.Equal(p50, t2.GetProperty("g_fid").GetProperty("protocol").GetString());
        Assert.Equal(JsonValueKind.Null, t2.GetProperty("g_fid_other").ValueKind);

        var page = await c.GetStringAsync("/experiments/protocols");
        Assert.Contains("gFID, other protocol", page);
        Assert.Contains($"<sup class=\"protocol\" title=\"protocol {p50}: ADM evaluator", page);
        Assert.Contains("50000 samples", page);

        var csv = (await c.GetStringAsync("/api/experiments/protocols/results/export?format=csv")).Split("\r\n");
        Assert.Contains($"T1,1,{r1},G,32,3,{g1},100,,,,{p50},{p50},0.5,{r3},{p10},2,{g2},{p10}", csv);
        var md = await c.GetStringAsync("/api/experiments/protocols/results/export?format=markdown");
        Assert.Contains($"| 0.50 [{p10}] | 2.00 [{p10}] |", md);
        Assert.Contains($"Protocols: rFID {p50} (", md);
    }
}

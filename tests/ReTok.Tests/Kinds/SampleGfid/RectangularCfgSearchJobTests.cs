using System.Text.Json;
using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Evaluation.Weights;
using ReTok.Jobs.Kinds.SampleGfid;
using ReTok.Jobs.Kinds.Shared;
using ReTok.Tests.Kinds.Support;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using Xunit.Abstractions;

namespace ReTok.Tests.Kinds.SampleGfid;

/// <summary>
/// sample-gfid through the engine (in-process worker, PostgreSQL) on the tiny setup of <see cref="GenTestInputs"/> with
/// formula Inception weights, so that gFID is really computed: the rectangular CFG search (cfg_schedule rectangular +
/// hill_climb) runs one round per (scale, window), each round's shard samples at that pair, every pair's gFID is recorded
/// under its own key, the rounds follow <see cref="CfgSearchPlan.Next"/> and the best pair is the argmin; and
/// every metric row of an evaluation records its provenance (evaluator, weights and reference by sha256, sample count,
/// precision, seed, K).
/// </summary>
public sealed class RectangularCfgSearchJobTests(TestDatabase db, ITestOutputHelper log) : IClassFixture<TestDatabase>
{
    const int K = 8;

    EngineOptions Options(string root) => new()
    {
        Db = db.ConnectionString, Artifacts = Path.Combine(root, "artifacts"), Scratch = Path.Combine(root, "scratch"),
        QueuePollInterval = TimeSpan.FromMilliseconds(150), InvisibilityTimeout = TimeSpan.FromSeconds(60),
        LeaseTtl = TimeSpan.FromSeconds(30), Heartbeat = TimeSpan.FromMilliseconds(300), RetryBaseDelay = TimeSpan.FromMilliseconds(300),
        SchedulePollInterval = TimeSpan.FromMilliseconds(250), ReconcileInterval = TimeSpan.FromSeconds(1), ReconcileQueuedAfter = TimeSpan.FromSeconds(15),
    };

    static async Task<Run> SucceededAsync(Tracker t, long id, int seconds = 300)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (DateTime.UtcNow < deadline)
        {
            var r = await t.Runs.GetAsync(id);
            if (r!.Status.IsTerminal())
            {
                var logs = string.Join("\n", (await t.GetLogsAsync(id, limit: 1000)).Select(l => l.Message));
                Assert.True(r.Status == RunStatus.Succeeded, $"run {id} ({r.Kind}): {r.Status} {r.FailureReason}\n{logs}");
                return r;
            }
            await Task.Delay(200);
        }
        throw new TimeoutException($"run {id} not finished in {seconds} s");
    }

    /// <summary>The aggregators of the chain that starts at <paramref name="root"/>, in order.</summary>
    static async Task<List<Run>> RoundsAsync(Tracker t, long root)
    {
        var rounds = new List<Run>();
        var cur = await SucceededAsync(t, root);
        while (cur.ContinuedByRunId is { } next)
        {
            var r = await SucceededAsync(t, next);
            Assert.Equal("sample-gfid-aggregate", r.Kind);
            rounds.Add(r);
            cur = r;
        }
        return rounds;
    }

    sealed record Setup(JobClient Client, WorkerHost Worker, GenTestInputs Inputs, string Root) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Worker.StopAsync();
            await Worker.DisposeAsync();
            await Client.DisposeAsync();
        }
    }

    async Task<Setup> StartAsync(string name)
    {
        var root = Directory.CreateTempSubdirectory($"retok-{name}").FullName;
        var o = Options(root);
        var client = new JobClient(o);
        await client.EnsureSchemaAsync();
        var inputs = await GenTestInputs.CreateAsync(client.Tracker, root, images: 5, inceptionWeights: true);
        var worker = new WorkerHost(o, new WorkerOptions { Queues = ["gpu"], Name = name }, log: _ => { });
        await worker.StartAsync();
        return new Setup(client, worker, inputs, root);
    }

    static double Param(Run r, string key) => JsonNode.Parse(r.Parameters)![key]!.GetValue<double>();

    [Fact]
    public async Task RectangularSearch_RoundPerScaleAndWindow_RecordsEachPair_PicksTheBest()
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        await using var s = await StartAsync("rect-cfg-search");
        var t = s.Client.Tracker;
        // Measured gFIDs (formula Inception, window [0.10, 0.50], K = 8): cfg 2: 3.751e-10, 3: 3.654e-10, 4: 3.864e-10. From
        // 4 with step 1 (decrease first): 4, 3 (better), 2 (worse), 4 tried -> the first window is at its minimum, and the
        // fourth round opens the second window [0.10, 0.55] at its best scale 3.
        var search = new CfgSearchParams { Mode = CfgSearchMode.HillClimb, Start = 4.0, Step = 1.0, MinScale = 1.0, MaxRounds = 4 };
        var p = new SampleGfidParams
        {
            NumSamples = 5, NumShards = 1, Tokens = K, BatchSize = 5, Seed = 2, CfgSchedule = "rectangular", WeightsDir = s.Inputs.WeightsDir,
            CfgSearch = search,
        };
        Assert.True(p.SearchesWindows);
        var id = await s.Client.SubmitAsync("sample-gfid", p, inputs: s.Inputs.SampleInputs());
        var rounds = await RoundsAsync(t, id);
        log.WriteLine($"{rounds.Count} rounds done after {sw.Elapsed.TotalSeconds:F0} s");
        Assert.Equal(search.MaxRounds, rounds.Count);

        // each round: its shard sampled at the round's (scale, window), and the round's gFID under the pair's key
        var history = new List<CfgPoint>();
        foreach (var r in rounds)
        {
            await using (var d = t.CreateDb())
            {
                var shard = d.Runs.Single(x => x.FanInRunId == r.Id);
                Assert.Equal((Param(r, "cfg_scale"), Param(r, "window_start"), Param(r, "window_end")),
                    (Param(shard, "cfg_scale"), Param(shard, "window_start"), Param(shard, "window_end")));
            }
            var point = new CfgPoint
            {
                CfgScale = Param(r, "cfg_scale"), WindowStart = Param(r, "window_start"), WindowEnd = Param(r, "window_end"),
                Gfid = (await t.GetMetricsAsync(r.Id, $"gfid@k={K}")).Single().Value, RunId = r.Id,
            };
            Assert.True(double.IsFinite(point.Gfid), $"round {r.Id}: gFID {point.Gfid}");
            // the round follows the planner given the rounds before it (the first from the start scale and the first window)
            var planned = CfgSearchPlan.Next(search, history, search.Start!.Value, windows: true)!;
            Assert.Equal((planned.CfgScale, planned.WindowStart, planned.WindowEnd), (point.CfgScale, point.WindowStart, point.WindowEnd));
            history.Add(point);
        }
        Assert.Equal((4.0, CfgSearchPlan.RectangularWindows[0].Start, CfgSearchPlan.RectangularWindows[0].End),
            (history[0].CfgScale, history[0].WindowStart!.Value, history[0].WindowEnd!.Value));
        // the walk crossed into the next window, carrying the first window's best scale
        Assert.Equal([CfgSearchPlan.RectangularWindows[0], CfgSearchPlan.RectangularWindows[0], CfgSearchPlan.RectangularWindows[0], CfgSearchPlan.RectangularWindows[1]],
            history.Select(h => (h.WindowStart!.Value, h.WindowEnd!.Value)));
        Assert.Equal(CfgSearchPlan.Best(history.Take(3).ToList()).CfgScale, history[3].CfgScale);
        Assert.Equal(history.Count, history.Select(h => (h.CfgScale, h.WindowStart, h.WindowEnd)).Distinct().Count());   // no pair twice
        log.WriteLine(string.Join("\n", history.Select(h => $"cfg {h.CfgScale} window [{h.WindowStart:F2}, {h.WindowEnd:F2}]: gFID {h.Gfid:G6}")));

        // the final round: every (scale, window) pair under its own key, the best pair = argmin gFID, metrics.json
        var final = rounds[^1];
        var latest = (await t.GetLatestMetricsAsync([final.Id])).ToDictionary(m => m.Key, m => m.Value);
        foreach (var h in history) Assert.Equal(h.Gfid, latest[CfgSearchPlan.Key(K, h)]);
        var best = CfgSearchPlan.Best(history);
        Assert.Equal(history.Min(h => h.Gfid), best.Gfid);
        Assert.Equal(best.CfgScale, latest["best_cfg"]);
        Assert.Equal(best.WindowStart, latest["best_window_start"]);
        Assert.Equal(best.WindowEnd, latest["best_window_end"]);
        var metricsJson = Path.Combine(s.Root, "metrics.json");
        await t.DownloadArtifactAsync((await t.GetArtifactAsync(final.Id, "metrics.json"))!, metricsJson);
        var mj = JsonDocument.Parse(await File.ReadAllTextAsync(metricsJson)).RootElement;
        Assert.Equal(best.CfgScale, mj.GetProperty("best_cfg").GetDouble());
        Assert.Equal(best.Gfid, mj.GetProperty("best_gfid").GetDouble());
        Assert.Equal(history.Count, mj.GetProperty("cfg_search").GetArrayLength());
        Assert.All(mj.GetProperty("cfg_search").EnumerateArray().Zip(history), x =>
        {
            Assert.Equal(x.Second.WindowStart, x.First.GetProperty("window_start").GetDouble());
            Assert.Equal(x.Second.WindowEnd, x.First.GetProperty("window_end").GetDouble());
        });
        Assert.NotNull(await t.GetArtifactAsync(final.Id, "cfg_curve.png"));
        log.WriteLine($"best cfg {best.CfgScale} window [{best.WindowStart:F2}, {best.WindowEnd:F2}] gFID {best.Gfid:G6}; {sw.Elapsed.TotalSeconds:F0} s");
    }

    [Fact]
    public async Task MetricRowsRecordTheirEvaluationProvenance()
    {
        await using var s = await StartAsync("gfid-provenance");
        var t = s.Client.Tracker;
        var id = await s.Client.SubmitAsync("sample-gfid", new SampleGfidParams
        {
            NumSamples = 5, NumShards = 2, Tokens = K, BatchSize = 3, Seed = 13, CfgScale = 1.5, Precision = "fp32", WeightsDir = s.Inputs.WeightsDir,
        }, inputs: s.Inputs.SampleInputs());
        var agg = (await RoundsAsync(t, id)).Single();

        var prov = (await t.GetProvenanceAsync([agg.Id])).ToDictionary(m => m.Key);
        var keys = new[] { $"gfid@k={K}", $"gfid@k={K},cfg=1.5", $"sfid@k={K}", $"is@k={K}", $"precision@k={K}", $"recall@k={K}" };
        var logged = (await t.GetLatestMetricsAsync([agg.Id])).Select(m => m.Key).ToHashSet();
        foreach (var key in keys.Where(logged.Contains)) Assert.True(prov.ContainsKey(key), $"{key} is logged without provenance");
        Assert.Contains($"gfid@k={K}", prov.Keys);

        var reference = (await t.GetArtifactAsync(s.Inputs.RunId, "dataset.npz"))!;
        var weights = Path.Combine(s.Inputs.WeightsDir, "pt_inception-2015-12-05-6726825d.safetensors");
        foreach (var (key, row) in prov)
        {
            var e = EvalProvenance.FromJson(row.Provenance)!;
            Assert.Equal(EvalProtocols.Adm, e.Evaluator);
            Assert.Equal(EvalProtocols.AdmVersion, e.EvaluatorVersion);
            Assert.Equal("pt_inception-2015-12-05-6726825d.safetensors", e.Weights);
            Assert.Equal(WeightsRegistry.Sha256(weights), e.WeightsSha256);
            Assert.Equal(s.Inputs.Ref("dataset.npz"), e.Reference);
            Assert.Equal(reference.Sha256, e.ReferenceSha256);
            Assert.Equal(5, e.Samples);
            Assert.Equal("Float32", e.Precision);
            Assert.Equal(13, e.Seed);
            Assert.Equal(K, e.K);
            Assert.False(string.IsNullOrEmpty(e.Preprocess), key);
            Assert.Equal(e.ProtocolHash(), row.ProtocolHash);
        }
        // one protocol for all the rows of one evaluation
        Assert.Single(prov.Values.Select(r => r.ProtocolHash).Distinct());
    }
}

using System.Globalization;
using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Jobs.Kinds.SampleGfid;
using ReTok.Models.IO;
using ReTok.Tests.Kinds.Support;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using Xunit.Abstractions;

namespace ReTok.Tests.Kinds.SampleGfid;

/// <summary>
/// sample-gfid cfg_search: the hill-climb rule against a synthetic curve (no jobs), submit-time validation, and the
/// tiny setup end to end with an in-process worker and formula Inception weights (so gFID, sFID, IS, precision and
/// recall are really computed): one child run per scale, best_cfg = argmin of the recorded gFIDs, cfg_curve.png.
/// </summary>
public sealed class CfgSearchTests(TestDatabase db, ITestOutputHelper log) : IClassFixture<TestDatabase>
{
    static List<CfgPoint> Walk(CfgSearchParams s, double start, Func<double, double> f)
    {
        var h = new List<CfgPoint>();
        while (CfgSearchPlan.Next(s, h, start) is { } next)
        {
            Assert.Null(next.WindowStart);   // no window outside the rectangular grid
            h.Add(new CfgPoint { CfgScale = next.CfgScale, Gfid = f(next.CfgScale), RunId = h.Count });
        }
        return h;
    }

    [Fact]
    public void HillClimb_FollowsTheReferenceRule()
    {
        var hill = new CfgSearchParams();
        // convex curve, minimum at 2.1: climbs by +0.25 until worse, both neighbours of the best tried -> stop
        var h = Walk(hill, 1.25, s => (s - 2.1) * (s - 2.1));
        Assert.Equal([1.25, 1.5, 1.75, 2.0, 2.25], h.Select(p => p.CfgScale));
        Assert.Equal(2.0, CfgSearchPlan.Best(h).CfgScale);
        // minimum below the start: +0.25 first (worse), then -0.25 steps down to min_scale 1.0, never below
        h = Walk(hill, 1.75, s => s);
        Assert.Equal([1.75, 2.0, 1.5, 1.25, 1.0], h.Select(p => p.CfgScale));
        // a flat curve: ties keep the earlier scale as best
        h = Walk(hill, 1.5, _ => 3.0);
        Assert.Equal([1.5, 1.75, 1.25], h.Select(p => p.CfgScale));
        Assert.Equal(1.5, CfgSearchPlan.Best(h).CfgScale);
        // max_rounds caps the search; list mode evaluates the list in order
        Assert.Equal(2, Walk(hill with { MaxRounds = 2 }, 1.25, s => -s).Count);
        Assert.Equal([2.0, 1.0, 3.0], Walk(new CfgSearchParams { Mode = CfgSearchMode.List, Scales = [2.0, 1.0, 3.0] }, 2.0, s => s).Select(p => p.CfgScale));
        // the reference's starting scales (empirical_cfg_start) by model size
        Assert.Equal(1.25, CfgSearchPlan.EmpiricalStart("step", ReTok.Models.Generation.GptConfig.XL));
        Assert.Equal(2.5, CfgSearchPlan.EmpiricalStart("step", ReTok.Models.Generation.GptConfig.B));
        Assert.Equal(2.0, CfgSearchPlan.EmpiricalStart("constant", ReTok.Models.Generation.GptConfig.B));
    }

    [Fact]
    public void Rectangular_WalksTheReferenceWindowGrid()
    {
        // the grid as the reference's np.arange lines build it (numpy 1.x, checked: 138 pairs, (0.8, 0.8) among them
        // because np.arange gives 0.8000000000000002 and 0.8000000000000003)
        var w = CfgSearchPlan.RectangularWindows;
        Assert.Equal(138, w.Count);
        Assert.Equal((0.1, 0.5), w[0]);
        Assert.Equal(0.55, w[1].End, 12);
        Assert.Contains(w, x => Math.Round(x.Start, 2) == 0.8 && Math.Round(x.End, 2) == 0.8);
        Assert.DoesNotContain(w, x => Math.Round(x.Start, 2) == 0.5 && Math.Round(x.End, 2) == 0.5);
        Assert.All(w, x => Assert.True(x.Start < x.End));
        Assert.Equal(1.75, CfgSearchPlan.EmpiricalStart("rectangular", ReTok.Models.Generation.GptConfig.XL));
        Assert.Equal(3.0, CfgSearchPlan.EmpiricalStart("rectangular", ReTok.Models.Generation.GptConfig.B));

        // gFID depends on the scale only, minimum at 1.6: per window decrease first (increase_first=False), each window
        // starts from the previous window's best, and the walk visits every window in order
        var s = new CfgSearchParams { MaxRounds = 10_000 };
        var h = new List<CfgPoint>();
        while (CfgSearchPlan.Next(s, h, 1.75, windows: true) is { } n)
            h.Add(new CfgPoint { CfgScale = n.CfgScale, WindowStart = n.WindowStart, WindowEnd = n.WindowEnd, Gfid = Math.Abs(n.CfgScale - 1.6) + n.WindowEnd!.Value, RunId = h.Count });
        // window 1: 1.75 -> 1.5 (better) -> 1.25 (worse) -> 1.75 tried -> done; window 2 starts at 1.5: 1.25, 1.75
        Assert.Equal([1.75, 1.5, 1.25, 1.5, 1.25, 1.75], h.Take(6).Select(p => p.CfgScale));
        Assert.Equal(w[1].End, h[3].WindowEnd);
        Assert.Equal(w.Count, h.Select(p => (p.WindowStart, p.WindowEnd)).Distinct().Count());
        Assert.Equal(3 + 3 * (w.Count - 1), h.Count);
        // the best point overall: the smallest window_end (0.5) at scale 1.5, the first such (ties keep the earlier)
        var best = CfgSearchPlan.Best(h);
        Assert.Equal((1.5, 0.1, 0.5), (best.CfgScale, best.WindowStart!.Value, best.WindowEnd!.Value));
        Assert.Equal("gfid@k=256,cfg=1.5,window=0.10-0.50", CfgSearchPlan.Key(256, best));
        // max_rounds caps it
        Assert.Null(CfgSearchPlan.Next(s with { MaxRounds = 3 }, h.Take(3).ToList(), 1.75, windows: true));
    }

    const string Spec = """
        kind: sample-gfid
        inputs: {generator: run:1/g.safetensors, generator_config: run:1/g.yaml, tokenizer: run:2/t.safetensors, tokenizer_config: run:2/t.yaml}
        params:
          num_samples: 8
          cfg_schedule: step
          cfg_search: {mode: hill_climb, start: 1.5, step: 0.25}
        """;

    [Fact]
    public void CfgSearchParamsValidateAtSubmit()
    {
        var p = Assert.IsType<SampleGfidParams>(JobSpecs.Parse(Spec).Steps[0].Params);
        Assert.Equal(CfgSearchMode.HillClimb, p.CfgSearch!.Mode);
        Assert.Equal(1.5, p.CfgSearch.Start);
        var ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse(Spec.Replace("step: 0.25}", "stp: 0.25}")));
        Assert.Contains("params.cfg_search.stp: unknown key (did you mean 'step'?)", ex.Message);
        ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse(Spec.Replace("cfg_schedule: step", "cfg_schedule: linear")));
        Assert.Contains("hill_climb supports cfg_schedule step, constant or rectangular", ex.Message);
        Assert.Equal("rectangular", Assert.IsType<SampleGfidParams>(JobSpecs.Parse(Spec.Replace("cfg_schedule: step", "cfg_schedule: rectangular")).Steps[0].Params).CfgSchedule);
        ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse(Spec.Replace("mode: hill_climb, start: 1.5, step: 0.25", "mode: list")));
        Assert.Contains("cfg_search.scales: list mode needs at least one scale", ex.Message);
        // the shipped specs validate
        var root = AppContext.BaseDirectory;
        while (root is not null && !Directory.Exists(Path.Combine(root, "jobs"))) root = Path.GetDirectoryName(root);
        foreach (var name in new[] { "gfid-cfg-search-tiny.yaml", "gfid-cfg-search-gpt-xl-retok-s-b.yaml" })
            Assert.NotNull(Assert.IsType<SampleGfidParams>(JobSpecs.Load(Path.Combine(root!, "jobs", name)).Steps[0].Params).CfgSearch);
    }

    EngineOptions Options(string root) => new()
    {
        Db = db.ConnectionString, Artifacts = Path.Combine(root, "artifacts"), Scratch = Path.Combine(root, "scratch"),
        QueuePollInterval = TimeSpan.FromMilliseconds(150), InvisibilityTimeout = TimeSpan.FromSeconds(60),
        LeaseTtl = TimeSpan.FromSeconds(30), Heartbeat = TimeSpan.FromMilliseconds(300), RetryBaseDelay = TimeSpan.FromMilliseconds(300),
        SchedulePollInterval = TimeSpan.FromMilliseconds(250), ReconcileInterval = TimeSpan.FromSeconds(1), ReconcileQueuedAfter = TimeSpan.FromSeconds(15),
    };

    async Task<Run> WaitAsync(Tracker t, long id, int seconds = 300)
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

    [Fact]
    public async Task HillClimbOnTheTinySetup_ChildRunPerScale_BestIsArgminGfid_CurvePlot()
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var root = Directory.CreateTempSubdirectory("retok-cfgsearch").FullName;
        var o = Options(root);
        await using var client = new JobClient(o);
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        var inputs = await GenTestInputs.CreateAsync(t, root, images: 5, inceptionWeights: true);
        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = ["gpu"], Name = "cfgsearch-test" }, log: s => { });
        await worker.StartAsync();

        const int k = 8;
        var id = await client.SubmitAsync("sample-gfid", new SampleGfidParams
        {
            NumSamples = 5, NumShards = 1, Tokens = k, BatchSize = 5, Seed = 2, CfgSchedule = "constant", WeightsDir = inputs.WeightsDir,
            CfgSearch = new CfgSearchParams { Mode = CfgSearchMode.HillClimb, Start = 1.5, Step = 0.25, MinScale = 1.0, MaxRounds = 3 },
        }, inputs: inputs.SampleInputs());

        // the chain: root -> round 1 aggregator -> round 2 aggregator -> round 3 aggregator, each a child of the previous
        var rounds = new List<Run>();
        var cur = await WaitAsync(t, id);
        while (cur.ContinuedByRunId is { } next)
        {
            var r = await WaitAsync(t, next);
            Assert.Equal(cur.Id, r.ParentRunId);
            Assert.Equal("sample-gfid-aggregate", r.Kind);
            rounds.Add(r);
            cur = r;
        }
        log.WriteLine($"{rounds.Count} rounds done after {sw.Elapsed.TotalSeconds:F0} s");
        Assert.Equal(3, rounds.Count);

        var gfid = new Dictionary<double, double>();
        var codes = new List<long[]>();
        foreach (var r in rounds)
        {
            var scale = JsonNode.Parse(r.Parameters)!["cfg_scale"]!.GetValue<double>();
            // every round: the five metrics really computed (formula Inception weights) and finite
            foreach (var name in new[] { "gfid", "sfid", "is", "precision", "recall" })
            {
                var m = await t.GetMetricsAsync(r.Id, $"{name}@k={k}");
                Assert.True(m.Count == 1 && double.IsFinite(m[0].Value), $"round cfg {scale}: {name}@k={k} = [{string.Join(", ", m.Select(x => x.Value))}]");
            }
            gfid[scale] = (await t.GetMetricsAsync(r.Id, $"gfid@k={k}"))[0].Value;
            Assert.Equal(gfid[scale], (await t.GetMetricsAsync(r.Id, CfgSearchPlan.Key(k, scale)))[0].Value);
            // its shard sampled at this scale
            await using (var d = t.CreateDb())
            {
                var shard = d.Runs.Single(x => x.FanInRunId == r.Id);
                Assert.Equal(r.ParentRunId, shard.ParentRunId);
                Assert.Equal(scale, JsonNode.Parse(shard.Parameters)!["cfg_scale"]!.GetValue<double>());
            }
            var a = (await t.GetArtifactAsync(r.Id, "samples.npz"))!;
            var path = Path.Combine(root, $"samples-{r.Id}.npz");
            await t.DownloadArtifactAsync(a, path);
            codes.Add(Npz.LoadKey(path, "codes").As<long>());
        }
        // the reference rule: 1.5, then 1.75, then 2.0 if 1.75 was better else 1.25
        Assert.Equal([1.5, 1.75, gfid[1.75] < gfid[1.5] ? 2.0 : 1.25], gfid.Keys);
        Assert.False(codes[0].SequenceEqual(codes[1]), "the CFG scale must change the samples");

        // the final run: the whole curve, best_cfg = argmin of the recorded gFIDs, cfg_curve.png
        var final = rounds[^1];
        var curve = (await t.GetLatestMetricsAsync([final.Id])).Where(m => m.Key.StartsWith($"gfid@k={k},cfg="))
            .ToDictionary(m => double.Parse(m.Key[$"gfid@k={k},cfg=".Length..], CultureInfo.InvariantCulture), m => m.Value);
        Assert.Equal(gfid.OrderBy(x => x.Key), curve.OrderBy(x => x.Key));
        var best = (await t.GetMetricsAsync(final.Id, "best_cfg")).Single().Value;
        Assert.Equal(curve.MinBy(x => x.Value).Key, best);
        var png = (await t.GetArtifactAsync(final.Id, "cfg_curve.png"))!;
        var pngPath = Path.Combine(root, "cfg_curve.png");
        await t.DownloadArtifactAsync(png, pngPath);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(pngPath)[..4]);
        Assert.True(png.SizeBytes > 5000, $"cfg_curve.png is {png.SizeBytes} bytes");
        foreach (var r in rounds[..^1]) Assert.Null(await t.GetArtifactAsync(r.Id, "cfg_curve.png"));
        log.WriteLine($"curve {string.Join(", ", curve.OrderBy(x => x.Key).Select(x => $"{x.Key}: {x.Value:G5}"))}; best {best}; {sw.Elapsed.TotalSeconds:F0} s");
        await worker.StopAsync();
    }
}

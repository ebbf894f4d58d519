using System.Text.Json;
using ReTok.Engine;
using ReTok.Evaluation.Features;
using ReTok.Evaluation.Images;
using ReTok.Evaluation.Inception;
using ReTok.Evaluation.Metrics;
using ReTok.Evaluation.Weights;
using ReTok.Models;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using ReTok.Plots;
using ReTok.Tracking;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Jobs.Kinds.SampleGfid;

public sealed record SampleGfidParams : IValidatableParams
{
    public int NumSamples { get; init; } = 50000;
    /// <summary>Shards (runs) the samples are split over; give the number of GPU (or CPU) worker slots.</summary>
    public int NumShards { get; init; } = 1;
    /// <summary>K: tokens generated per image and decoded (<= block_size, <= 256).</summary>
    public int Tokens { get; init; } = 256;
    public double CfgScale { get; init; } = 1.5;
    public string CfgSchedule { get; init; } = "step";
    public double? WindowStart { get; init; }
    /// <summary>End of the rectangular schedule's window (rectangular_schedule's window_end, default 1.0).</summary>
    public double WindowEnd { get; init; } = 1.0;
    public double Temperature { get; init; } = 1.0;
    public int TopK { get; init; }
    public double TopP { get; init; } = 1.0;
    public int Seed { get; init; }
    public int BatchSize { get; init; } = 32;
    /// <summary>
    /// GPT compute dtype (sample_c2i --precision): none/fp32 = float32 (the authors' README run, PRECISION="none"),
    /// bf16, fp16 (autocast over fp32 weights), auto = bf16 on CUDA, fp32 on CPU (the behaviour before this key).
    /// </summary>
    public string Precision { get; init; } = "auto";
    /// <summary>Checkpoint the generated codes every this many batches.</summary>
    public int CheckpointEvery { get; init; } = 10;
    /// <summary>Folder holding the Inception weights; default $RETOK_HOME/weights.</summary>
    [DataPath] public string? WeightsDir { get; init; }
    /// <summary>Cache the reference's Inception features (keyed by file content and weights): a CFG search evaluates against it every round.</summary>
    public bool FeatureCache { get; init; } = true;
    /// <summary>Test hook: sleep this long after each generated batch (kill-and-resume tests need a shard that lasts).</summary>
    public int DebugBatchDelayMs { get; init; }

    /// <summary>CFG scale search (cfg_scale is then ignored, as --search in the reference); null = one evaluation.</summary>
    public CfgSearchParams? CfgSearch { get; init; }

    public IEnumerable<string> Validate()
    {
        if (NumSamples < 1) yield return $"num_samples: must be >= 1, got {NumSamples}";
        if (NumShards < 1) yield return $"num_shards: must be >= 1, got {NumShards}";
        if (Tokens < 1 || Tokens > 256) yield return $"tokens: must be in 1..256, got {Tokens}";
        if (BatchSize < 1) yield return $"batch_size: must be >= 1, got {BatchSize}";
        if (CheckpointEvery < 1) yield return $"checkpoint_every: must be >= 1, got {CheckpointEvery}";
        if (GptPrecision.Validate(Precision) is { } bad) yield return bad;
        string? err = null;
        try { ToSamplingOptions().Validate(); } catch (ArgumentException e) { err = e.Message; }
        if (err is not null) yield return $"cfg_schedule/temperature/top_k/top_p: {err}";
        if (CfgSearch is not null) foreach (var e in CfgSearch.Validate(CfgSchedule)) yield return e;
    }

    /// <summary>The autocast dtype for the GPT on <paramref name="device"/>; null = float32 (no autocast).</summary>
    public ScalarType? AutocastDtype(DeviceType device) => GptPrecision.Autocast(Precision, device);

    public SamplingOptions ToSamplingOptions() => new(CfgScale, CfgSchedule, WindowStart, WindowEnd: WindowEnd, Temperature: Temperature, TopK: TopK, TopP: TopP);

    /// <summary>A hill-climb cfg_search over the rectangular schedule walks the reference's window grid.</summary>
    public bool SearchesWindows => CfgSearch is { Mode: CfgSearchMode.HillClimb } && CfgSchedule == "rectangular";

    public static readonly string[] ModelRoles = ["generator", "generator_config", "tokenizer", "tokenizer_config"];
}

/// <summary>A shard's work (engine-owned fan-out state): sample indices [Start, Start + Count).</summary>
public sealed record GfidShard
{
    public long Start { get; init; }
    public long Count { get; init; }
}

/// <summary>A round's fan-in state: with a CFG search, its first scale and the scales evaluated so far (with their gFID).</summary>
public sealed record GfidRound
{
    public double? CfgStart { get; init; }
    public List<CfgPoint>? CfgHistory { get; init; }
}

/// <summary>
/// gFID sampling (sample_c2i_cfg_search.py) as a fan-out: the parent spawns num_shards shards; shard k owns sample
/// indices [k*N/S, (k+1)*N/S), batch j of it draws uniform labels then codes from a generator seeded
/// ShardSeed(seed,k,S)*1_000_003 + j, decodes the first K codes and writes samples_shard.npz; sample-gfid-aggregate
/// concatenates in shard order into samples.npz, grid.png and (with Inception weights and a reference) the metrics.
/// A CFG search is a chain of such rounds, each aggregator spawning the next.
/// </summary>
[JobKind("sample-gfid", Queue = "gpu", Description = "generate samples with the GPT + tokenizer decoder (sharded) and compute gFID")]
public sealed class SampleGfidJob : IFanOutJob<SampleGfidParams>
{
    /// <summary>reference: real images for gFID; class_names: extract-dataset's class_names.json, to caption grid.png.</summary>
    static readonly string[] OptionalRoles = ["reference", "class_names"];

    public static long BatchSeed(SampleGfidParams p, int shard, long batch) => Sampling.ShardSeed(p.Seed, shard, p.NumShards) * 1_000_003L + batch;

    public async Task RunAsync(JobContext ctx, SampleGfidParams p)
    {
        // the shards get this run's inputs; a missing model fails here, once, rather than in every shard
        foreach (var role in SampleGfidParams.ModelRoles) await ctx.ResolveInputAsync(role);
        if (p.CfgSearch is { } search)
        {
            // the search decides by gFID: fail now rather than after sampling the first scale
            if (!ctx.InputRoles.Contains("reference")) throw new JobFailedException("cfg_search: needs a 'reference' input (real images npz or a reference batch) for gFID");
            try { WeightsRegistry.Resolve("inception", p.WeightsDir); }
            catch (MissingWeightsException e) { throw new JobFailedException($"cfg_search: needs gFID, but {e.Message}"); }
            double start = search.Mode == CfgSearchMode.List ? search.Scales![0]
                : search.Start ?? CfgSearchPlan.EmpiricalStart(p.CfgSchedule, GeneratorYaml.Read(await ctx.GetInputFileAsync("generator_config")));
            ctx.Log($"cfg_search ({search.Mode}{(p.SearchesWindows ? $", {CfgSearchPlan.RectangularWindows.Count} windows" : "")}): first scale {start}");
            var first = CfgSearchPlan.Next(search, [], start, p.SearchesWindows)!;
            await SpawnRoundAsync(ctx, WithWindow(p, first), first.CfgScale, new GfidRound { CfgStart = start, CfgHistory = [] });
            return;
        }
        await SpawnRoundAsync(ctx, p, p.CfgScale, new GfidRound());
    }

    /// <summary>The parameters of a search round: a rectangular round samples in its window, other rounds keep the spec's.</summary>
    internal static SampleGfidParams WithWindow(SampleGfidParams p, CfgSearchPlan.CfgStep step) =>
        step.WindowStart is { } ws && step.WindowEnd is { } we ? p with { WindowStart = ws, WindowEnd = we } : p;

    /// <summary>One evaluation at <paramref name="scale"/>: num_shards shards and an aggregator (which continues a cfg_search).</summary>
    internal static Task<FanOut> SpawnRoundAsync(JobContext ctx, SampleGfidParams p, double scale, GfidRound round)
    {
        var shards = Enumerable.Range(0, p.NumShards).Select(k =>
        {
            long s = (long)k * p.NumSamples / p.NumShards, e = (long)(k + 1) * p.NumSamples / p.NumShards;
            return (object)new GfidShard { Start = s, Count = e - s };
        }).ToList();
        // the round's scale is a parameter of its runs (what they sample at); the search's bookkeeping is not
        return ctx.SpawnShardsAsync(shards, round, p with { CfgScale = scale });
    }

    public Task AggregateAsync(JobContext ctx, SampleGfidParams p) => SampleGfidAggregate.RunAsync(ctx, p);

    public async Task RunShardAsync(JobContext ctx, SampleGfidParams p)
    {
        var range = ctx.GetFanOutState<GfidShard>();
        int shard = ctx.ShardIndex!.Value;
        var device = Devices.Resolve(ctx.Device);
        var cfg = GeneratorYaml.Read(await ctx.GetInputFileAsync("generator_config"));
        using var gpt = GptCheckpoint.Load(cfg, await ctx.GetInputFileAsync("generator"), device);
        if (p.AutocastDtype(device.type) is { } dt) gpt.AutocastDtype = dt;
        ctx.Log($"precision {p.Precision}: GPT in {(gpt.AutocastDtype is { } a ? a.ToString() : "float32")}");
        var tokCfg = TokenizerConfig.Load(await ctx.GetInputFileAsync("tokenizer_config"));
        // a generator trained with a larger vocabulary could sample codes the tokenizer has no entry for
        if (cfg.VocabSize > tokCfg.CodebookSize)
            throw new JobFailedException($"generator vocab_size {cfg.VocabSize} > the tokenizer's codebook_size {tokCfg.CodebookSize}: train the generator with vocab_size: {tokCfg.CodebookSize}");
        using var tok = ReTokTokenizer.FromCheckpoint(tokCfg, await ctx.GetInputFileAsync("tokenizer"));
        tok.to(device).eval();
        if (p.Tokens > cfg.BlockSize) throw new JobFailedException($"tokens: {p.Tokens} > the generator's block_size {cfg.BlockSize}");

        long n = range.Count;
        long batches = (n + p.BatchSize - 1) / p.BatchSize;
        var codes = new List<Tensor>();
        var labels = new List<Tensor>();
        long doneBatches = 0;
        if (await ctx.Checkpoints.LoadAsync() is { } ck)
        {
            codes.Add(Npy.Load(Path.Combine(ck.Dir, "codes.npy")).ToTensor());
            labels.Add(Npy.Load(Path.Combine(ck.Dir, "labels.npy")).ToTensor());
            doneBatches = ck.Step;
        }
        Task Save(long b)
        {
            var c = cat(codes, 0); var l = cat(labels, 0);
            codes = [c]; labels = [l];
            return ctx.Checkpoints.SaveAsync(b, dir => { Npy.Save(Path.Combine(dir, "codes.npy"), c); Npy.Save(Path.Combine(dir, "labels.npy"), l); return Task.CompletedTask; });
        }
        var opts = p.ToSamplingOptions();
        for (long b = doneBatches; b < batches; b++)
        {
            if (ctx.CancellationToken.IsCancellationRequested) { await Save(b); ctx.ThrowIfCancellationRequested(); }
            long size = Math.Min(p.BatchSize, n - b * p.BatchSize);
            using (var scope = NewDisposeScope())
            {
                using var gen = Sampling.NewGenerator(BatchSeed(p, shard, b));
                var y = Sampling.RandomLabels(size, cfg.NumClasses, gen, device);
                var z = Sampling.Generate(gpt, y, p.Tokens, opts, gen);
                codes.Add(z.cpu().MoveToOuterDisposeScope());
                labels.Add(y.cpu().MoveToOuterDisposeScope());
            }
            ctx.ReportProgress(b + 1, batches + 1, $"generated batch {b + 1}/{batches}");
            if (p.DebugBatchDelayMs > 0) await Task.Delay(p.DebugBatchDelayMs);
            if ((b + 1) % p.CheckpointEvery == 0 && b + 1 < batches) await Save(b + 1);
        }
        var allCodes = cat(codes, 0);
        var allLabels = cat(labels, 0);

        // decode (deterministic) straight into the shard's npz
        var outPath = Path.Combine(ctx.ScratchDir, "samples_shard.npz");
        using (var w = new NpzStreamWriter(outPath))
        {
            w.BeginArray("arr_0", "|u1", [n, tokCfg.ImageSize, tokCfg.ImageSize, 3]);
            for (long s = 0; s < n; s += p.BatchSize)
            {
                ctx.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var z = allCodes.narrow(0, s, Math.Min(p.BatchSize, n - s));
                var img = ReconstructionEvaluator.ToUint8(tok.Decode(z, p.Tokens));
                w.Append(img.bytes);
            }
            w.Add("labels", NpyArray.FromTensor(allLabels));
            w.Add("codes", NpyArray.FromTensor(allCodes));
            w.Commit();
        }
        ctx.ReportProgress(1, 1, $"shard {shard}: {n} samples");
        await ctx.SaveArtifactFileAsync("samples_shard.npz", outPath, "npz", metadata: new { shard, start = range.Start, count = n });
    }
}

/// <summary>Fan-in of sample-gfid (run kind sample-gfid-aggregate): samples.npz (arr_0, labels, codes in shard order), grid.png, metrics.json and metrics.</summary>
static class SampleGfidAggregate
{
    public static async Task RunAsync(JobContext ctx, SampleGfidParams p)
    {
        var round = ctx.GetFanOutState<GfidRound>();
        var shards = await ctx.GetShardsAsync();
        if (shards.Count != p.NumShards) throw new JobFailedException($"expected {p.NumShards} shards, found {shards.Count}");
        var files = new List<string>();
        foreach (var s in shards) files.Add(await ctx.GetRunArtifactFileAsync(s.Id, "samples_shard.npz", $"shard-{s.ShardIndex}"));
        var headers = files.Select(f => Npz.Header(f, "arr_0")).ToList();
        long total = headers.Sum(h => h.Shape[0]);
        if (total != p.NumSamples) throw new JobFailedException($"shards hold {total} samples, expected {p.NumSamples}");
        var outPath = Path.Combine(ctx.ScratchDir, "samples.npz");
        using (var w = new NpzStreamWriter(outPath))
        {
            var shape = headers[0].Shape.ToArray(); shape[0] = total;
            w.BeginArray("arr_0", "|u1", shape);
            foreach (var f in files)
                foreach (var (_, chunk) in Npz.ReadRows(f, "arr_0", 256)) w.Append(chunk.Data);
            w.Add("labels", NpyArray.FromTensor(cat(files.Select(f => Npz.LoadKey(f, "labels").ToTensor()).ToList(), 0)));
            w.Add("codes", NpyArray.FromTensor(cat(files.Select(f => Npz.LoadKey(f, "codes").ToTensor()).ToList(), 0)));
            w.Commit();
        }
        await ctx.SaveArtifactFileAsync("samples.npz", outPath, "npz", metadata: new { samples = total, tokens = p.Tokens, cfg_scale = p.CfgScale });
        var first = Npz.ReadRows(outPath, "arr_0", 64).First().Chunk.ToTensor();
        var grid = Path.Combine(ctx.ScratchDir, "grid.png");
        if (ctx.InputRoles.Contains("class_names"))
        {
            var names = ReadClassNames(await ctx.GetInputFileAsync("class_names"));
            var ys = Npz.LoadKey(outPath, "labels").As<long>().Take((int)first.shape[0]);
            // "n00000000_disc" -> "disc": the WordNet id says nothing to a reader
            var captions = ys.Select(y => y < names.Length ? names[y].Split('_', 2)[^1] : $"class {y}").ToList();
            if (!ImageGrid.SaveCaptioned(grid, first, captions, nrow: 8))
                ctx.Log("grid.png without class captions: no font file (install fonts-dejavu-core or set RETOK_FONT)", "warn");
        }
        else ImageGrid.Save(grid, first, nrow: 8);
        await ctx.SaveArtifactFileAsync("grid.png", grid, "image");
        // samples/class{C}.png: the first sample of each class among those of the grid, for the dashboard's /compare/images
        // (one row per class, one column per run)
        var firstLabels = Npz.LoadKey(outPath, "labels").As<long>().Take((int)first.shape[0]).ToList();
        foreach (var (c, i) in firstLabels.Select((c, i) => (c, i)).GroupBy(x => x.c).Select(g => (g.Key, g.First().i)))
        {
            var tile = Path.Combine(ctx.ScratchDir, $"class{c}.png");
            using (var one = first.narrow(0, i, 1)) ImageGrid.Save(tile, one, nrow: 1, padding: 0);
            await ctx.SaveArtifactFileAsync($"samples/class{c}.png", tile, "image", overwrite: true);
        }

        var metrics = new Dictionary<string, object?> { ["tokens"] = p.Tokens, ["cfg_scale"] = p.CfgScale, ["num_samples"] = total };
        double? gfid = null;
        string? weights = null;
        try { weights = WeightsRegistry.Resolve("inception", p.WeightsDir); }
        catch (MissingWeightsException e) { ctx.Log($"gFID skipped: {e.Message}", "warn"); metrics["skipped"] = e.Message; }
        if (weights is not null && !ctx.InputRoles.Contains("reference"))
        {
            ctx.Log("gFID skipped: no 'reference' input (an npz of real images or a reference batch with mu/sigma)", "warn");
            metrics["skipped"] = "no reference input";
        }
        else if (weights is not null)
        {
            var refArtifact = await ctx.ResolveInputAsync("reference");
            var reference = await ctx.GetInputFileAsync("reference");
            ctx.ReportProgress(0, 1, "Inception features");
            InceptionExtractor? ex = null;
            InceptionExtractor Ex() => ex ??= InceptionExtractor.Load(weights, Devices.Resolve(ctx.Device));
            // cfg-search rounds share the reference's features: artifact-backed cache (content + weights hash)
            using var r = p.FeatureCache
                ? await Shared.FeatureArtifacts.OpenReferenceAsync(ctx, reference, weights, Ex)
                : AdmEvaluator.Open(reference, Ex, null, log: m => ctx.Log(m));
            using var s = AdmEvaluator.Open(outPath, Ex, log: m => ctx.Log(m));
            var res = AdmEvaluator.Compare(r, s, warn: m => ctx.Log(m, "warn"));
            gfid = res.Fid;
            string k = $"@k={p.Tokens}";
            var vals = new List<(string, double)>
            {
                ($"gfid{k}", res.Fid), ($"gfid{k},cfg={p.CfgScale.ToString(System.Globalization.CultureInfo.InvariantCulture)}", res.Fid),
                ($"sfid{k}", res.SFid), ($"is{k}", res.InceptionScore), ($"precision{k}", res.Precision), ($"recall{k}", res.Recall),
            };
            ctx.LogMetrics(p.Tokens, vals.Where(v => double.IsFinite(v.Item2)).ToArray());
            await ctx.RecordProvenanceAsync(vals.Where(v => double.IsFinite(v.Item2)).Select(v => v.Item1), new EvalProvenance
            {
                Evaluator = Shared.EvalProtocols.Adm, EvaluatorVersion = Shared.EvalProtocols.AdmVersion, Weights = Path.GetFileName(weights),
                WeightsSha256 = Shared.FeatureArtifacts.WeightsId(weights, p.FeatureCache ? FeatureCache.Default() : null),
                Reference = $"run:{refArtifact.RunId}/{refArtifact.Name}", ReferenceSha256 = await Shared.EvalProtocols.ShaAsync(ctx, refArtifact.RunId, refArtifact.Name),
                Preprocess = "generated at 256 (tokenizer decoder, no resize); reference as given; Inception: TF1 bilinear resize to 299",
                Samples = total, Precision = p.AutocastDtype(Devices.Resolve(ctx.Device).type) is { } dt ? dt.ToString() : "Float32", Seed = p.Seed, K = p.Tokens,
            });
            foreach (var (key, v) in vals) metrics[key] = double.IsFinite(v) ? v : null;
            ctx.Log(res.ToText());
        }
        if (p.CfgSearch is { } search)
        {
            if (gfid is not { } g || !double.IsFinite(g))
                throw new JobFailedException($"cfg_search: no finite gFID at cfg {p.CfgScale} ({metrics.GetValueOrDefault("skipped") ?? gfid})");
            bool rect = p.SearchesWindows;
            var history = (round.CfgHistory ?? []).Append(new CfgPoint
            {
                CfgScale = p.CfgScale, WindowStart = rect ? p.WindowStart : null, WindowEnd = rect ? p.WindowEnd : null, Gfid = g, RunId = ctx.RunId,
            }).ToList();
            metrics["cfg_search"] = history.Select(h => new { cfg_scale = h.CfgScale, window_start = h.WindowStart, window_end = h.WindowEnd, gfid = h.Gfid, run_id = h.RunId }).ToList();
            if (CfgSearchPlan.Next(search, history, round.CfgStart ?? p.CfgScale, rect) is { } next)
            {
                await WriteMetricsJsonAsync(ctx, metrics);
                ctx.Log($"cfg_search: gFID {g:G6} at cfg {p.CfgScale}; next scale {next.CfgScale}{(rect ? $", window [{next.WindowStart:F2}, {next.WindowEnd:F2}]" : "")}");
                await SampleGfidJob.SpawnRoundAsync(ctx, SampleGfidJob.WithWindow(p, next), next.CfgScale, round with { CfgHistory = history });
                return;
            }
            // final round: the whole curve, the best scale (argmin gFID; the reference returns the last tried) and the plot
            var best = CfgSearchPlan.Best(history);
            var bestMetrics = history.Select(h => (CfgSearchPlan.Key(p.Tokens, h), h.Gfid)).Append(("best_cfg", best.CfgScale));
            if (best.WindowStart is { } bws && best.WindowEnd is { } bwe) bestMetrics = bestMetrics.Append(("best_window_start", bws)).Append(("best_window_end", bwe));
            ctx.LogMetrics(p.Tokens, bestMetrics.ToArray());
            metrics["best_cfg"] = best.CfgScale;
            metrics["best_window_start"] = best.WindowStart;
            metrics["best_window_end"] = best.WindowEnd;
            metrics["best_gfid"] = best.Gfid;
            var plot = Path.Combine(ctx.ScratchDir, "cfg_curve.png");
            var curve = history.OrderBy(h => h.CfgScale).Select(h => (h.CfgScale, h.Gfid)).ToList();
            var bestLabel = $"best {best.CfgScale.ToString(System.Globalization.CultureInfo.InvariantCulture)}";
            new Chart($"gFID vs CFG scale (K={p.Tokens}), {bestLabel}: {p.CfgSchedule}, {history.Count} scales", "CFG scale", "gFID",
                [new Series("gFID", curve), new Series(bestLabel, [(best.CfgScale, best.Gfid)])]).SavePng(plot);
            await ctx.SaveArtifactFileAsync("cfg_curve.png", plot, "plot", overwrite: true, metadata: new { scales = history.Select(h => h.CfgScale), best_cfg = best.CfgScale });
            ctx.Log($"cfg_search done: {string.Join(", ", history.Select(h => $"cfg {h.CfgScale}: {h.Gfid:G6}"))}; best cfg {best.CfgScale}");
        }
        await WriteMetricsJsonAsync(ctx, metrics);
        ctx.ReportProgress(1, 1, $"aggregated {shards.Count} shards, {total} samples");
    }

    static async Task WriteMetricsJsonAsync(JobContext ctx, Dictionary<string, object?> metrics)
    {
        var mj = Path.Combine(ctx.ScratchDir, "metrics.json");
        await File.WriteAllTextAsync(mj, JsonSerializer.Serialize(metrics, new JsonSerializerOptions { WriteIndented = true }));
        await ctx.SaveArtifactFileAsync("metrics.json", mj, "json", overwrite: true);
    }

    static string[] ReadClassNames(string path)
    {
        try { return System.Text.Json.JsonSerializer.Deserialize<string[]>(File.ReadAllText(path)) ?? []; }
        catch (System.Text.Json.JsonException e) { throw new JobFailedException($"class_names: {Path.GetFileName(path)} is not a JSON list of names ({e.Message})", e); }
    }
}

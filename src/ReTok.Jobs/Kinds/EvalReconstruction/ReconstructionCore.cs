using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ReTok.Engine;
using ReTok.Evaluation.Features;
using ReTok.Evaluation.Images;
using ReTok.Evaluation.Inception;
using ReTok.Evaluation.Metrics;
using ReTok.Evaluation.Weights;
using ReTok.Jobs.Kinds.Shared;
using ReTok.Models;
using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using ReTok.Plots;
using ReTok.Tracking;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Jobs.Kinds.EvalReconstruction;

/// <summary>Resume state of every eval-reconstruction phase (checkpoints/latest/state.json).</summary>
public sealed record EvalState
{
    /// <summary>Reconstruction: rows [start, next) are in <see cref="Parts"/>.</summary>
    public long Next { get; init; }
    public List<string> Parts { get; init; } = new();
    /// <summary>Aggregation: Inception metrics already computed, by K ("32" → {rfid, sfid, is}).</summary>
    public Dictionary<string, Dictionary<string, double>> Inception { get; init; } = new();
    /// <summary>The outputs are registered.</summary>
    public bool Done { get; init; }
}

/// <summary>
/// ReTok's reconstruction evaluation (reconstruction_ddp.py quantitative_eval, evaluation.md §2) at several decode
/// lengths K. Phase 1 reconstructs a row range in batches that start at multiples of the batch size (so a sharded run
/// computes exactly the batches of a single-worker run) and saves each chunk as a checkpoint part: recon_k{K} uint8,
/// the 480 codes, per-image PSNR/SSIM (and LPIPS) and per-batch LPIPS means. Phase 2 concatenates the parts in row
/// order into recon_k{K}.npz and scores them: rFID/sFID against the data itself (or a given reference batch), IS,
/// PSNR, SSIM, LPIPS, codebook usage.
/// </summary>
public static class ReconstructionCore
{
    // ------------------------------------------------------------------ loading

    public static async Task<TokenizerConfig> LoadConfigAsync(JobContext ctx, TokenizerSource s)
    {
        try
        {
            return s.Config is { } c ? TokenizerConfig.Load(await ctx.GetRunArtifactFileAsync(c.RunId, c.Name, "tokenizer_config"))
                : s.ConfigPath is { } p ? TokenizerConfig.Load(p)
                : s.Preset is { } pr ? TokenizerConfig.Preset(pr)
                : throw new JobFailedException("no tokenizer config: give the input tokenizer_config, or params preset (VQ_SS256, VQ_SB256) or config (a YAML path)");
        }
        catch (Exception e) when (e is ArgumentException or InvalidDataException or FileNotFoundException)
        {
            throw new JobFailedException($"tokenizer config: {e.Message}", e);
        }
    }

    public static async Task<ReTokTokenizer> LoadTokenizerAsync(JobContext ctx, TokenizerSource s, Device device)
    {
        var cfg = await LoadConfigAsync(ctx, s);
        string weights;
        if (s.Weights is { } w) weights = await ctx.GetRunArtifactFileAsync(w.RunId, w.Name, "tokenizer");
        else if (s.Checkpoint is { } ck)
        {
            if (!File.Exists(ck)) throw new JobFailedException($"checkpoint: {ck} does not exist on worker {Environment.MachineName}");
            weights = ck;
        }
        else throw new JobFailedException("no tokenizer: give the inputs tokenizer + tokenizer_config, or params checkpoint (the authors' .pt) + preset or config");
        try
        {
            var sw = Stopwatch.StartNew();
            var model = ReTokTokenizer.FromCheckpoint(cfg, weights, s.Prefer);
            model.to(device);
            model.eval();
            ctx.Log($"tokenizer {cfg.PresetName ?? "custom"} ({cfg.CodebookSize} codes) loaded from {s.Describe()} in {sw.Elapsed.TotalSeconds:F1} s on {Devices.Describe(device)}");
            return model;
        }
        catch (Exception e) when (e is ArgumentException or InvalidDataException or EndOfStreamException or FormatException or System.Text.Json.JsonException)
        {
            // A truncated or malformed checkpoint: deterministic, and the message names the file.
            throw new JobFailedException($"tokenizer {s.Describe()}: {(e is EndOfStreamException ? "the file is truncated" : e.Message)}", e);
        }
    }

    /// <summary>Rows of the data npz (arr_0 must be uint8 [M,size,size,3], size = the tokenizer's image_size).</summary>
    public static long DataRows(string dataPath, int size)
    {
        var h = Npz.Header(dataPath, "arr_0");
        if (h.Dtype != "|u1" || h.Shape.Length != 4 || h.Shape[1] != size || h.Shape[2] != size || h.Shape[3] != 3)
            throw new JobFailedException($"data: {Path.GetFileName(dataPath)} arr_0 is {h.Dtype} [{string.Join(",", h.Shape)}]; "
                + $"the tokenizer (image_size {size}) needs uint8 [N,{size},{size},3] (extract-dataset's dataset.npz with image_size: {size})");
        return h.Shape[0];
    }

    /// <summary>LPIPS-VGG from the weights folder, or null with a logged reason (nothing fake is recorded).</summary>
    static LpipsVgg? TryLoadLpips(JobContext ctx, EvalReconstructionParams s, Device device)
    {
        if (!s.Lpips) return null;
        try
        {
            var vgg = WeightsRegistry.Resolve("vgg16", s.WeightsDir);
            var lin = WeightsRegistry.Resolve("lpips-vgg", s.WeightsDir);
            var m = LpipsVgg.Load(vgg, lin);
            m.to(device).eval();
            return m;
        }
        catch (MissingWeightsException e)
        {
            ctx.Log($"LPIPS skipped: {e.Message}", "warn");
            return null;
        }
    }

    // ------------------------------------------------------------------ phase 1: reconstruct

    /// <summary>Part keys: rows int64 [2] (first row, end), codes, recon_k{K}, psnr_k{K}, ssim_k{K}, lpips_k{K}, lpips_batch_k{K}.</summary>
    public static async Task<EvalState> ReconstructAsync(JobContext ctx, ReTokTokenizer model, Device device, string dataPath, long start, long end,
        EvalReconstructionParams s, EvalState state, Dictionary<string, string> localParts)
    {
        int bs = s.BatchSize;
        if (start % bs != 0) throw new JobFailedException($"shard start {start} is not a multiple of batch_size {bs}");
        long next = Math.Max(start, state.Next);
        if (next >= end) return state;
        using var lpips = TryLoadLpips(ctx, s, device);
        var dir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "parts")).FullName;
        long rowsPerPart = (long)bs * s.ChunkBatches;
        var sw = Stopwatch.StartNew();
        long startedAt = next;
        ctx.Log(next == start ? $"reconstructing rows {start}..{end - 1} at K = {string.Join(", ", s.TokenCounts)} (batch {s.BatchSize}, parts of {rowsPerPart})"
                              : $"resuming reconstruction at row {next} of {start}..{end - 1} ({state.Parts.Count} parts done)");
        // from the first row to do: a shard or a resumed run does not read the rows before it
        using var rows = Npz.ReadRows(dataPath, "arr_0", bs, fromRow: next).GetEnumerator();
        while (next < end)
        {
            ctx.ThrowIfCancellationRequested();
            long partEnd = Math.Min(end, next + rowsPerPart);
            var part = new PartBuilder(s.TokenCounts, lpips is not null, model.Config.ImageSize);
            while (part.Rows < partEnd - next)
            {
                long row = next + part.Rows;
                NpyArray chunk;
                do
                {
                    if (!rows.MoveNext()) throw new JobFailedException($"data: {dataPath} ended before row {row}");
                } while (rows.Current.Start + rows.Current.Chunk.Shape[0] <= row);
                chunk = rows.Current.Chunk;
                if (rows.Current.Start != row) throw new InvalidOperationException($"batch grid broken: expected a batch at row {row}, got {rows.Current.Start}");
                int n = (int)Math.Min(chunk.Shape[0], partEnd - row);
                using var scope = NewDisposeScope();
                var (codes, width, perK) = ReconstructBatch(model, lpips, device, chunk.ToTensor().narrow(0, 0, n), s.TokenCounts);
                part.AddCodes(codes, width);
                foreach (var (k, res) in perK) part.Add(k, res);
            }
            var name = $"recon_{next:D9}.npz";
            var path = Path.Combine(dir, name);
            part.Save(path, next);
            await ctx.Checkpoints.SavePartAsync(name, path);
            localParts[name] = path;
            next = partEnd;
            state = state with { Next = next, Parts = state.Parts.Append(name).ToList() };
            await ctx.Checkpoints.SaveStateAsync(next, state);
            double rate = (next - startedAt) / Math.Max(1e-3, sw.Elapsed.TotalSeconds);
            ctx.ReportProgress(next - start, end - start, $"reconstructed {next - start}/{end - start} images ({rate:F2} img/s)");
        }
        return state;
    }

    /// <summary>One K of one batch: uint8 NHWC reconstruction bytes, per-image PSNR/SSIM (and LPIPS when a model is given).</summary>
    public sealed record KResult(byte[] Recon, double[] Psnr, double[] Ssim, double[]? Lpips);

    /// <summary>
    /// Encodes a uint8 NHWC batch once (codes B x 480) and, for every K, decodes the first K codes and scores the result as
    /// reconstruction_ddp.py: uint8 = trunc(clamp(127.5x+128)), PSNR/SSIM on the uint8 image, LPIPS on the GT in [-1,1]
    /// and the raw decoder output.
    /// </summary>
    public static (long[] Codes, int Width, Dictionary<int, KResult> PerK) ReconstructBatch(ReTokTokenizer model, LpipsVgg? lpips, Device device, Tensor gtU8, int[] ks)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        int n = (int)gtU8.shape[0], side = (int)gtU8.shape[1], per = side * side * 3;
        var x = ReconstructionEvaluator.ToModelInput(gtU8).to(device);
        var codes = model.Encode(x).cpu().to(ScalarType.Int64).contiguous();
        var g = gtU8.contiguous().bytes.ToArray();
        var perK = new Dictionary<int, KResult>();
        foreach (var k in ks)
        {
            var raw = model.Decode(codes, k);
            var r = ReconstructionEvaluator.ToUint8(raw).bytes.ToArray();
            var ps = new double[n]; var ss = new double[n];
            Parallel.For(0, n, i =>
            {
                ps[i] = ReconMetrics.Psnr(g.AsSpan(i * per, per), r.AsSpan(i * per, per));
                ss[i] = ReconMetrics.Ssim(g.AsSpan(i * per, per), r.AsSpan(i * per, per), side, side);
            });
            double[]? lp = lpips is null ? null
                : lpips.call(x, raw.to(ScalarType.Float32)).to(ScalarType.Float64).cpu().reshape(-1).data<double>().ToArray();
            perK[k] = new KResult(r, ps, ss, lp);
        }
        return (codes.data<long>().ToArray(), (int)codes.shape[1], perK);
    }

    /// <summary>Accumulates one part in memory.</summary>
    sealed class PartBuilder(int[] ks, bool lpips, int side)
    {
        readonly List<long> _codes = new();
        int _width;
        readonly Dictionary<int, (MemoryStream Recon, List<double> Psnr, List<double> Ssim, List<double> Lpips, List<double> LpipsBatch)> _k =
            ks.ToDictionary(k => k, _ => (new MemoryStream(), new List<double>(), new List<double>(), new List<double>(), new List<double>()));
        public int Rows { get; private set; }

        public void AddCodes(long[] codes, int width)
        {
            _width = width;
            _codes.AddRange(codes);
            Rows += codes.Length / width;
        }

        public void Add(int k, KResult r)
        {
            var e = _k[k];
            e.Recon.Write(r.Recon);
            e.Psnr.AddRange(r.Psnr); e.Ssim.AddRange(r.Ssim);
            if (r.Lpips is not null) { e.Lpips.AddRange(r.Lpips); e.LpipsBatch.Add(r.Lpips.Average()); }
        }

        public void Save(string path, long first)
        {
            var a = new Dictionary<string, NpyArray>
            {
                ["rows"] = NpyArray.Of(new[] { first, first + Rows }, 2),
                ["codes"] = NpyArray.Of(_codes.ToArray(), Rows, _width),
            };
            foreach (var (k, e) in _k)
            {
                a[$"recon_k{k}"] = new NpyArray("|u1", [Rows, side, side, 3], e.Recon.ToArray());
                a[$"psnr_k{k}"] = NpyArray.Of(e.Psnr.ToArray(), Rows);
                a[$"ssim_k{k}"] = NpyArray.Of(e.Ssim.ToArray(), Rows);
                if (lpips)
                {
                    a[$"lpips_k{k}"] = NpyArray.Of(e.Lpips.ToArray(), Rows);
                    a[$"lpips_batch_k{k}"] = NpyArray.Of(e.LpipsBatch.ToArray(), e.LpipsBatch.Count);
                }
            }
            Npz.Save(path, a);
        }
    }

    // ------------------------------------------------------------------ phase 2: aggregate

    public sealed record AggregateInput(string DataPath, ArtifactRef Data, string? ReferencePath, ArtifactRef? Reference, long Count,
        int CodebookSize, string Tokenizer, EvalReconstructionParams Settings, int Shards);

    /// <summary>Concatenates the parts (row order), scores every K, registers the outputs; returns the final state.</summary>
    public static async Task<EvalState> AggregateAsync(JobContext ctx, AggregateInput a, IReadOnlyList<string> partFiles, EvalState state, Device device)
    {
        var s = a.Settings;
        var ks = s.TokenCounts;
        var outDir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "out")).FullName;
        var sw = Stopwatch.StartNew();

        // Parts must tile [0, Count) in order.
        long expect = 0;
        foreach (var f in partFiles)
        {
            var r = Npz.LoadKey(f, "rows").As<long>();
            if (r[0] != expect) throw new JobFailedException($"reconstruction parts do not tile the data: {Path.GetFileName(f)} starts at row {r[0]}, expected {expect}");
            expect = r[1];
        }
        if (expect != a.Count) throw new JobFailedException($"reconstruction parts cover {expect} rows, expected {a.Count}");
        bool hasLpips = partFiles.All(f => Npz.Keys(f).Contains($"lpips_k{ks[0]}"));
        if (s.Lpips && !hasLpips) ctx.Log("LPIPS not reported: " + (partFiles.Any(f => Npz.Keys(f).Contains($"lpips_k{ks[0]}")) ? "some shards had no LPIPS weights" : "no LPIPS weights on the reconstructing workers (see the warning above)"), "warn");

        // recon_k<K>.npz (arr_0 + the data's labels, as reconstruction_ddp.py's sample npz in data order) and per-image metrics.
        byte[]? labelBytes = null;
        if (Npz.Keys(a.DataPath).Contains("labels") && Npz.LoadKey(a.DataPath, "labels") is { Dtype: "<i8", Shape.Length: 1 } lab && lab.Shape[0] >= a.Count)
            labelBytes = lab.Data.AsSpan(0, checked((int)(a.Count * 8))).ToArray();
        var reconFiles = new Dictionary<int, string>();
        long side = Npz.Header(a.DataPath, "arr_0").Shape[1];
        var perK = new Dictionary<int, Dictionary<string, double>>();
        foreach (var k in ks)
        {
            ctx.ThrowIfCancellationRequested();
            var file = Path.Combine(outDir, $"recon_k{k}.npz");
            using (var w = new NpzStreamWriter(file))
            {
                w.BeginArray("arr_0", "|u1", [a.Count, side, side, 3]);
                foreach (var f in partFiles) w.Append(Npz.LoadKey(f, $"recon_k{k}").Data);
                if (labelBytes is not null) { w.BeginArray("labels", "<i8", [a.Count]); w.Append(labelBytes); }
                w.Commit();
            }
            reconFiles[k] = file;
            double[] Cat(string key) => partFiles.SelectMany(f => Npz.LoadKey(f, key).As<double>()).ToArray();
            var m = new Dictionary<string, double> { ["psnr"] = Mean(Cat($"psnr_k{k}")), ["ssim"] = Mean(Cat($"ssim_k{k}")) };
            if (hasLpips)
            {
                m["lpips"] = Mean(Cat($"lpips_batch_k{k}"));             // the reference's mean of per-batch means
                m["lpips_per_image"] = Mean(Cat($"lpips_k{k}"));
            }
            perK[k] = m;
        }

        // Codebook usage: distinct codes among the first K tokens of every image / codebook size; and over all 480
        // tokens (the reference's definition, which also counts the 224 padding tokens the decoder never reads).
        var codes = partFiles.Select(f => Npz.LoadKey(f, "codes")).ToList();
        int width = (int)codes[0].Shape[1];
        double Usage(int k)
        {
            var used = new bool[a.CodebookSize];
            foreach (var c in codes)
            {
                var v = c.As<long>();
                for (long i = 0; i < c.Shape[0]; i++)
                    for (int j = 0; j < k; j++) used[v[i * width + j]] = true;
            }
            return used.Count(u => u) / (double)a.CodebookSize;
        }
        double usageAll = Usage(width);
        foreach (var k in ks) { perK[k]["codebook_usage"] = Usage(k); perK[k]["codebook_usage_all_tokens"] = usageAll; }

        // Inception metrics (rFID, sFID, IS), checkpointed per K.
        var skipped = new Dictionary<string, string>();
        if (!hasLpips) skipped["lpips"] = s.Lpips ? "LPIPS weights (vgg16-397923af.pth, vgg.pth) not found on the reconstructing worker(s); import them with `retok weights import`" : "lpips: false";
        string referenceDesc = a.Reference is { } rr ? $"given reference batch {rr}" : $"the data itself ({a.Data}, first {a.Count} images)";
        string? inceptionWeights = null, inceptionSha = null; // for the provenance records
        if (!s.Fid) skipped["rfid"] = skipped["sfid"] = skipped["is"] = "fid: false";
        else
        {
            string? weights = null;
            try { weights = WeightsRegistry.Resolve("inception", s.WeightsDir); }
            catch (MissingWeightsException e)
            {
                ctx.Log($"rFID, sFID and IS skipped: {e.Message}", "warn");
                skipped["rfid"] = skipped["sfid"] = skipped["is"] = e.Message;
            }
            if (weights is not null)
            {
                using var ex = InceptionExtractor.Load(weights, device);
                ex.BatchSize = s.InceptionBatchSize;
                var cache = s.FeatureCache ? FeatureCache.Default() : null;
                string weightsId = FeatureArtifacts.WeightsId(weights, cache);
                (inceptionWeights, inceptionSha) = (weights, weightsId);
                EvalBatch? reference = null;
                try
                {
                    foreach (var k in ks)
                    {
                        ctx.ThrowIfCancellationRequested();
                        if (state.Inception.TryGetValue(k.ToString(CultureInfo.InvariantCulture), out var done)) { foreach (var (n, v) in done) perK[k][n] = v; continue; }
                        reference ??= await OpenReferenceAsync(ctx, a, ex, weightsId, cache);
                        ctx.ReportProgress(Array.IndexOf(ks, k), ks.Length, $"Inception features of recon_k{k}.npz");
                        var f = ex.ExtractNpz(reconFiles[k], "arr_0");
                        using var sample = EvalBatch.FromFeatures(f, reconFiles[k]); // owns f
                        var res = new Dictionary<string, double>
                        {
                            ["rfid"] = sample.Pool.FrechetDistance(reference.Pool, w => ctx.Log($"rFID@k={k}: {w}", "warn")),
                            ["sfid"] = sample.Spatial.FrechetDistance(reference.Spatial, w => ctx.Log($"sFID@k={k}: {w}", "warn")),
                            ["is"] = InceptionScore.Compute(f.Logits),
                        };
                        foreach (var (n, v) in res) perK[k][n] = v;
                        var inc = new Dictionary<string, Dictionary<string, double>>(state.Inception) { [k.ToString(CultureInfo.InvariantCulture)] = res };
                        state = state with { Inception = inc };
                        await ctx.Checkpoints.SaveStateAsync(a.Count, state);
                    }
                }
                finally { reference?.Dispose(); }
            }
        }

        // Grid, plot, metrics.json.
        var grid = Path.Combine(outDir, "grid.png");
        int g = (int)Math.Min(s.GridImages, a.Count);
        var rowsForGrid = new List<Tensor> { Npz.ReadRows(a.DataPath, "arr_0", g).First().Chunk.ToTensor() };
        foreach (var k in ks) rowsForGrid.Add(Npz.ReadRows(reconFiles[k], "arr_0", g).First().Chunk.ToTensor());
        using (var all = cat(rowsForGrid, 0)) ImageGrid.Save(grid, all, nrow: g);
        // One small PNG per image of the grid (recon/original/{i}.png, recon/k{K}/{i}.png): the dashboard's
        // /compare/images puts the same source image side by side across runs and K.
        var tiles = new List<(string Name, string Path)>();
        for (var row = 0; row < rowsForGrid.Count; row++)
        {
            var dir = row == 0 ? "original" : $"k{ks[row - 1]}";
            Directory.CreateDirectory(Path.Combine(outDir, "recon", dir));
            for (var i = 0; i < g; i++)
            {
                var tile = Path.Combine(outDir, "recon", dir, $"{i}.png");
                using (var one = rowsForGrid[row].narrow(0, i, 1)) ImageGrid.Save(tile, one, nrow: 1, padding: 0);
                tiles.Add(($"recon/{dir}/{i}.png", tile));
            }
        }
        foreach (var t in rowsForGrid) t.Dispose();

        var plot = Path.Combine(outDir, "metrics_vs_k.png");
        // one panel per metric against K (log2 axis); a metric some K lacks (or has non-finite) is left out
        var panels = new[] { ("rfid", "rFID"), ("sfid", "sFID"), ("is", "Inception Score"), ("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("codebook_usage", "codebook usage") }
            .Where(n => ks.All(k => perK[k].ContainsKey(n.Item1) && double.IsFinite(perK[k][n.Item1])))
            .Select(n => new Chart(n.Item2, "tokens K", "", [new Series("", ks.Order().Select(k => ((double)k, perK[k][n.Item1])).ToList())], Log2X: true)).ToList();
        Chart.SavePng(plot, $"reconstruction vs tokens K: {a.Tokenizer}", panels, cols: 3, w: 420, h: 320);

        var json = Path.Combine(outDir, "metrics.json");
        var doc = new Dictionary<string, object?>
        {
            ["tokenizer"] = a.Tokenizer, ["data"] = a.Data.ToString(), ["images"] = a.Count, ["token_counts"] = ks,
            ["batch_size"] = s.BatchSize, ["shards"] = a.Shards, ["codebook_size"] = a.CodebookSize,
            ["rfid_reference"] = referenceDesc,
            ["metrics"] = ks.ToDictionary(k => k.ToString(CultureInfo.InvariantCulture), k => perK[k]),
            ["flat"] = ks.SelectMany(k => perK[k].Select(kv => (Key: $"{kv.Key}@k={k}", kv.Value))).ToDictionary(x => x.Key, x => x.Value),
            ["skipped"] = skipped,
            ["notes"] = new[]
            {
                "psnr, ssim: per-image means on the uint8 reconstruction (SSIM with the reference's data_range=2.0)",
                "lpips: mean of per-batch means on the raw decoder output (reconstruction_ddp.py); lpips_per_image: plain mean",
                "codebook_usage: distinct codes among the first K tokens / codebook size; codebook_usage_all_tokens: over all 480 tokens (the reference's definition)",
                "is: Inception Score of recon_k<K>.npz in data order (10 splits of 5000 when N = 50000)",
            },
        };
        await File.WriteAllTextAsync(json, JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));

        foreach (var k in ks)
            foreach (var name in new[] { "rfid", "sfid", "is", "psnr", "ssim", "lpips", "codebook_usage" })
                if (perK[k].TryGetValue(name, out var v)) ctx.LogMetric($"{name}@k={k}", k, v);
        await RecordProvenanceAsync(ctx, a, perK, inceptionWeights, inceptionSha, hasLpips);

        foreach (var k in ks)
            await ctx.SaveArtifactFileAsync($"recon_k{k}.npz", reconFiles[k], "npz", overwrite: true, metadata: new { tokens = k, images = a.Count });
        await ctx.SaveArtifactFileAsync("grid.png", grid, "image", overwrite: true, metadata: new { rows = "originals, then one row per K", token_counts = ks });
        foreach (var (name, path) in tiles) await ctx.SaveArtifactFileAsync(name, path, "image", overwrite: true);
        await ctx.SaveArtifactFileAsync("metrics_vs_k.png", plot, "plot", overwrite: true);
        await ctx.SaveArtifactFileAsync("metrics.json", json, "json", overwrite: true);
        foreach (var k in ks)
            ctx.Log($"K={k}: " + string.Join(", ", perK[k].Select(kv => $"{kv.Key} {kv.Value:G6}")));
        ctx.Log($"aggregated {a.Count} images x {ks.Length} token counts in {sw.Elapsed.TotalSeconds:F1} s; rFID reference: {referenceDesc}");
        state = state with { Done = true };
        await ctx.Checkpoints.SaveStateAsync(a.Count, state);
        return state;
    }

    /// <summary>Provenance of every logged metric (docs/evaluation.md "Provenance"): Inception metrics and pixel metrics apart.</summary>
    static async Task RecordProvenanceAsync(JobContext ctx, AggregateInput a, Dictionary<int, Dictionary<string, double>> perK,
        string? inceptionWeights, string? inceptionSha, bool hasLpips)
    {
        var refRef = a.Reference ?? a.Data;
        var refSha = await EvalProtocols.ShaAsync(ctx, refRef.RunId, refRef.Name);
        var refDesc = a.Reference is not null ? refRef.ToString() : $"{a.Data} (first {a.Count} images)";
        foreach (var (k, m) in perK)
        {
            List<string> Keys(params string[] names) => names.Where(m.ContainsKey).Select(n => $"{n}@k={k}").ToList();
            var inception = Keys("rfid", "sfid", "is");
            if (inception.Count > 0 && inceptionWeights is not null)
                await ctx.RecordProvenanceAsync(inception, new EvalProvenance
                {
                    Evaluator = EvalProtocols.Adm, EvaluatorVersion = EvalProtocols.AdmVersion, Weights = Path.GetFileName(inceptionWeights),
                    WeightsSha256 = inceptionSha, Reference = refDesc, ReferenceSha256 = refSha, Preprocess = EvalProtocols.InceptionPreprocess,
                    Samples = a.Count, Precision = "fp32", K = k,
                });
            var pixel = Keys("psnr", "ssim", "lpips");
            if (pixel.Count > 0)
                await ctx.RecordProvenanceAsync(pixel, new EvalProvenance
                {
                    Evaluator = EvalProtocols.Pixel, EvaluatorVersion = EvalProtocols.PixelVersion, Weights = hasLpips ? "vgg16-397923af.pth + vgg.pth" : null,
                    Reference = $"{a.Data} (first {a.Count} images)", ReferenceSha256 = await EvalProtocols.ShaAsync(ctx, a.Data.RunId, a.Data.Name),
                    Preprocess = EvalProtocols.PixelPreprocess, Samples = a.Count, Precision = "fp32", K = k,
                });
        }
    }

    static double Mean(double[] v) => v.Length == 0 ? double.NaN : v.Sum() / v.Length;

    /// <summary>
    /// The rFID reference: a given reference batch (its stored mu/sigma/mu_s/sigma_s as given, else the features of its
    /// arr_0), or the data itself (its first Count rows). Features go through the shared feature artifacts
    /// (feature_cache: true) so a data file is run through Inception once per weights file, on any machine.
    /// </summary>
    static async Task<EvalBatch> OpenReferenceAsync(JobContext ctx, AggregateInput a, InceptionExtractor ex, string weightsId, FeatureCache? cache)
    {
        async Task<string> ShaOf(ArtifactRef r) => (await ctx.Tracker.GetArtifactAsync(r.RunId, r.Name, ctx.CancellationToken))?.Sha256
            ?? throw new JobFailedException($"input {r} no longer exists");
        if (a.ReferencePath is { } rp)
        {
            ctx.Log($"rFID reference: {a.Reference} ({rp})");
            if (!a.Settings.FeatureCache) return AdmEvaluator.Open(rp, () => ex, null, m => ctx.Log(m));
            return await FeatureArtifacts.OpenBatchAsync(ctx, rp, await ShaOf(a.Reference!), weightsId, () => ex, cache, needFeatures: false, role: "reference_features");
        }
        long rows = Npz.Header(a.DataPath, "arr_0").Shape[0];
        ctx.ReportProgress(0, 1, "Inception features of the data (rFID reference)");
        FeatureSet Compute() => ex.ExtractBatches(
            Npz.ReadRows(a.DataPath, "arr_0", ex.BatchSize).TakeWhile(c => c.Start < a.Count)
               .Select(c => c.Chunk.ToTensor().narrow(0, 0, Math.Min(c.Chunk.Shape[0], a.Count - c.Start))),
            a.Count, disposeBatches: true);
        var feats = a.Settings.FeatureCache
            ? await FeatureArtifacts.GetOrComputeAsync(ctx, a.DataPath, await ShaOf(a.Data), weightsId, Compute, cache, rows == a.Count ? null : a.Count, "reference_features")
            : Compute();
        return EvalBatch.FromFeatures(feats, a.DataPath);
    }
}

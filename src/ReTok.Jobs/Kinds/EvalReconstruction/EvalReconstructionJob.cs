using System.Text.Json;
using ReTok.Engine;
using ReTok.Jobs.Kinds.Shared;
using ReTok.Models;

namespace ReTok.Jobs.Kinds.EvalReconstruction;

/// <summary>
/// Reconstruction evaluation of a tokenizer on an extracted val set at several token counts K: recon_k{K}.npz,
/// metrics.json, grid.png, metrics_vs_k.png; metrics rfid/sfid/is/psnr/ssim/lpips/codebook_usage@k={K} at step K.
/// With shards &gt; 1 it fans out: each shard reconstructs a disjoint row range into checkpoint parts, and
/// eval-reconstruction-aggregate concatenates and scores them; the result is identical to a single-worker run (same
/// batch grid, same concatenation and scoring code).
/// </summary>
[JobKind("eval-reconstruction", Queue = "gpu", MaxAttempts = 3, Description = "tokenizer reconstruction metrics (rFID, sFID, IS, PSNR, SSIM, LPIPS, codebook usage) vs token count K")]
public sealed class EvalReconstructionJob : IFanOutJob<EvalReconstructionParams>
{
    public async Task RunAsync(JobContext ctx, EvalReconstructionParams p)
    {
        var (data, reference, tok) = await SourcesAsync(ctx, p);
        var cfg = await ReconstructionCore.LoadConfigAsync(ctx, tok);
        var dataPath = await ctx.GetRunArtifactFileAsync(data.RunId, data.Name, "data");
        long count = Math.Min(ReconstructionCore.DataRows(dataPath, cfg.ImageSize), p.Limit ?? long.MaxValue);

        if (p.Shards > 1)
        {
            var ranges = BatchShards.Split(count, p.BatchSize, p.Shards);
            await ctx.SpawnShardsAsync(ranges.Cast<object>().ToList(), new EvalReconFanIn { Count = count, Shards = ranges.Count, CodebookSize = cfg.CodebookSize, Tokenizer = tok.Describe() });
            return;
        }

        var device = Devices.Resolve(ctx.Device);
        var state = await ctx.Checkpoints.LoadStateAsync<EvalState>() ?? new EvalState();
        if (!state.Done)
        {
            var local = new Dictionary<string, string>();
            if (state.Next < count)
            {
                using var model = await ReconstructionCore.LoadTokenizerAsync(ctx, tok, device);
                state = await ReconstructionCore.ReconstructAsync(ctx, model, device, dataPath, 0, count, p, state, local);
            }
            var dir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "parts")).FullName;
            var parts = new List<string>();
            foreach (var n in state.Parts) parts.Add(local.TryGetValue(n, out var lp) ? lp : await ctx.Checkpoints.FetchPartAsync(ctx.RunId, n, dir));
            var refPath = reference is { } r ? await ctx.GetRunArtifactFileAsync(r.RunId, r.Name, "reference") : null;
            state = await ReconstructionCore.AggregateAsync(ctx,
                new ReconstructionCore.AggregateInput(dataPath, data, refPath, reference, count, cfg.CodebookSize, tok.Describe(), p, 1), parts, state, device);
        }
        if (p.ReleaseParts) await ctx.Checkpoints.ReleasePartsAsync(state.Parts);
    }

    /// <summary>One shard: reconstructs rows [start, end) into checkpoint parts and lists them in parts.json.</summary>
    public async Task RunShardAsync(JobContext ctx, EvalReconstructionParams p)
    {
        var range = ctx.GetFanOutState<RowRange>();
        var (data, _, tok) = await SourcesAsync(ctx, p);
        var state = await ctx.Checkpoints.LoadStateAsync<EvalState>() ?? new EvalState { Next = range.Start };
        if (state.Next < range.End)
        {
            var device = Devices.Resolve(ctx.Device);
            var dataPath = await ctx.GetRunArtifactFileAsync(data.RunId, data.Name, "data");
            using var model = await ReconstructionCore.LoadTokenizerAsync(ctx, tok, device);
            state = await ReconstructionCore.ReconstructAsync(ctx, model, device, dataPath, range.Start, range.End, p, state, new Dictionary<string, string>());
        }
        var json = JsonSerializer.Serialize(new { start = range.Start, end = range.End, parts = state.Parts });
        await ctx.SaveArtifactAsync("parts.json", new MemoryStream(System.Text.Encoding.UTF8.GetBytes(json)), "json", overwrite: true);
    }

    /// <summary>The fan-in: the shards' parts in shard order → the same outputs and metrics as a single-worker run.</summary>
    public async Task AggregateAsync(JobContext ctx, EvalReconstructionParams p)
    {
        var fan = ctx.GetFanOutState<EvalReconFanIn>();
        var shards = await ctx.GetShardsAsync();
        if (shards.Count != fan.Shards) throw new JobFailedException($"expected {fan.Shards} shards, found {shards.Count}");
        var listed = new List<(long Run, List<string> Parts)>();
        foreach (var sh in shards)
        {
            var file = await ctx.GetRunArtifactFileAsync(sh.Id, "parts.json", $"shard-{sh.ShardIndex}");
            var names = JsonDocument.Parse(await File.ReadAllTextAsync(file)).RootElement.GetProperty("parts").EnumerateArray().Select(e => e.GetString()!).ToList();
            listed.Add((sh.Id, names));
        }
        var (data, reference, _) = await SourcesAsync(ctx, p);
        var state = await ctx.Checkpoints.LoadStateAsync<EvalState>() ?? new EvalState();
        if (!state.Done)
        {
            var device = Devices.Resolve(ctx.Device);
            var dataPath = await ctx.GetRunArtifactFileAsync(data.RunId, data.Name, "data");
            var refPath = reference is { } r ? await ctx.GetRunArtifactFileAsync(r.RunId, r.Name, "reference") : null;
            var dir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "parts")).FullName;
            var parts = new List<string>();
            foreach (var (run, names) in listed)
                foreach (var n in names) parts.Add(await ctx.Checkpoints.FetchPartAsync(run, n, dir));
            state = await ReconstructionCore.AggregateAsync(ctx,
                new ReconstructionCore.AggregateInput(dataPath, data, refPath, reference, fan.Count, fan.CodebookSize, fan.Tokenizer, p, shards.Count), parts, state, device);
        }
        if (p.ReleaseParts)
            foreach (var (run, names) in listed) await ctx.Checkpoints.ReleasePartsAsync(names, run);
    }

    /// <summary>What every phase reads besides the params: the data and reference artifacts and the tokenizer, from params and inputs.</summary>
    static async Task<(ArtifactRef Data, ArtifactRef? Reference, TokenizerSource Tokenizer)> SourcesAsync(JobContext ctx, EvalReconstructionParams p)
    {
        var data = await RefOf(ctx, "data") ?? throw new JobFailedException("eval-reconstruction needs the input 'data' (a dataset.npz, e.g. extract/dataset.npz)");
        var reference = await RefOf(ctx, "reference");
        var tok = new TokenizerSource
        {
            Weights = await RefOf(ctx, "tokenizer"), Config = await RefOf(ctx, "tokenizer_config"),
            Checkpoint = p.Checkpoint, Preset = p.Preset, ConfigPath = p.Config, Prefer = p.Prefer,
        };
        if (tok.Weights is not null && tok.Checkpoint is not null)
            throw new JobFailedException("give the tokenizer either as the input 'tokenizer' or as params checkpoint, not both");
        if (tok.Config is not null && (tok.Preset ?? tok.ConfigPath) is not null)
            throw new JobFailedException("give the tokenizer config either as the input 'tokenizer_config' or as params preset/config, not both");
        return (data, reference, tok);
    }

    static async Task<ArtifactRef?> RefOf(JobContext ctx, string role)
    {
        if (!ctx.InputRoles.Contains(role)) return null;
        var a = await ctx.ResolveInputAsync(role);
        return new ArtifactRef { RunId = a.RunId, Name = a.Name };
    }
}

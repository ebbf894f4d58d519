using System.Text.Json;
using ReTok.Engine;
using ReTok.Jobs.Kinds.Shared;
using ReTok.Models;

namespace ReTok.Jobs.Kinds.EvalReconstruction;

/// <summary>
/// Reconstruction evaluation of a tokenizer on an extracted val set at several token counts K: recon_k{K}.npz,
/// metrics.json, grid.png, metrics_vs_k.png; metrics rfid/sfid/is/psnr/ssim/lpips/codebook_usage@k={K} at step K.
/// With shards &gt; 1 it fans out into eval-reconstruction-shard runs over disjoint row ranges and an
/// eval-reconstruction-aggregate run; the result is identical to a single-worker run (same batch grid, same
/// concatenation and scoring code).
/// </summary>
[JobKind("eval-reconstruction", Queue = "gpu", MaxAttempts = 3, Description = "tokenizer reconstruction metrics (rFID, sFID, IS, PSNR, SSIM, LPIPS, codebook usage) vs token count K")]
public sealed class EvalReconstructionJob : IJobHandler<EvalReconstructionParams>
{
    public async Task RunAsync(JobContext ctx, EvalReconstructionParams p)
    {
        var s = p.ToSettings();
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
        var cfg = await ReconstructionCore.LoadConfigAsync(ctx, tok);
        var dataPath = await ctx.GetRunArtifactFileAsync(data.RunId, data.Name, "data");
        long count = Math.Min(ReconstructionCore.DataRows(dataPath, cfg.ImageSize), p.Limit ?? long.MaxValue);

        if (p.Shards > 1 && ctx.ShardIndex is null)
        {
            long batches = (count + s.BatchSize - 1) / s.BatchSize;
            int shards = (int)Math.Min(p.Shards, batches);
            var shardParams = Enumerable.Range(0, shards).Select(i => (object)new EvalReconShardParams
            {
                Tokenizer = tok, Data = data, Settings = s,
                Start = i * batches / shards * s.BatchSize, End = Math.Min(count, (i + 1) * batches / shards * s.BatchSize),
            }).ToList();
            await ctx.SpawnShardsAsync("eval-reconstruction-shard", shardParams, "eval-reconstruction-aggregate", new EvalReconAggregateParams
            {
                Data = data, Reference = reference, Count = count, ExpectedShards = shards, CodebookSize = cfg.CodebookSize, Tokenizer = tok.Describe(), Settings = s,
            });
            return;
        }

        var device = Devices.Resolve(ctx.Device);
        var state = await CheckpointParts.LoadStateAsync<EvalState>(ctx) ?? new EvalState();
        if (!state.Done)
        {
            var local = new Dictionary<string, string>();
            if (state.Next < count)
            {
                using var model = await ReconstructionCore.LoadTokenizerAsync(ctx, tok, device);
                state = await ReconstructionCore.ReconstructAsync(ctx, model, device, dataPath, 0, count, s, state, local);
            }
            var dir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "parts")).FullName;
            var parts = new List<string>();
            foreach (var n in state.Parts) parts.Add(local.TryGetValue(n, out var lp) ? lp : await CheckpointParts.FetchAsync(ctx, ctx.RunId, n, dir));
            var refPath = reference is { } r ? await ctx.GetRunArtifactFileAsync(r.RunId, r.Name, "reference") : null;
            state = await ReconstructionCore.AggregateAsync(ctx,
                new ReconstructionCore.AggregateInput(dataPath, data, refPath, reference, count, cfg.CodebookSize, tok.Describe(), s, 1), parts, state, device);
        }
        if (s.ReleaseParts) await CheckpointParts.ReleaseAsync(ctx, state.Parts);
    }

    static async Task<ArtifactRef?> RefOf(JobContext ctx, string role)
    {
        if (!ctx.InputRoles.Contains(role)) return null;
        var a = await ctx.ResolveInputAsync(role);
        return new ArtifactRef { RunId = a.RunId, Name = a.Name };
    }
}

/// <summary>One shard: reconstructs rows [start, end) into checkpoint parts and lists them in parts.json.</summary>
[JobKind("eval-reconstruction-shard", Queue = "gpu", MaxAttempts = 3, Description = "eval-reconstruction shard: reconstruct a row range")]
public sealed class EvalReconstructionShardJob : IJobHandler<EvalReconShardParams>
{
    public async Task RunAsync(JobContext ctx, EvalReconShardParams p)
    {
        var state = await CheckpointParts.LoadStateAsync<EvalState>(ctx) ?? new EvalState { Next = p.Start };
        if (state.Next < p.End)
        {
            var device = Devices.Resolve(ctx.Device);
            var dataPath = await ctx.GetRunArtifactFileAsync(p.Data.RunId, p.Data.Name, "data");
            using var model = await ReconstructionCore.LoadTokenizerAsync(ctx, p.Tokenizer, device);
            state = await ReconstructionCore.ReconstructAsync(ctx, model, device, dataPath, p.Start, p.End, p.Settings, state, new Dictionary<string, string>());
        }
        var json = JsonSerializer.Serialize(new { start = p.Start, end = p.End, parts = state.Parts });
        await ctx.SaveArtifactAsync("parts.json", new MemoryStream(System.Text.Encoding.UTF8.GetBytes(json)), "json", overwrite: true);
    }
}

/// <summary>The fan-in: the shards' parts in shard order → the same outputs and metrics as a single-worker run.</summary>
[JobKind("eval-reconstruction-aggregate", Queue = "gpu", MaxAttempts = 3, Description = "eval-reconstruction aggregator: concatenate shards, compute metrics")]
public sealed class EvalReconstructionAggregateJob : IJobHandler<EvalReconAggregateParams>
{
    public async Task RunAsync(JobContext ctx, EvalReconAggregateParams p)
    {
        var shards = await ctx.GetShardsAsync();
        if (shards.Count != p.ExpectedShards) throw new JobFailedException($"expected {p.ExpectedShards} shards, found {shards.Count}");
        var listed = new List<(long Run, List<string> Parts)>();
        foreach (var sh in shards)
        {
            var file = await ctx.GetRunArtifactFileAsync(sh.Id, "parts.json", $"shard-{sh.ShardIndex}");
            var names = JsonDocument.Parse(await File.ReadAllTextAsync(file)).RootElement.GetProperty("parts").EnumerateArray().Select(e => e.GetString()!).ToList();
            listed.Add((sh.Id, names));
        }
        var state = await CheckpointParts.LoadStateAsync<EvalState>(ctx) ?? new EvalState();
        if (!state.Done)
        {
            var device = Devices.Resolve(ctx.Device);
            var dataPath = await ctx.GetRunArtifactFileAsync(p.Data.RunId, p.Data.Name, "data");
            var refPath = p.Reference is { } r ? await ctx.GetRunArtifactFileAsync(r.RunId, r.Name, "reference") : null;
            var dir = Directory.CreateDirectory(Path.Combine(ctx.ScratchDir, "parts")).FullName;
            var parts = new List<string>();
            foreach (var (run, names) in listed)
                foreach (var n in names) parts.Add(await CheckpointParts.FetchAsync(ctx, run, n, dir));
            state = await ReconstructionCore.AggregateAsync(ctx,
                new ReconstructionCore.AggregateInput(dataPath, p.Data, refPath, p.Reference, p.Count, p.CodebookSize, p.Tokenizer, p.Settings, shards.Count), parts, state, device);
        }
        if (p.Settings.ReleaseParts)
            foreach (var (run, names) in listed) await CheckpointParts.ReleaseOfRunAsync(ctx, run, names);
    }
}

using System.Text.Json;
using ReTok.Engine;

namespace ReTok.Jobs.Kinds.Selftest;

/// <summary>Parameters of the engine self-test: count to <see cref="N"/>, one metric point per step.</summary>
public sealed record SelftestParams : IValidatableParams
{
    public int N { get; init; } = 10;
    /// <summary>Wall time per step.</summary>
    public int StepMs { get; init; } = 50;
    public int CheckpointEvery { get; init; } = 5;
    /// <summary>Value added at step i is scale * i.</summary>
    public double Scale { get; init; } = 1;
    /// <summary>Deterministic failure (JobFailedException) when reaching this step.</summary>
    public int? FailAtStep { get; init; }
    /// <summary>The first K executions throw a TransientJobException at step 1 (exercises engine retries).</summary>
    public int TransientFailures { get; init; }
    /// <summary>&gt; 0: fan out into this many shards (shard i counts with scale i+1) and a selftest-aggregate run.</summary>
    public int Shards { get; init; }
    /// <summary>With <see cref="Shards"/>: shard 0 gets this many transient failures (a shard retried alone).</summary>
    public int FirstShardTransientFailures { get; init; }

    public IEnumerable<string> Validate()
    {
        if (N < 0) yield return $"n: must be >= 0, got {N}";
        if (CheckpointEvery < 1) yield return $"checkpoint_every: must be >= 1, got {CheckpointEvery}";
        if (StepMs < 0) yield return $"step_ms: must be >= 0, got {StepMs}";
        if (Shards < 0) yield return $"shards: must be >= 0, got {Shards}";
    }
}

/// <summary>A selftest shard's work (engine-owned fan-out state): its scale and the transient failures it simulates.</summary>
public sealed record SelftestShard
{
    public double Scale { get; init; }
    public int TransientFailures { get; init; }
}

/// <summary>
/// Counts 1..n: sum += scale*i, metric selftest/sum per step, checkpoint every k steps, result.json at the end
/// ({"total", "n", "resumed_from"}). An input "data" (a result.json) adds its total. Honours cancellation by
/// checkpointing first. With shards > 0 it fans out instead (shard i counts with scale i+1; selftest-aggregate sums the
/// totals). The engine is testable with it and no models.
/// </summary>
[JobKind("selftest", Queue = "cpu", MaxAttempts = 3, Description = "engine self-test: counts with checkpoints, metrics and an artifact")]
public sealed class SelftestJob : IFanOutJob<SelftestParams>
{
    public async Task RunAsync(JobContext ctx, SelftestParams p)
    {
        ctx.Log($"devices: {string.Join(", ", ctx.Devices)}");
        if (p.Shards > 0)
        {
            var shards = Enumerable.Range(0, p.Shards)
                .Select(i => (object)new SelftestShard { Scale = i + 1, TransientFailures = i == 0 ? p.FirstShardTransientFailures : 0 }).ToList();
            await ctx.SpawnShardsAsync(shards);
            return;
        }
        await CountAsync(ctx, p);
    }

    public Task RunShardAsync(JobContext ctx, SelftestParams p)
    {
        ctx.Log($"devices: {string.Join(", ", ctx.Devices)}");
        var shard = ctx.GetFanOutState<SelftestShard>();
        return CountAsync(ctx, p with { Scale = shard.Scale, TransientFailures = shard.TransientFailures });
    }

    static async Task CountAsync(JobContext ctx, SelftestParams p)
    {
        double baseTotal = 0;
        if (ctx.InputRoles.Contains("data"))
            baseTotal = JsonDocument.Parse(await File.ReadAllTextAsync(await ctx.GetInputFileAsync("data"))).RootElement.GetProperty("total").GetDouble();

        long step = 0;
        double sum = 0;
        if (await ctx.Checkpoints.LoadAsync() is { } ck)
        {
            var state = JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(ck.Dir, "state.json"))).RootElement;
            (step, sum) = (state.GetProperty("step").GetInt64(), state.GetProperty("sum").GetDouble());
        }
        var resumedFrom = step;

        Task Save(long s, double total) => ctx.Checkpoints.SaveAsync(s, dir =>
            File.WriteAllTextAsync(Path.Combine(dir, "state.json"), JsonSerializer.Serialize(new { step = s, sum = total })));

        for (var i = step + 1; i <= p.N; i++)
        {
            if (ctx.CancellationToken.IsCancellationRequested)
            {
                await Save(i - 1, sum);
                ctx.ThrowIfCancellationRequested();
            }
            if (i == 1 && ctx.Attempt <= p.TransientFailures) throw new TransientJobException($"simulated transient fault (attempt {ctx.Attempt} of {p.TransientFailures} failing)");
            if (p.FailAtStep == i) throw new JobFailedException($"selftest: fail_at_step={i} reached (simulated deterministic failure)");
            if (p.StepMs > 0)
            {
                try { await Task.Delay(p.StepMs, ctx.CancellationToken); }
                catch (OperationCanceledException) { await Save(i - 1, sum); throw; }
            }
            sum += p.Scale * i;
            ctx.LogMetric("selftest/sum", i, sum);
            ctx.ReportProgress(i, p.N, $"step {i}/{p.N}");
            if (i % p.CheckpointEvery == 0) await Save(i, sum);
        }
        var result = JsonSerializer.Serialize(new { total = baseTotal + sum, n = p.N, resumed_from = resumedFrom });
        await ctx.SaveArtifactAsync("result.json", new MemoryStream(System.Text.Encoding.UTF8.GetBytes(result)), "json");
    }
    /// <summary>Fan-in: sums the shards' result.json totals into its own result.json.</summary>
    public async Task AggregateAsync(JobContext ctx, SelftestParams p)
    {
        var shards = await ctx.GetShardsAsync();
        if (shards.Count != p.Shards) throw new JobFailedException($"expected {p.Shards} shards, found {shards.Count}");
        double total = 0;
        foreach (var s in shards)
        {
            var file = await ctx.GetRunArtifactFileAsync(s.Id, "result.json", $"shard-{s.ShardIndex}");
            total += JsonDocument.Parse(await File.ReadAllTextAsync(file)).RootElement.GetProperty("total").GetDouble();
        }
        ctx.LogMetric("selftest/aggregate_total", 0, total);
        ctx.ReportProgress(1, 1, $"aggregated {shards.Count} shards");
        var result = JsonSerializer.Serialize(new { total, shards = shards.Count });
        await ctx.SaveArtifactAsync("result.json", new MemoryStream(System.Text.Encoding.UTF8.GetBytes(result)), "json");
    }
}

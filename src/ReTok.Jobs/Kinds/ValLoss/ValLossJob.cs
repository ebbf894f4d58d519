using System.Text.Json;
using ReTok.Engine;
using ReTok.Models;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Jobs.Kinds.ValLoss;

public sealed record ValLossParams : IValidatableParams
{
    /// <summary>Rows per batch (--per-proc-batch-size, one process).</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>Seeds the row order (DistributedSampler(shuffle=True, seed=global_seed), epoch 0): it decides which rows share the last, smaller batch.</summary>
    public int Seed { get; init; }
    /// <summary>GPT compute dtype (--precision): none/fp32, bf16, fp16 (autocast over fp32 weights); auto = bf16 on CUDA, fp32 on CPU.</summary>
    public string Precision { get; init; } = "auto";

    public IEnumerable<string> Validate()
    {
        if (BatchSize < 1) yield return $"batch_size: must be >= 1, got {BatchSize}";
        if (GptPrecision.Validate(Precision) is { } bad) yield return bad;
    }

    public ScalarType? AutocastDtype(DeviceType device) => GptPrecision.Autocast(Precision, device);
}

/// <summary>
/// The reference's val_loss_cal.py on held-out codes (`--dataset imagenet_code`): the teacher-forced cross-entropy of
/// a generator, dropout off, in batches of batch_size over a seeded order; the result is the mean of the batch means
/// (as the reference averages its per-batch losses, so a smaller last batch weighs as much as a full one).
/// Inputs: `generator` = a generator.safetensors / generator_ema.safetensors, or any saved checkpoint of a
/// train-generator run (`run:ID/checkpoints/step-N`, listed by `retok runs checkpoints ID`); `generator_config` =
/// that run's generator.yaml; `codes` = a codes.npz (codes [M, T], labels [M]) from extract-codes on held-out images.
/// Metrics val_loss and val_ppl at the checkpoint's step; val_loss.json says what was measured.
/// </summary>
[JobKind("val-loss", Queue = "gpu", Description = "validation loss of a generator checkpoint on held-out codes (val_loss_cal.py)")]
public sealed class ValLossJob : IJobHandler<ValLossParams>
{
    public async Task RunAsync(JobContext ctx, ValLossParams p)
    {
        var device = Devices.Resolve(ctx.Device);
        var cfg = GeneratorYaml.Read(await ctx.GetInputFileAsync("generator_config"));
        var (weights, step, source) = await GeneratorWeightsAsync(ctx);
        using var gpt = GptCheckpoint.Load(cfg, weights, device);
        if (p.AutocastDtype(device.type) is { } dt) gpt.AutocastDtype = dt;

        var codesPath = await ctx.GetInputFileAsync("codes");
        var codes = Npz.LoadKey(codesPath, "codes").ToTensor().to(int64);
        var labels = Npz.LoadKey(codesPath, "labels").ToTensor().to(int64);
        if (codes.dim() != 2 || labels.dim() != 1 || codes.shape[0] != labels.shape[0] || codes.shape[0] == 0)
            throw new JobFailedException($"input 'codes' ({Path.GetFileName(codesPath)}): need codes [M,T] and labels [M], got [{string.Join(",", codes.shape)}] and [{string.Join(",", labels.shape)}]");
        if (codes.shape[1] < cfg.BlockSize)
            throw new JobFailedException($"input 'codes': {codes.shape[1]} tokens per row, the generator's block_size is {cfg.BlockSize}");
        codes = codes.narrow(1, 0, cfg.BlockSize).contiguous();
        if (codes.max().item<long>() >= cfg.VocabSize) throw new JobFailedException($"input 'codes': codes reach {codes.max().item<long>()}, >= the generator's vocab_size {cfg.VocabSize}");
        if (labels.max().item<long>() >= cfg.NumClasses) throw new JobFailedException($"input 'codes': labels reach {labels.max().item<long>()}, >= the generator's num_classes {cfg.NumClasses}");

        long m = codes.shape[0];
        var order = randperm(m, generator: new Generator((ulong)p.Seed));   // DistributedSampler, epoch 0, one replica
        var batchLosses = new List<double>();
        for (long i = 0; i < m; i += p.BatchSize)
        {
            ctx.ThrowIfCancellationRequested();
            long len = Math.Min(p.BatchSize, m - i);
            using var scope = NewDisposeScope();
            var idx = order.narrow(0, i, len);
            batchLosses.Add(GptTrainer.EvalLoss(gpt, codes.index_select(0, idx), labels.index_select(0, idx)));
            ctx.ReportProgress(i + len, m, $"{i + len}/{m} rows");
        }
        double loss = batchLosses.Average();
        if (!double.IsFinite(loss)) throw new JobFailedException($"val_loss is {loss}: the checkpoint ({source}) produces non-finite logits");
        ctx.LogMetrics(step, ("val_loss", loss), ("val_ppl", Math.Exp(loss)));
        ctx.Log($"val_loss {loss:F6} (ppl {Math.Exp(loss):F2}) over {m} rows in {batchLosses.Count} batches, {source} at step {step}");
        var result = JsonSerializer.SerializeToUtf8Bytes(new
        {
            val_loss = loss, val_ppl = Math.Exp(loss), step, checkpoint = source, rows = m, batches = batchLosses.Count,
            batch_size = p.BatchSize, seed = p.Seed, precision = gpt.AutocastDtype?.ToString() ?? "float32", averaging = "mean of batch means",
        });
        await ctx.SaveArtifactAsync("val_loss.json", new MemoryStream(result), "json", overwrite: true);
    }

    /// <summary>The model weights of input `generator`: a checkpoint folder (model.safetensors + state.json) or a weights file.</summary>
    static async Task<(string Path, long Step, string Source)> GeneratorWeightsAsync(JobContext ctx)
    {
        var a = await ctx.ResolveInputAsync("generator");
        var source = $"{a.Name} of run {a.RunId}";
        if (a.Kind != "checkpoint")
        {
            long steps = JsonDocument.Parse(string.IsNullOrWhiteSpace(a.Metadata) ? "{}" : a.Metadata).RootElement is { ValueKind: JsonValueKind.Object } meta
                         && meta.TryGetProperty("steps", out var s) && s.TryGetInt64(out var n) ? n : 0;
            return (await ctx.GetInputFileAsync("generator"), steps, source);
        }
        if (a.SizeBytes == 0) throw new JobFailedException($"input 'generator' ({source}) was released by the retention policy (keep_milestones); pick a kept one with `retok runs checkpoints {a.RunId}`");
        var dir = await ctx.GetInputDirAsync("generator");
        var model = Path.Combine(dir, "model.safetensors");
        var state = Path.Combine(dir, "state.json");
        if (!File.Exists(model) || !File.Exists(state))
            throw new JobFailedException($"input 'generator' ({source}) is a checkpoint without model.safetensors/state.json: not a train-generator checkpoint");
        return (model, JsonDocument.Parse(File.ReadAllText(state)).RootElement.GetProperty("step").GetInt64(), source);
    }
}

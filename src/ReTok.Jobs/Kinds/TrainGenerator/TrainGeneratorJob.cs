using System.Diagnostics;
using System.Text.Json;
using ReTok.Engine;
using ReTok.Jobs.Kinds.Shared;
using ReTok.Models;
using ReTok.Models.Distributed;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Jobs.Kinds.TrainGenerator;

public sealed record TrainGeneratorParams : IValidatableParams, IMultiNodeParams
{
    /// <summary>Preset (GPT-B, GPT-L, GPT-XL, ...) or null for the explicit dim/n_layer/n_head.</summary>
    public string? GptModel { get; init; } = "GPT-B";
    public int Dim { get; init; }
    public int NLayer { get; init; }
    public int NHead { get; init; }
    public int VocabSize { get; init; } = 16384;
    /// <summary>Tokens per image; 0 = the codes' width.</summary>
    public int BlockSize { get; init; }
    public int NumClasses { get; init; } = 1000;
    public double ClassDropoutProb { get; init; } = 0.1;
    public double TokenDropoutP { get; init; } = 0.1;
    /// <summary>Residual and FFN dropout (--dropout-p).</summary>
    public double DropoutP { get; init; } = 0.1;

    public double Lr { get; init; } = 1e-4;
    public double WeightDecay { get; init; } = 0.05;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double MaxGradNorm { get; init; } = 1.0;
    public long WarmupSteps { get; init; } = 5000;
    public long MaxSteps { get; init; } = 1_500_000;
    public double FractDecay { get; init; } = 0.2;
    public string DecayType { get; init; } = "sqrt";
    public int GlobalBatchSize { get; init; } = 256;
    /// <summary>Micro-batches per step: the global batch runs as this many equal pieces (activation memory of one).</summary>
    public int GradAccumSteps { get; init; } = 1;
    /// <summary>Data-parallel replicas (`data_parallel: {replicas: N, backend: cpu|nccl}`): each takes 1/N of every global batch;
    /// the result does not depend on N beyond float reduction order (docs/training.md, "Data-parallel training").</summary>
    public DataParallelConfig DataParallel { get; init; } = new();
    /// <summary>Recompute each transformer block in backward (same gradients, a fraction of the activation memory, ~1/3 more compute).</summary>
    public bool ActivationCheckpointing { get; init; }
    /// <summary>EMA of the GPT weights (train_c2i.py --ema; off in the release): kept in checkpoints, exported as generator_ema.safetensors.</summary>
    public bool Ema { get; init; }
    public double EmaDecay { get; init; } = 0.9999;
    public int Seed { get; init; }
    public int CheckpointEvery { get; init; } = 5000;
    /// <summary>Keep every n-th step's checkpoint as a milestone (checkpoints/step-N; 0 = only checkpoints/latest). A multiple of checkpoint_every.</summary>
    public int MilestoneEvery { get; init; }
    /// <summary>Milestones whose content is kept (the newest K; older are released). 0 = keep all.</summary>
    public int KeepMilestones { get; init; } = 3;
    /// <summary>Metrics every n steps; default: every step up to 10 000 steps, then max_steps / 10 000 (at most ~10k points a key).</summary>
    public int? LogEvery { get; init; }
    public long EffectiveLogEvery() => LogEvery ?? Math.Max(1, MaxSteps / 10_000);
    /// <summary>Hold out N images of the codes (every view of each; evenly spaced over the dataset order) from training: their teacher-forced loss is
    /// logged as val_loss at each checkpoint and at the end, beside unigram_entropy of the training codes (the loss of a
    /// model that ignores context and class). 0 = train on everything (the release).</summary>
    public int ValImages { get; init; }
    /// <summary>Test hook: sleep this long after each step (kill-and-resume tests need a run that lasts).</summary>
    public int DebugStepDelayMs { get; init; }

    public IEnumerable<string> ValidateNodes(int nodes) => (DataParallel ?? new()).ValidateNodes(nodes, GlobalBatchSize, GradAccumSteps);

    public IEnumerable<string> Validate()
    {
        if (GptModel is null && (Dim <= 0 || NLayer <= 0 || NHead <= 0)) yield return "gpt_model: give a preset or dim, n_layer and n_head";
        if (GptModel is not null && !GptConfig.Presets.ContainsKey(GptModel)) yield return $"gpt_model: unknown preset '{GptModel}' (known: {string.Join(", ", GptConfig.Presets.Keys)})";
        if (MaxSteps < 1) yield return $"max_steps: must be >= 1, got {MaxSteps}";
        if (WarmupSteps < 0) yield return $"warmup_steps: must be >= 0, got {WarmupSteps}";
        if (GlobalBatchSize < 1) yield return $"global_batch_size: must be >= 1, got {GlobalBatchSize}";
        if (GradAccumSteps < 1) yield return $"grad_accum_steps: must be >= 1, got {GradAccumSteps}";
        else if (GlobalBatchSize % GradAccumSteps != 0) yield return $"grad_accum_steps: {GradAccumSteps} does not divide global_batch_size {GlobalBatchSize}";
        foreach (var e in (DataParallel ?? new()).Validate(GlobalBatchSize, GradAccumSteps)) yield return e;
        if (EmaDecay is < 0 or > 1 || double.IsNaN(EmaDecay)) yield return $"ema_decay: must be in [0, 1], got {EmaDecay}";
        if (CheckpointEvery < 1) yield return $"checkpoint_every: must be >= 1, got {CheckpointEvery}";
        if (MilestoneEvery < 0) yield return $"milestone_every: must be >= 0, got {MilestoneEvery}";
        else if (MilestoneEvery > 0 && MilestoneEvery % CheckpointEvery != 0) yield return $"milestone_every: {MilestoneEvery} is not a multiple of checkpoint_every {CheckpointEvery}";
        if (KeepMilestones < 0) yield return $"keep_milestones: must be >= 0, got {KeepMilestones}";
        if (ValImages < 0) yield return $"val_images: must be >= 0, got {ValImages}";
        if (LogEvery is < 1) yield return $"log_every: must be >= 1, got {LogEvery}";
        if (DecayType is not ("sqrt" or "linear" or "square" or "cosine")) yield return $"decay_type: '{DecayType}' is not sqrt, linear, square or cosine";
    }

    public GptConfig ToConfig(int blockSize)
    {
        var c = GptModel is not null ? GptConfig.Preset(GptModel, VocabSize, blockSize, NumClasses) : new GptConfig(Dim, NLayer, NHead, VocabSize, blockSize, NumClasses);
        return c with { ClassDropoutProb = ClassDropoutProb, TokenDropoutP = TokenDropoutP, ResidDropoutP = DropoutP, FfnDropoutP = DropoutP };
    }
}

/// <summary>
/// train_c2i.py on extracted codes (`--dataset imagenet_code`): each epoch a seeded permutation of the code rows (one
/// row = one crop of one image), batches of global_batch_size, fp32 on CPU / bf16 autocast on CUDA. Checkpoint holds
/// model, AdamW state, step, both RNG states; the data position is the step (the permutation of epoch e is a function of
/// seed and e), so a resumed run on CPU continues bit-identically.
/// </summary>
[JobKind("train-generator", Queue = "gpu", MultiNode = true, Description = "class-conditional GPT on extracted tokenizer codes (train_c2i.py)")]
public sealed class TrainGeneratorJob : IJobHandler<TrainGeneratorParams>
{
    public async Task RunAsync(JobContext ctx, TrainGeneratorParams p)
    {
        var codesPath = await ctx.GetInputFileAsync("codes");
        var codes = Npz.LoadKey(codesPath, "codes").ToTensor().to(int64);
        var labels = Npz.LoadKey(codesPath, "labels").ToTensor().to(int64);
        if (codes.dim() != 2 || labels.dim() != 1 || codes.shape[0] != labels.shape[0] || codes.shape[0] == 0)
            throw new JobFailedException($"input 'codes' ({codesPath}): need codes [M,T] and labels [M], got [{string.Join(",", codes.shape)}] and [{string.Join(",", labels.shape)}]");
        int block = p.BlockSize > 0 ? p.BlockSize : (int)codes.shape[1];
        if (block > codes.shape[1]) throw new JobFailedException($"block_size: {block} > the codes' width {codes.shape[1]}");
        codes = codes.narrow(1, 0, block).contiguous();
        if (codes.max().item<long>() >= p.VocabSize) throw new JobFailedException($"vocab_size: codes reach {codes.max().item<long>()}, >= vocab_size {p.VocabSize}");
        if (labels.max().item<long>() >= p.NumClasses) throw new JobFailedException($"num_classes: labels reach {labels.max().item<long>()}, >= num_classes {p.NumClasses}");

        Tensor? valCodes = null, valLabels = null;
        if (p.ValImages > 0)
        {
            var image = Npz.Keys(codesPath).Contains("image_index")
                ? Npz.LoadKey(codesPath, "image_index").ToTensor().to(int64) : arange(codes.shape[0], dtype: int64);
            // N images evenly spaced over the dataset order, so every class of a class-ordered set is represented
            long total = image.max().item<long>() + 1;
            var val = ((image + 1) * p.ValImages).div(total, rounding_mode: RoundingMode.floor)
                .gt((image * p.ValImages).div(total, rounding_mode: RoundingMode.floor));
            if (val.all().item<bool>()) throw new JobFailedException($"val_images: {p.ValImages} leaves no images to train on (the codes hold {image.unique().Item1.shape[0]})");
            (valCodes, valLabels) = (codes[val], labels[val]);
            (codes, labels) = (codes[val.logical_not()], labels[val.logical_not()]);
        }
        double unigram = UnigramEntropy(codes, p.VocabSize);

        var device = Devices.Resolve(ctx.Device);
        var dp = p.DataParallel ?? new();
        int n = dp.Replicas;
        var devices = NodeGroups.ReplicaDevices(ctx, dp, device);
        // with nodes: N this rank run holds global ranks node*n..node*n+n-1 of N*n; the ranks meet before anything is
        // loaded, so every rank of a retried group resumes from the same checkpoint (rank 0's, the only writer)
        var comms = await NodeGroups.CommunicatorsAsync(ctx, dp, devices);
        int world = comms?[0].WorldSize ?? 1;
        bool writer = ctx.NodeRank == 0;
        var cfg = p.ToConfig(block);
        if (writer)
        {
            // first, so that any checkpoint of this run can be evaluated (val-loss, sample-gfid) while it still trains
            var outCfg = Path.Combine(ctx.ScratchDir, "generator.yaml");
            File.WriteAllText(outCfg, GeneratorYaml.Write(cfg));
            await ctx.SaveArtifactFileAsync("generator.yaml", outCfg, "yaml", overwrite: true);
        }
        // dropout draws come from the default generator (one training run per worker process); seeding it under the gate
        // keeps a tokenizer run's setup in the same process from being re-seeded halfway (SeededRandom.DefaultGeneratorGate)
        await SeededRandom.DefaultGeneratorGate.WaitAsync(ctx.CancellationToken);
        try { manual_seed(p.Seed); }
        finally { SeededRandom.DefaultGeneratorGate.Release(); }
        var models = new Gpt[n];
        for (int r = 0; r < n; r++)
        {
            // same init seed on every replica; the trainer still broadcasts rank 0's weights (and a resumed state) to all
            models[r] = new Gpt(cfg, new Generator((ulong)p.Seed), devices[r]);
            models[r].ActivationCheckpointing = p.ActivationCheckpointing;
        }
        var model = models[0];
        model.ClassDropGenerator = SeededRandom.NewGenerator(p.Seed + 1); // a CPU generator: SeededRandom moves the draw
        var opts = GptTrainOptions.ForDevice(device) with
        {
            Lr = p.Lr, WeightDecay = p.WeightDecay, Beta1 = p.Beta1, Beta2 = p.Beta2, MaxGradNorm = p.MaxGradNorm,
            WarmupSteps = p.WarmupSteps, TotalSteps = p.MaxSteps, FractDecay = p.FractDecay, DecayType = p.DecayType,
            GradAccumSteps = p.GradAccumSteps, EmaDecay = p.Ema ? p.EmaDecay : null,
        };

        long start = 0;
        (string Dir, long Step)? ck = await ctx.Checkpoints.LoadAsync() ?? await FromResumeInputAsync(ctx);
        if (ck is { } c)
        {
            start = c.Step;
            GptCheckpoint.LoadStrict(model, StateDictFile.Read(Path.Combine(c.Dir, "model.safetensors")), "checkpoint model.safetensors");
        }
        // global ranks g > 0 draw class dropout from their own stream, a function of (seed, g, start step): rank 0 continues
        // the checkpointed stream, so a resume with a different replica or node count only re-deals the other ranks' coins
        for (int r = 0; r < n; r++)
            if (comms?[r].Rank is > 0 and var g) models[r].ClassDropGenerator = SeededRandom.NewGenerator(p.Seed + 1 + g * 1_000_003L + start * 7919L);
        var trainers = comms is null
            ? new[] { new GptTrainer(model, opts, start) }
            : Models.Distributed.DataParallel.Run(comms, r => new GptTrainer(models[r], opts, start, comms[r]));
        var trainer = trainers[0];
        try
        {
            if (ck is { } c2)
            {
                foreach (var t in trainers) t.Optimizer.load_state_dict(Path.Combine(c2.Dir, "optimizer.bin"));
                foreach (var t in trainers)
                    if (t.Ema is { } ema)
                    {
                        var emaPath = Path.Combine(c2.Dir, "ema.safetensors");
                        if (!File.Exists(emaPath)) throw new JobFailedException("ema: true, but the checkpoint being resumed has no ema.safetensors (it was written with ema off)");
                        ema.LoadStateDict(StateDictFile.Read(emaPath), "checkpoint ema.safetensors");
                    }
                var rng = StateDictFile.Read(Path.Combine(c2.Dir, "rng.safetensors"));
                set_rng_state(rng["torch_cpu"]);
                if (writer) model.ClassDropGenerator!.set_state(rng["class_drop"]);
            }

            long m = codes.shape[0];
            int bs = (int)Math.Min(p.GlobalBatchSize, m);
            long perEpoch = m / bs; // drop_last
            if (bs % ((long)world * p.GradAccumSteps) != 0)
                throw new JobFailedException($"grad_accum_steps: the batch is {bs} (the input has only {m} rows) and does not split into {world} replica(s) x {p.GradAccumSteps} micro-batches");
            Tensor? perm = null; long permEpoch = -1;
            var sw = Stopwatch.StartNew();
            long tokensSince = 0;

            // Checkpoints are written in the background: the step's state is first copied to host memory (model, EMA, RNG;
            // the TorchSharp AdamW state can only be serialised from the live optimizer, so optimizer.bin is written to
            // local scratch here), then serialisation, tar, upload and retention run while training continues. One save
            // in flight at a time; the next save, a cancellation and the end of the run wait for it (and surface its error).
            Task pending = Task.CompletedTask;
            async Task Save(long step)
            {
                if (!writer) return; // the state is identical on every rank; rank 0's checkpoint is the group's
                await pending;
                using var _ = no_grad();
                var modelSd = model.state_dict().ToDictionary(kv => kv.Key,
                    kv => (kv.Value.device.type == DeviceType.CPU ? kv.Value.detach().clone() : kv.Value.detach().cpu()).DetachFromDisposeScope());
                var emaSd = trainer.Ema?.StateDict();
                var rng = new Dictionary<string, Tensor> { ["torch_cpu"] = get_rng_state(), ["class_drop"] = model.ClassDropGenerator!.get_state() };
                var optFile = Path.Combine(ctx.ScratchDir, $".optimizer-{step}.bin");
                trainer.Optimizer.save_state_dict(optFile);
                var state = JsonSerializer.Serialize(new { step, epoch = step / perEpoch, batch = step % perEpoch });
                bool milestone = p.MilestoneEvery > 0 && step % p.MilestoneEvery == 0;
                pending = Task.Run(async () =>
                {
                    try
                    {
                        await ctx.Checkpoints.SaveAsync(step, dir =>
                        {
                            StateDictFile.WriteSafetensors(Path.Combine(dir, "model.safetensors"), modelSd);
                            File.Move(optFile, Path.Combine(dir, "optimizer.bin"));
                            if (emaSd is not null) StateDictFile.WriteSafetensors(Path.Combine(dir, "ema.safetensors"), emaSd);
                            StateDictFile.WriteSafetensors(Path.Combine(dir, "rng.safetensors"), rng);
                            File.WriteAllText(Path.Combine(dir, "state.json"), state);
                            return Task.CompletedTask;
                        }, milestone, p.KeepMilestones);
                    }
                    finally
                    {
                        foreach (var t in modelSd.Values) t.Dispose();
                        foreach (var t in emaSd?.Values ?? Enumerable.Empty<Tensor>()) t.Dispose();
                        foreach (var t in rng.Values) t.Dispose();
                        File.Delete(optFile);
                    }
                });
            }

            void LogValidation(long step)
            {
                if (valCodes is null || !writer) return;
                double sum = 0;
                long rows = valCodes.shape[0];
                for (long i = 0; i < rows; i += bs)   // batches of the training size: bounded memory on any split
                {
                    long len = Math.Min(bs, rows - i);
                    sum += GptTrainer.EvalLoss(model, valCodes.narrow(0, i, len), valLabels!.narrow(0, i, len)) * len;
                }
                ctx.LogMetrics(step, ("val_loss", sum / rows), ("unigram_entropy", unigram));
            }

            try
            {
                for (long step = start; step < p.MaxSteps; step++)
                {
                    if (ctx.CancellationToken.IsCancellationRequested)
                    {
                        await Save(step);
                        await pending;
                        ctx.ThrowIfCancellationRequested();
                    }
                    long epoch = step / perEpoch, b = step % perEpoch;
                    if (epoch != permEpoch)
                    {
                        perm?.Dispose();
                        perm = randperm(m, generator: new Generator((ulong)(p.Seed * 1_000_003L + epoch)));
                        permEpoch = epoch;
                    }
                    GptStepResult r;
                    using (var scope = NewDisposeScope())
                    {
                        var idx = perm!.narrow(0, b * bs, bs);
                        var (cs, ls) = (codes.index_select(0, idx), labels.index_select(0, idx));
                        r = comms is null ? trainer.TrainStep(cs, ls) : Models.Distributed.DataParallel.Run(comms, k => trainers[k].TrainStep(
                            Models.Distributed.DataParallel.Slice(cs, comms[k].Rank, world), Models.Distributed.DataParallel.Slice(ls, comms[k].Rank, world)))[0];
                    }
                    tokensSince += (long)bs * block;
                    if ((step + 1) % p.EffectiveLogEvery() == 0 || step + 1 == p.MaxSteps)
                    {
                        var secs = Math.Max(1e-9, sw.Elapsed.TotalSeconds);
                        ctx.LogMetrics(step + 1, ("loss", r.Loss), ("lr", r.Lr), ("grad_norm", r.GradNorm), ("tokens_per_s", tokensSince / secs));
                        sw.Restart(); tokensSince = 0;
                    }
                    if (!float.IsFinite(r.Loss)) throw new JobFailedException($"loss is {r.Loss} at step {step + 1}");
                    ctx.ReportProgress(step + 1, p.MaxSteps, $"step {step + 1}/{p.MaxSteps} loss {r.Loss:F4}");
                    if (p.DebugStepDelayMs > 0) await Task.Delay(p.DebugStepDelayMs);
                    if ((step + 1) % p.CheckpointEvery == 0 && step + 1 < p.MaxSteps) { LogValidation(step + 1); await Save(step + 1); }
                }
            }
            catch
            {
                try { await pending; } catch { /* the step's own failure is the one to report */ }
                throw;
            }
            perm?.Dispose();
            await pending;
            if (!writer) { NodeGroups.Finish(ctx, comms); return; }   // rank 0 registers the outputs
            LogValidation(p.MaxSteps);

            var outModel = Path.Combine(ctx.ScratchDir, "generator.safetensors");
            GptCheckpoint.SaveSafetensors(model, outModel);
            await ctx.SaveArtifactFileAsync("generator.safetensors", outModel, "model", metadata: new { steps = p.MaxSteps });
            if (trainer.Ema is { } e)
            {
                // the EMA weights as a complete generator file: pick it as sample-gfid's `generator` input to sample with them
                var outEma = Path.Combine(ctx.ScratchDir, "generator_ema.safetensors");
                var sd = e.StateDict();
                foreach (var (k, v) in model.state_dict()) sd.TryAdd(k, v); // buffers, if any, are not averaged (utils/ema.py)
                StateDictFile.WriteSafetensors(outEma, sd);
                await ctx.SaveArtifactFileAsync("generator_ema.safetensors", outEma, "model", metadata: new { steps = p.MaxSteps, ema_decay = p.EmaDecay });
            }
            NodeGroups.Finish(ctx, comms);
        }
        finally
        {
            foreach (var t in trainers) t.Dispose();
            foreach (var md in models) md.Dispose();
            foreach (var cm in comms ?? Array.Empty<ICommunicator>()) cm.Dispose();
        }
    }
    /// <summary>Entropy (nats) of the codes' empirical unigram distribution.</summary>
    static double UnigramEntropy(Tensor codes, int vocab)
    {
        using var _ = NewDisposeScope();
        var pr = bincount(codes.flatten(), minlength: vocab).to(float64) / codes.numel();
        return Math.Max(0, -(pr * pr.clamp_min(1e-300).log()).sum().item<double>());   // one code: 0, not -0
    }

    /// <summary>
    /// Optional input `resume` (e.g. run:ID/checkpoints/step-0000010000 from `retok runs checkpoints`): a fresh run starts
    /// from that checkpoint instead of step 0. Only when the run has no checkpoint of its own (a retried run resumes from
    /// its latest). The other params must match the run that wrote it (model shape is checked on load).
    /// </summary>
    static async Task<(string Dir, long Step)?> FromResumeInputAsync(JobContext ctx)
    {
        if (!ctx.InputRoles.Contains("resume")) return null;
        var a = await ctx.ResolveInputAsync("resume");
        if (a.SizeBytes == 0) throw new JobFailedException($"input 'resume' ({a.Name} of run {a.RunId}) was released by the retention policy (keep_milestones); pick a kept one with `retok runs checkpoints {a.RunId}`");
        var dir = await ctx.GetInputDirAsync("resume");
        var state = Path.Combine(dir, "state.json");
        if (!File.Exists(state) || !File.Exists(Path.Combine(dir, "model.safetensors")))
            throw new JobFailedException($"input 'resume' ({a.Name} of run {a.RunId}) is not a train-generator checkpoint (no state.json/model.safetensors)");
        long step = JsonDocument.Parse(File.ReadAllText(state)).RootElement.GetProperty("step").GetInt64();
        ctx.Log($"starting from input 'resume' ({a.Name} of run {a.RunId}) at step {step}");
        return (dir, step);
    }
}

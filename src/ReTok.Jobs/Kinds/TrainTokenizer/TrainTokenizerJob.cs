using System.Diagnostics;
using System.Text.Json.Nodes;
using ReTok.Config;
using ReTok.Engine;
using ReTok.Evaluation.Images;
using ReTok.Evaluation.Metrics;
using ReTok.Evaluation.Weights;
using ReTok.Jobs.Kinds.Shared;
using ReTok.Jobs.Quickstart;
using ReTok.Models;
using ReTok.Models.Dinov2;
using ReTok.Models.Distributed;
using ReTok.Models.IO;
using ReTok.Models.Images;
using ReTok.Models.Tokenizer;
using ReTok.Models.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Jobs.Kinds.TrainTokenizer;

/// <summary>
/// Trains a ReTok tokenizer (GigaTok's vq_train.py loop through <see cref="TokenizerTrainer"/>, with ReTok's nested
/// dropout over the padded sequence and lambda(K)). Input `data` = a dataset.npz (or param data_path); optional input
/// `init` = a tokenizer.safetensors to start from (e.g. the decoder fine-tuning stage). Per-step metrics, checkpoints
/// every ckpt_every steps (and on cancel/shutdown) that resume bit-identically, recon/step_n.png grids at K = 32..256,
/// and at the end tokenizer.safetensors (EMA weights when ema is on) + tokenizer.yaml. A non-finite loss term fails
/// the run naming the step and the term; the last good checkpoint stays.
/// </summary>
[JobKind("train-tokenizer", Queue = "gpu", MaxAttempts = 5, MultiNode = true, Description = "train a ReTok tokenizer (GAN + LPIPS + semantic loss, nested dropout over the padded tokens)")]
public sealed class TrainTokenizerJob : IJobHandler<TrainTokenizerParams>
{
    // torch_threads: the whole run (setup, loop, outputs) on one thread with that intra-op count, restored afterwards;
    // a process-wide torch.set_num_threads here leaked into every test and run that shared the worker process
    public Task RunAsync(JobContext ctx, TrainTokenizerParams p) => TorchThreads.RunAsync(p.TorchThreads, () => RunCoreAsync(ctx, p));

    async Task RunCoreAsync(JobContext ctx, TrainTokenizerParams p)
    {
        var dp = p.DataParallel ?? new();
        int n = dp.Replicas;
        var device = Devices.Resolve(ctx.Device);
        var devices = NodeGroups.ReplicaDevices(ctx, dp, device);
        var cfg = p.TokenizerModel();
        var precision = Precision.Resolve(p.MixedPrecision, device);
        ctx.Log($"mixed_precision {p.MixedPrecision}: {(precision.IsFloat32 ? "fp32" : $"{precision.Compute} compute (fp32 master weights, frozen teacher in {precision.Compute}, fp32 losses)")}");
        ctx.Log($"train-tokenizer: {cfg} on {Devices.Describe(device)}, {p.Iterations} iterations, batch {p.Trainer.GlobalBatchSize}"
            + (n > 1 ? $", data parallel: {n} {dp.Backend} replicas of {p.Trainer.GlobalBatchSize / n} images ({string.Join(", ", devices.Select(d => d.ToString()))})" : ""));

        var source = await OpenDataAsync(ctx, p);
        var replicas = await ReplicasAsync(ctx, p, cfg, devices, precision);
        var model = replicas[0].Trainable.Model;

        var dataConfig = new DataConfig(p.Trainer.GlobalBatchSize, ImageSize: cfg.ImageSize, Seed: p.Trainer.GlobalSeed,
            Augmentation: p.Augmentation, Workers: p.NumWorkers);
        var data = new TrainingDataLoader(source, dataConfig);
        var trainerConfig = TrainerConfigOf(p, cfg);
        // with nodes: N this rank run holds global ranks node*n..node*n+n-1; the trainers slice, draw K and seed augmentation by
        // global rank, and the ranks meet before the checkpoint is loaded (rank 0's, the only writer)
        var comms = await NodeGroups.CommunicatorsAsync(ctx, dp, devices);
        // every rank's loader follows the same global data position and takes its rows of each global batch
        var trainers = comms is null
            ? new[] { replicas[0].Trainer(data, trainerConfig, device) }
            : Models.Distributed.DataParallel.Run(comms, r => replicas[r].Trainer(r == 0 ? data : new TrainingDataLoader(source, dataConfig), trainerConfig,
                devices[r], comms[r]));
        try
        {
            await TrainAsync(ctx, p, cfg, source, data, model, replicas.Select(x => x.Trainable).ToArray(), trainers, comms);
        }
        finally
        {
            foreach (var t in trainers) t.Dispose();
            foreach (var c in comms ?? Array.Empty<ICommunicator>()) c.Dispose();
        }
    }

    /// <summary>One data-parallel replica's modules before its trainer exists.</summary>
    sealed record Replica(ReTokTrainable Trainable, PatchGanDiscriminator Discriminator, Func<Tensor, Tensor, Tensor> Perceptual, ISemanticTeacher? Teacher)
    {
        public TokenizerTrainer Trainer(TrainingDataLoader data, TrainerConfig config, Device device, ICommunicator? comm = null) =>
            new(Trainable, Discriminator, Perceptual, Teacher, data, config, device, comm);
    }

    /// <summary>
    /// The replicas' modules, seeded and drawn under the process's generator gate (SeededRandom.DefaultGeneratorGate): rank 0
    /// from the seed (and the init checkpoint), replicas r &gt; 0 on their devices. Their initial weights are overwritten by
    /// rank 0's (the trainer broadcasts them), and the CPU generator is put back to where rank 0's setup left it, so rank 0
    /// continues exactly as a single-replica run would.
    /// </summary>
    static async Task<Replica[]> ReplicasAsync(JobContext ctx, TrainTokenizerParams p, TokenizerConfig cfg, Device[] devices, Precision precision)
    {
        int n = devices.Length;
        var replicas = new Replica[n];
        var lp = p.Loss.Params;
        PatchGanDiscriminator NewDisc(Device d)
        {
            var x = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: lp.DiscDim, NLayers: lp.DiscNumLayers, KernelSize: lp.Kw));
            x.to(d);
            return x;
        }
        await SeededRandom.DefaultGeneratorGate.WaitAsync(ctx.CancellationToken);
        try
        {
            manual_seed(p.Trainer.GlobalSeed);   // vq_train.py: torch.manual_seed(global_seed * W + rank), W = 1
            var model = new ReTokTokenizer(cfg);
            await InitAsync(ctx, p, model);
            model.to(devices[0]);
            replicas[0] = new Replica(new ReTokTrainable(model), NewDisc(devices[0]), Perceptual(ctx, p, devices[0]), Teacher(ctx, p, cfg, devices[0], precision.Compute));
            if (n > 1)
            {
                using var rng = get_rng_state();
                for (int r = 1; r < n; r++)
                {
                    var m = new ReTokTokenizer(cfg);
                    m.to(devices[r]);
                    replicas[r] = new Replica(new ReTokTrainable(m), NewDisc(devices[r]), Perceptual(ctx, p, devices[r], log: false),
                        Teacher(ctx, p, cfg, devices[r], Precision.Resolve(p.MixedPrecision, devices[r]).Compute, log: false));
                }
                set_rng_state(rng);
            }
        }
        finally { SeededRandom.DefaultGeneratorGate.Release(); }
        return replicas;
    }

    /// <summary>init_checkpoint or the input 'init': strict, or init_mode gigatok (padding queries filled, listed in init_filled.json).</summary>
    static async Task InitAsync(JobContext ctx, TrainTokenizerParams p, ReTokTokenizer model)
    {
        if (ctx.InputRoles.Contains("init") && p.InitCheckpoint is not null)
            throw new ArgumentException("init_checkpoint: give either the input 'init' or init_checkpoint, not both");
        var init = ctx.InputRoles.Contains("init") ? await ctx.GetInputFileAsync("init") : p.InitCheckpoint;
        if (init is null) return;
        var sd = StateDictFile.Read(init);
        try
        {
            if (p.InitMode == InitMode.Gigatok)
            {
                var filled = model.LoadWeightsGigaTok(sd, init);
                ctx.Log($"init_mode gigatok: filled {filled.Count} key(s) by replicating the last queries: {(filled.Count == 0 ? "none" : string.Join(", ", filled))}");
                if (ctx.NodeRank == 0) await ctx.SaveArtifactAsync("init_filled.json", new MemoryStream(System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(
                    new { source = Path.GetFileName(init), mode = "gigatok", filled })), contentType: "application/json");
            }
            else model.LoadWeights(sd, init);
        }
        finally { foreach (var t in sd.Values) t.Dispose(); }
        ctx.Log($"initialised the tokenizer from {Path.GetFileName(init)} (init_mode {p.InitMode.ToString().ToLowerInvariant()})");
    }

    /// <summary>The training loop over the replicas' trainers (one when not data parallel). Rank 0 holds the state written
    /// to checkpoints and outputs (identical on every rank); its step scalars are the rank means.</summary>
    static async Task TrainAsync(JobContext ctx, TrainTokenizerParams p, TokenizerConfig cfg, IImageSource source, TrainingDataLoader data,
        ReTokTokenizer model, ReTokTrainable[] trainables, TokenizerTrainer[] trainers, IReadOnlyList<ICommunicator>? comms)
    {
        var trainer = trainers[0];
        ctx.Log($"{source.Count} images, {data.BatchesPerEpoch} batches per epoch; tokenizer {Params(model)} parameters, discriminator {Params(trainer.Discriminator)}");

        long lastCheckpoint = 0;
        if (await ctx.Checkpoints.LoadAsync() is { } ck)
        {
            foreach (var t in trainers) t.Load(ck.Dir);
            lastCheckpoint = trainer.Step;
        }
        else if (await FromResumeInputAsync(ctx) is { } rk)
            foreach (var t in trainers) t.Load(rk);
        long stop = Math.Min(p.Iterations, p.EarlyStopIter ?? long.MaxValue);
        var recon = ReconImages(source, p.ReconImages, cfg.ImageSize);

        bool writer = ctx.NodeRank == 0;   // the state is identical on every rank: rank 0 writes checkpoints and outputs
        async Task SaveCheckpoint()
        {
            if (!writer) return;
            await ctx.Checkpoints.SaveAsync(trainer.Step, dir => { trainer.Save(dir); return Task.CompletedTask; });
            lastCheckpoint = trainer.Step;
        }

        var sw = Stopwatch.StartNew();
        while (trainer.Step < stop)
        {
            if (ctx.CancellationToken.IsCancellationRequested)
            {
                if (trainer.Step > lastCheckpoint) await SaveCheckpoint();
                ctx.ThrowIfCancellationRequested();
            }
            long s = trainer.Step + 1;
            if (p.DebugInjectNanAtStep == s) foreach (var t in trainables) t.InjectNanOnce = true;
            StepResult r;
            try { r = comms is null ? trainer.TrainStep() : Models.Distributed.DataParallel.Run(comms, k => trainers[k].TrainStep())[0]; }
            catch (TrainingDivergedException e)
            {
                throw new JobFailedException($"training diverged at step {e.Step}: loss term '{e.Term}' is not finite " +
                    $"({e.Message}); the last good checkpoint is at step {lastCheckpoint}", e);
            }
            if (s % p.EffectiveLogEvery() == 0 || s == stop)
            {
                var m = r.Scalars.Select(kv => (kv.Key, kv.Value)).ToList();
                m.Add(("loss", r.Scalars["total_g"] + r.Scalars.GetValueOrDefault("total_d")));
                ctx.LogMetrics(s, m.ToArray());
            }
            ctx.ReportProgress(s, stop, $"step {s}/{stop}: loss_g {r.Scalars["total_g"]:F4}, rec {r.Scalars["rec"]:F4}, {r.Scalars["img_per_s"]:F2} img/s");
            if (s % p.CkptEvery == 0 && s < stop) await SaveCheckpoint();
            if (writer && p.ReconEvery > 0 && s % p.ReconEvery == 0 && s < stop) await SaveReconAsync(ctx, trainer, model, recon, p.ReconTokens, s);
        }
        ctx.Log($"trained to step {trainer.Step} in {sw.Elapsed.TotalSeconds:F1} s (this execution)");
        if (trainer.Step > lastCheckpoint) await SaveCheckpoint();   // a retry after a failed upload does not retrain
        if (writer)
        {
            await SaveReconAsync(ctx, trainer, model, recon, p.ReconTokens, trainer.Step);
            await SaveTokenizerAsync(ctx, p, cfg, trainer, model);
        }
        NodeGroups.Finish(ctx, comms);
    }

    /// <summary>
    /// Optional input `resume` (a train-tokenizer checkpoint folder, e.g. run:ID/checkpoints/latest): a fresh run starts from
    /// that state instead of step 0, with any replica count. Only when the run has no checkpoint of its own (a retried run
    /// resumes from its latest). Batch, data seed and EMA must match (checked on load).
    /// </summary>
    static async Task<string?> FromResumeInputAsync(JobContext ctx)
    {
        if (!ctx.InputRoles.Contains("resume")) return null;
        var a = await ctx.ResolveInputAsync("resume");
        var dir = await ctx.GetInputDirAsync("resume");
        if (!File.Exists(Path.Combine(dir, "trainer.json")))
            throw new JobFailedException($"input 'resume' ({a.Name} of run {a.RunId}) is not a train-tokenizer checkpoint (no trainer.json)");
        ctx.Log($"starting from input 'resume' ({a.Name} of run {a.RunId})");
        return dir;
    }

    static long Params(nn.Module m) => m.parameters().Sum(x => x.numel());

    // ------------------------------------------------------------------------------------------------ setup

    public static TrainerConfig TrainerConfigOf(TrainTokenizerParams p, TokenizerConfig cfg)
    {
        var r = p.Retok;
        var lp = p.Loss.Params;
        var k = r.NestedDropout
            ? new KSamplerConfig(cfg.NumLatentTokens, cfg.NumPaddingTokens, r.UsePadding, r.KDistribution, r.MinTokens, r.PerSample, r.FixedK, r.KEqualsNProb)
            : new KSamplerConfig(cfg.NumLatentTokens, cfg.NumPaddingTokens, Distribution: KDistribution.Fixed, FixedK: r.FixedK);
        var lambda = new SemanticWeightConfig(r.SemanticSchedule, p.SemanticLambda0, r.SemanticWeightEnd, r.SemanticKStart, r.SemanticKEnd, r.SemanticStepK, r.SemanticWeightFloor,
            r.SemanticWeighting);
        DecoderFinetuneConfig? ft = null;
        if (r.Finetune is { } f) ft = new DecoderFinetuneConfig(f.StartStep, f.TrainablePrefixes, f.TeacherOff, f.KeepNestedDropout, f.FixedK);
        else if (p.Trainer.FreezeButDecoderIter is long it) ft = new DecoderFinetuneConfig(it);
        var loss = new LossConfig(lp.ReconstructionWeight, lp.ReconstructionLoss, lp.PerceptualWeight, lp.DiscWeight, lp.DiscStart,
            lp.DiscAdaptiveWeight, lp.AuxLossEnd, lp.EntropyLossEnd, ProjWeight: p.SemanticLambda0, UseDirectRecLoss: lp.UseDirectRecLoss);
        return new TrainerConfig(p.Iterations, p.Trainer.Lr, p.Trainer.EndLr, p.Trainer.Warmup, p.Trainer.Beta1, p.Trainer.Beta2,
            p.Trainer.WeightDecay, MaxGradNorm: p.Trainer.MaxGradNorm == 0 ? double.PositiveInfinity : p.Trainer.MaxGradNorm,
            UseEma: p.Ema, EmaDecay: p.EmaDecay, GradAccumulationSteps: p.GradientAccumulationSteps, Seed: p.Trainer.GlobalSeed,
            Loss: loss, KSampler: k, SemanticWeight: lambda, Finetune: ft, Precision: p.MixedPrecision,
            SemanticPrefixes: new SemanticPrefixConfig(r.SemanticPrefixes, r.SemanticPrefixKs));
    }

    static async Task<IImageSource> OpenDataAsync(JobContext ctx, TrainTokenizerParams p)
    {
        string path;
        if (ctx.InputRoles.Contains("data")) path = await ctx.GetInputFileAsync("data");
        else if (p.DataPath is { } dp) path = dp;
        else if (p.SyntheticImages is int n)
        {
            path = Path.Combine(ctx.ScratchDir, "synthetic");
            int classes = Math.Min(SyntheticDataset.ClassNames.Length, n);
            SyntheticDataset.Generate(path, classes, (n + classes - 1) / classes, seed: (int)p.Trainer.GlobalSeed);
        }
        else throw new JobFailedException("no training images: give the input 'data' (a dataset.npz from extract-dataset), params.data_path (an .npz or an image folder) or params.synthetic_images");
        IImageSource src;
        if (File.Exists(path) && path.EndsWith(".npz", StringComparison.OrdinalIgnoreCase))
        {
            var t = Npz.LoadKey(path, "arr_0").ToTensor();
            if (p.Limit is int n && n < t.shape[0]) t = t.narrow(0, 0, n).contiguous();
            src = new TensorImageSource(t, $"{path}:arr_0");
        }
        else if (Directory.Exists(path))
        {
            var files = ImageFolder.List(path).Files;
            if (p.Limit is int n) files = files.Take(n).ToList();
            src = new FolderImageSource(files);
        }
        else throw new JobFailedException($"data_path '{path}' is neither an .npz file nor a folder");
        if (src.Count < p.Trainer.GlobalBatchSize)
            throw new JobFailedException($"the data has {src.Count} images, fewer than one batch (trainer.global_batch_size {p.Trainer.GlobalBatchSize})");
        ctx.Log($"data: {path} ({src.Count} images, augmentation {p.Augmentation})");
        return src;
    }

    /// <summary>Images decoded on demand from files (uint8 HWC).</summary>
    sealed class FolderImageSource(IReadOnlyList<string> files) : IImageSource
    {
        public long Count => files.Count;
        public Tensor Get(long index) => ImageIO.LoadRgb(files[(int)index]).ToTensor();
    }

    static Func<Tensor, Tensor, Tensor> Perceptual(JobContext ctx, TrainTokenizerParams p, Device device, bool log = true)
    {
        if (p.Loss.Params.PerceptualWeight == 0)
        {
            if (log) ctx.Log("loss.params.perceptual_weight is 0: LPIPS is off (no VGG weights needed); the objective differs from the reference's");
            return (x, _) => zeros(x.shape[0], dtype: x.dtype, device: x.device);
        }
        LpipsVgg lpips;
        try
        {
            lpips = LpipsVgg.Load(WeightsRegistry.ResolveOrPath(p.LpipsVgg16, "vgg16", p.WeightsDir),
                WeightsRegistry.ResolveOrPath(p.LpipsLin, "lpips-vgg", p.WeightsDir));
        }
        catch (FileNotFoundException e)
        {
            throw new JobFailedException($"loss.params.perceptual_weight is {p.Loss.Params.PerceptualWeight} but the LPIPS weights are missing: {e.Message} " +
                "(or set perceptual_weight: 0 for a run without LPIPS)", e);
        }
        foreach (var w in lpips.parameters()) w.requires_grad = false;
        lpips.to(device);
        lpips.train();   // the reference's vq_loss.train() leaves LPIPS' Dropout(0.5) active (tokenizer-training.md §2.3)
        if (log) ctx.Log("LPIPS-VGG loaded (frozen; its dropout is active as in the reference's training)");
        return (x, y) => lpips.forward(x, y);
    }

    static ISemanticTeacher? Teacher(JobContext ctx, TrainTokenizerParams p, TokenizerConfig cfg, Device device, ScalarType compute, bool log = true)
    {
        if (!p.SemanticOn)
        {
            if (log) ctx.Log(p.Trainer.DistillLoss
                ? "semantic weight is 0: the DINOv2 teacher is off"
                : "trainer.distill_loss is False: no semantic loss, no teacher");
            return null;
        }
        var dc = p.Retok.Teacher is { } t
            ? new Dinov2Config(PatchSize: t.PatchSize, EmbedDim: t.EmbedDim, Depth: t.Depth, NumHeads: t.NumHeads)
            : p.Trainer.DistillModel switch
            {
                "dinov2-vit-s" => new Dinov2Config(EmbedDim: 384, Depth: 12, NumHeads: 6),
                "dinov2-vit-l" => new Dinov2Config(EmbedDim: 1024, Depth: 24, NumHeads: 16),
                _ => Dinov2Config.VitB14,
            };
        if (dc.EmbedDim != cfg.OutInnerDim)
            throw new JobFailedException($"the teacher gives {dc.EmbedDim}-dim features but the tokenizer's distill_mlp outputs {cfg.OutInnerDim} (init_args.out_inner_dim)");
        string path;
        try
        {
            path = p.DistillWeights is { } explicitPath
                ? (File.Exists(explicitPath) ? explicitPath : throw new FileNotFoundException($"distill_weights: {explicitPath} does not exist", explicitPath))
                : WeightsRegistry.Resolve(TeacherWeights, p.WeightsDir);
        }
        catch (FileNotFoundException e)
        {
            throw new JobFailedException($"the semantic loss is on (weight {p.SemanticLambda0}) but the DINOv2 teacher weights are missing: {e.Message} " +
                "Set retok.semantic_weight: 0 (or trainer.distill_loss: False) to train without it.", e);
        }
        var teacher = Dinov2Teacher.Load(path, device, dc, computeType: compute);   // frozen: its weights are cast once
        if (log) ctx.Log($"semantic teacher: DINOv2 {dc.EmbedDim}-dim, {dc.Depth} layers from {Path.GetFileName(path)}; lambda(K) {p.Retok.SemanticSchedule} {p.SemanticLambda0} -> {p.Retok.SemanticWeightEnd} {p.Retok.SemanticWeighting}"
            + (p.Retok.MultiPrefix() ? $", {p.Retok.SemanticPrefixKs?.Length ?? p.Retok.SemanticPrefixes} extra prefixes ({(p.Retok.SemanticPrefixKs is { } ks ? "K " + string.Join(", ", ks) : "drawn from the K law")})" : ""));
        return teacher;
    }

    /// <summary>Weights-registry name of the DINOv2 ViT-B/14 teacher (dinov2_vitb14_pretrain.pth).</summary>
    public const string TeacherWeights = "dinov2-vitb14";

    // ------------------------------------------------------------------------------------------------ outputs

    /// <summary>The first n images, centre-cropped to size (fixed across the run), float [n, 3, size, size] in [-1, 1].</summary>
    static Tensor ReconImages(IImageSource source, int n, int size)
    {
        var imgs = new List<Tensor>();
        for (long i = 0; i < Math.Min(n, source.Count); i++)
        {
            var img = source.Get(i);
            imgs.Add(img.shape[0] == size && img.shape[1] == size ? img : AdmCrop.CenterCropArr(RgbImage.FromTensor(img), size).ToTensor());
        }
        return ReTokTokenizer.ImagesFromUint8(stack(imgs)).DetachFromDisposeScope();
    }

    /// <summary>recon/step_n.png: one row per image, original then K = 32, 64, 128, 256 (EMA weights when EMA is on).</summary>
    static async Task SaveReconAsync(JobContext ctx, TokenizerTrainer trainer, ReTokTokenizer model, Tensor images, int[] ks, long step)
    {
        var file = Path.Combine(ctx.ScratchDir, $"recon_{step}.png");
        using (var _ = NewDisposeScope())
        using (WithEmaWeights(trainer, model))
        {
            var codes = model.Encode(images);
            var cells = new List<Tensor>();
            var outs = ks.Select(k => ReTokTokenizer.ImagesToUint8(model.Decode(codes, k)).cpu()).ToList();
            var orig = ReTokTokenizer.ImagesToUint8(images).cpu();
            for (int i = 0; i < images.shape[0]; i++)
            {
                cells.Add(orig[i]);
                cells.AddRange(outs.Select(o => o[i]));
            }
            ImageGrid.Save(file, stack(cells), nrow: ks.Length + 1);
        }
        await ctx.SaveArtifactFileAsync($"recon/step_{step}.png", file, "image", overwrite: true,
            metadata: new { step, columns = new[] { "input" }.Concat(ks.Select(k => $"K={k}")).ToArray() });
        File.Delete(file);
    }

    /// <summary>Temporarily loads the EMA weights into the model (restored on dispose); a no-op without EMA.</summary>
    static IDisposable WithEmaWeights(TokenizerTrainer trainer, ReTokTokenizer model)
    {
        if (trainer.Ema is null) return new Restore(null);
        var named = model.named_parameters().Select(x => (x.name, x.parameter)).ToList();
        var backup = named.ToDictionary(x => x.name, x => x.parameter.detach().clone().DetachFromDisposeScope());
        trainer.Ema.CopyTo(named);
        return new Restore(() =>
        {
            using var _ = no_grad();
            foreach (var (n, prm) in named) { prm.copy_(backup[n]); backup[n].Dispose(); }
        });
    }

    sealed class Restore(Action? undo) : IDisposable
    {
        public void Dispose() => undo?.Invoke();
    }

    static async Task SaveTokenizerAsync(JobContext ctx, TrainTokenizerParams p, TokenizerConfig cfg, TokenizerTrainer trainer, ReTokTokenizer model)
    {
        var sd = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().cpu().contiguous());
        if (trainer.Ema is not null)
            foreach (var (k, v) in trainer.Ema.StateDict()) sd[k] = v;   // EMA covers parameters; buffers are the model's
        var st = Path.Combine(ctx.ScratchDir, "tokenizer.safetensors");
        StateDictFile.WriteSafetensors(st, sd, new Dictionary<string, string>
        {
            ["format"] = "pt", ["weights"] = trainer.Ema is null ? "model" : "ema", ["step"] = trainer.Step.ToString(),
        });   // nothing run-specific: a resumed run's file is byte-identical to an uninterrupted one's
        await ctx.SaveArtifactFileAsync("tokenizer.safetensors", st, "model", overwrite: true,
            metadata: new { step = trainer.Step, weights = trainer.Ema is null ? "model" : "ema" });
        var yaml = Path.Combine(ctx.ScratchDir, "tokenizer.yaml");
        await File.WriteAllTextAsync(yaml, TokenizerYaml(p, cfg, trainer.Step, ctx.RunId));
        TokenizerConfig.Load(yaml);   // what downstream jobs will do: fail here, not there
        await ctx.SaveArtifactFileAsync("tokenizer.yaml", yaml, "yaml", overwrite: true);
        ctx.Log($"saved tokenizer.safetensors ({(trainer.Ema is null ? "model" : "EMA")} weights, step {trainer.Step}) and tokenizer.yaml");
    }

    /// <summary>The `model:` section as given, with out_inner_dim made explicit (it otherwise depends on trainer.distill_loss).</summary>
    internal static string TokenizerYaml(TrainTokenizerParams p, TokenizerConfig cfg, long step, long runId)
    {
        var model = (JsonObject)p.Model!.DeepClone();
        var args = model["init_args"] as JsonObject ?? new JsonObject();
        model["init_args"] = args;
        if (cfg.DistillDepth is not null) args["out_inner_dim"] = cfg.OutInnerDim;
        return $"# ReTok tokenizer config written by train-tokenizer run {runId} at step {step}; load with TokenizerConfig.Load\n"
               + ConfigYaml.Write(new JsonObject { ["model"] = model });
    }
}

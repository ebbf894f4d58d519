using System.Diagnostics;
using System.Text.Json;
using ReTok.Models.Dinov2;
using ReTok.Models.Distributed;
using ReTok.Models.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ReTok.Models.Training;

/// <summary>What the trainer asks of the tokenizer in one generator forward.</summary>
/// <param name="Images">[B, 3, H, W] in [-1, 1].</param>
/// <param name="TokensPerSample">int64 [B], K per image (CPU). Decode from the first K of the N+M tokens:
/// <c>NestedDropout.Plan(K)</c> gives num_tokens and the key-padding mask for the decoder's cross-attention.</param>
/// <param name="ComputeFeatureRecLoss">true while s &lt; aux_loss_end (the model computes L_fea only then).</param>
/// <param name="ReturnSemanticFeatures">true when the teacher runs: return distill_mlp(decoder layer-3 queries).</param>
/// <param name="SemanticPrefixes">int64 [B] K per sample of each extra prefix (<see cref="SemanticPrefixConfig"/>): decode the
/// same encoded tokens from these K too, for the semantic features only; null or empty = none.</param>
/// <param name="DirectReconstruction">also decode the CNN features directly (dir_dec), for use_direct_rec_loss while s &lt; aux_loss_end.</param>
public sealed record TokenizerStepInput(Tensor Images, Tensor TokensPerSample, bool ComputeFeatureRecLoss, bool ReturnSemanticFeatures,
    IReadOnlyList<Tensor>? SemanticPrefixes = null, bool DirectReconstruction = false);

/// <param name="Reconstruction">[B, 3, H, W].</param>
/// <param name="Codebook">VQ losses over all N+M tokens (commit already x 0.25).</param>
/// <param name="FeatureRecLoss">weighted mse(sg(S_cnn), S_vit) when requested, else null.</param>
/// <param name="SemanticFeatures">[B, 256, 768] student features when requested, else null.</param>
/// <param name="Indices">code indices (logging only; may be null).</param>
/// <param name="LastLayerWeight">decoder's last conv weight, needed only with LossConfig.DiscAdaptiveWeight.</param>
/// <param name="Metrics">extra scalars to log (e.g. codebook usage).</param>
/// <param name="PrefixSemanticFeatures">student features of each of <see cref="TokenizerStepInput.SemanticPrefixes"/>, in order.</param>
/// <param name="DirectReconstruction">dir_dec [B, 3, H, W] when requested, else null.</param>
public sealed record TokenizerStepOutput(Tensor Reconstruction, CodebookLosses Codebook, Tensor? FeatureRecLoss,
    Tensor? SemanticFeatures, Tensor? Indices = null, Tensor? LastLayerWeight = null, IReadOnlyDictionary<string, double>? Metrics = null,
    IReadOnlyList<Tensor>? PrefixSemanticFeatures = null, Tensor? DirectReconstruction = null);

/// <summary>The tokenizer as the trainer sees it. <see cref="Module"/> provides named parameters (optimizer, EMA,
/// freezing by name prefix), the state dict (checkpoints) and train()/eval().</summary>
public interface ITrainableTokenizer
{
    nn.Module Module { get; }
    TokenizerStepOutput Forward(TokenizerStepInput input);
}

/// <summary>
/// Trainer settings. Optimisation and loss defaults are the reference's (vq_train.py + VQ_SB256.yaml); K sampling and
/// lambda(K) default to our reading of the paper (docs/training.md). <see cref="Released"/> reproduces the released
/// code: K fixed at 256, constant semantic weight 0.5.
/// </summary>
public sealed record TrainerConfig(
    long TotalSteps,
    double BaseLr = 1e-4,
    double EndLr = 1e-5,
    long WarmupSteps = 0,
    double Beta1 = 0.9,
    double Beta2 = 0.95,
    double WeightDecay = 1e-4,
    double Eps = 1e-8,
    double MaxGradNorm = 10.0,
    bool UseEma = false,
    double EmaDecay = 0.9999,
    int GradAccumulationSteps = 1,
    long Seed = 0,
    LossConfig? Loss = null,
    KSamplerConfig? KSampler = null,
    SemanticWeightConfig? SemanticWeight = null,
    DecoderFinetuneConfig? Finetune = null,
    string Precision = "auto",
    SemanticPrefixConfig? SemanticPrefixes = null)
{
    public LossConfig LossOrDefault => Loss ?? new LossConfig();
    public KSamplerConfig KSamplerOrDefault => KSampler ?? new KSamplerConfig();
    public SemanticWeightConfig SemanticWeightOrDefault => SemanticWeight ?? new SemanticWeightConfig();
    public SemanticPrefixConfig SemanticPrefixesOrDefault => SemanticPrefixes ?? new SemanticPrefixConfig();

    public static TrainerConfig Released(long totalSteps) =>
        new(totalSteps, KSampler: KSamplerConfig.Released, SemanticWeight: SemanticWeightConfig.Released);
}

public sealed record StepResult(long Step, IReadOnlyDictionary<string, double> Scalars);

/// <summary>A loss term or gradient norm went NaN/inf: training stops (the reference raises RuntimeError on NaN).</summary>
public sealed class TrainingDivergedException(long step, string term, double value)
    : Exception($"training diverged at step {step}: '{term}' is {value}")
{
    public long Step { get; } = step;
    public string Term { get; } = term;
}

/// <summary>
/// One iteration = GigaTok's vq_train.py loop body: teacher features (no grad), G forward with K per sample, all loss
/// terms, backward, clip 10, AdamW step, lr(t) applied after the step (one-step lag), EMA; then, from s = t+1 >=
/// disc_start, one D step on the same batch and the detached reconstruction. Any non-finite term throws
/// <see cref="TrainingDivergedException"/>. <see cref="Save"/>/<see cref="Load"/> cover everything a bit-identical
/// resume needs (model, EMA, discriminator incl. BatchNorm stats, both optimizers, step, RNG states, data position).
/// Data parallel (<see cref="Comm"/> with N ranks): the data position, K draws and step are global; rank r loads and
/// trains on rows [r*B/N, (r+1)*B/N) of each global batch with those rows' K, G and D gradients are averaged over ranks
/// before clipping, and the logged scalars are rank means. The discriminator's BatchNorm normalises over the rank's
/// rows (as DDP without SyncBatchNorm, and as grad accumulation does per micro-batch); its running statistics, unused
/// in train mode, are rank 0's in checkpoints.
/// </summary>
public sealed class TokenizerTrainer : IDisposable
{
    public TrainerConfig Config { get; }
    public ITrainableTokenizer Tokenizer { get; }
    public PatchGanDiscriminator Discriminator { get; }
    public TokenizerLoss Loss { get; }
    public ISemanticTeacher? Teacher { get; }
    public TrainingDataLoader Data { get; }
    public NamedAdamW OptimizerG { get; }
    public NamedAdamW OptimizerD { get; }
    public Ema? Ema { get; }
    public KSampler KSampler { get; }
    public Precision Precision { get; }
    /// <summary>Completed iterations t (the reference's train_steps).</summary>
    public long Step { get; private set; }
    public bool FinetuneApplied { get; private set; }
    /// <summary>This replica's communicator when training data parallel, else null.</summary>
    public ICommunicator? Comm { get; }

    private readonly Device device;
    private readonly torch.Generator kGenerator;
    private readonly GradAccumulation accumulation;

    /// <summary>Fired after each step with its scalars (logging hook).</summary>
    public event Action<StepResult>? StepCompleted;

    public TokenizerTrainer(ITrainableTokenizer tokenizer, PatchGanDiscriminator discriminator,
        Func<Tensor, Tensor, Tensor> perceptual, ISemanticTeacher? teacher, TrainingDataLoader data, TrainerConfig config,
        Device? device = null, ICommunicator? comm = null)
    {
        if (config.TotalSteps < 1) throw new ArgumentException($"TotalSteps must be >= 1, got {config.TotalSteps}");
        Config = config;
        Tokenizer = tokenizer;
        Discriminator = discriminator;
        Teacher = teacher;
        Data = data;
        this.device = device ?? CPU;
        Precision = Precision.Resolve(config.Precision, this.device);
        Loss = new TokenizerLoss(config.LossOrDefault, discriminator, perceptual);
        KSampler = new KSampler(config.KSamplerOrDefault);
        config.SemanticPrefixesOrDefault.Validate(KSampler.Config.NumTokens + KSampler.Config.NumPadding);
        kGenerator = new torch.Generator((ulong)config.Seed);
        accumulation = new GradAccumulation(config.GradAccumulationSteps);
        OptimizerG = new NamedAdamW(NamedParams(tokenizer.Module), config.BaseLr, config.Beta1, config.Beta2, config.Eps, config.WeightDecay);
        OptimizerD = new NamedAdamW(NamedParams(discriminator), config.BaseLr, config.Beta1, config.Beta2, config.Eps, config.WeightDecay);
        Comm = comm;
        if (comm is not null)
        {
            if (data.Config.BatchSize % (comm.WorldSize * config.GradAccumulationSteps) != 0)
                throw new ArgumentException($"data parallel: a batch of {data.Config.BatchSize} does not split into {comm.WorldSize} replicas x {config.GradAccumulationSteps} micro-batches");
            DataParallel.BroadcastState(tokenizer.Module, comm); // every replica starts from rank 0's weights
            DataParallel.BroadcastState(discriminator, comm);
        }
        if (config.UseEma) Ema = new Ema(NamedParams(tokenizer.Module), config.EmaDecay); // exact copy at start
        tokenizer.Module.train();
        discriminator.train(); // BatchNorm batch statistics in both G and D passes, as the reference
    }

    private static List<(string, Parameter)> NamedParams(nn.Module m) => m.named_parameters().Select(p => (p.name, p.parameter)).ToList();

    public double LearningRateAt(long t) =>
        LrSchedule.CosineWithWarmup(t, Config.BaseLr, Config.WarmupSteps, Config.TotalSteps, Config.EndLr);

    private bool FinetuneActive => Config.Finetune is { } f && Step >= f.StartStep;

    private void ApplyFinetune()
    {
        var f = Config.Finetune!;
        foreach (var (name, p) in Tokenizer.Module.named_parameters()) p.requires_grad = f.Trainable(name);
        FinetuneApplied = true;
    }

    public StepResult TrainStep()
    {
        var sw = Stopwatch.StartNew();
        using var scope = NewDisposeScope();
        long t = Step, s = t + 1;
        var cfg = Config;
        var scalars = new Dictionary<string, double>();

        if (FinetuneActive && !FinetuneApplied) ApplyFinetune();
        var ft = FinetuneActive ? cfg.Finetune : null;

        int rank = Comm?.Rank ?? 0, world = Comm?.WorldSize ?? 1;
        var images = Data.Next(rank, world).to(device);
        int b = Data.Config.BatchSize; // global; K is drawn for the whole batch and sliced, so it does not depend on N
        var kAll = ft is { KeepNestedDropout: false } ? full(new long[] { b }, (long)(ft.FixedK ?? KSampler.Config.NumTokens), dtype: int64) : KSampler.Sample(b, kGenerator);
        var k = DataParallel.Slice(kAll, rank, world);
        bool semantic = Teacher is not null && !(ft?.TeacherOff ?? false);
        var teacherFeat = semantic ? Teacher!.Features(images) : null;
        var lambdaCfg = cfg.SemanticWeightOrDefault;
        // extra prefixes for the semantic term only, drawn after K (so none drawn = today's K stream)
        var prefixAll = semantic ? cfg.SemanticPrefixesOrDefault.Sample(KSampler, b, kGenerator) : Array.Empty<Tensor>();
        // lambda per sample of a prefix; null = the loss's constant ProjWeight (the released term)
        Tensor? Lambda(Tensor kc) =>
            !semantic ? null
            : lambdaCfg.Schedule != LambdaSchedule.Constant ? lambdaCfg.At(kc).to(device)
            : lambdaCfg.At(1) != cfg.LossOrDefault.ProjWeight ? full(new long[] { kc.shape[0] }, lambdaCfg.At(1), dtype: float32, device: device)
            : null;

        // ---- generator ----
        OptimizerG.ZeroGrad();
        var imgChunks = accumulation.Split(images);
        var kChunks = accumulation.Split(k);
        var prefixChunks = prefixAll.Select(pk => accumulation.Split(DataParallel.Slice(pk, rank, world))).ToArray();
        var teacherChunks = teacherFeat is null ? null : accumulation.Split(teacherFeat);
        var recons = new List<Tensor>();
        var directRecons = new List<Tensor?>();
        for (int i = 0; i < imgChunks.Count; i++)
        {
            var x = imgChunks[i];
            var prefixK = prefixChunks.Select(c => c[i]).ToArray();
            // bf16/fp16: the forward and the loss terms under Amp (autocast's casts, fp32 master weights, fp32 losses);
            // backward runs outside the scope through the recorded casts
            using var amp = Amp.Enable(Precision.Compute);
            bool aux = s < cfg.LossOrDefault.AuxLossEnd;
            var output = Tokenizer.Forward(new TokenizerStepInput(x, kChunks[i], aux, semantic, prefixK.Length > 0 ? prefixK : null,
                aux && cfg.LossOrDefault.UseDirectRecLoss));
            var lambda = Lambda(kChunks[i]);
            (Tensor Student, Tensor? Weights)[]? prefixes = null;
            if (semantic && prefixK.Length > 0)
            {
                if (output.PrefixSemanticFeatures is not { } pf || pf.Count != prefixK.Length)
                    throw new InvalidOperationException($"the tokenizer returned {output.PrefixSemanticFeatures?.Count ?? 0} prefix semantic features for {prefixK.Length} semantic prefixes");
                prefixes = prefixK.Select((pk, j) => (Precision.Out(pf[j]), Lambda(pk))).ToArray();
            }
            var terms = Loss.Generator(x, Precision.Out(output.Reconstruction), output.Codebook, output.FeatureRecLoss, s,
                semantic && output.SemanticFeatures is { } sf ? Precision.Out(sf) : null, teacherChunks?[i], lambda, output.LastLayerWeight, prefixes,
                output.DirectReconstruction is { } dr ? Precision.Out(dr) : null);
            foreach (var (name, v) in terms.Named()) Accumulate(scalars, name, CheckFinite(s, name, v), imgChunks.Count);
            Accumulate(scalars, "adv_weight", terms.AdversarialWeight, imgChunks.Count);
            if (lambda is not null) Accumulate(scalars, "lambda_mean", lambda.mean().item<float>(), imgChunks.Count);
            if (prefixes is not null && prefixes.All(p => p.Weights is not null))
                Accumulate(scalars, "lambda_prefixes_mean", prefixes.Average(p => p.Weights!.mean().item<float>()), imgChunks.Count);
            if (output.Metrics is not null)
                foreach (var (name, v) in output.Metrics) Accumulate(scalars, name, v, imgChunks.Count);
            amp.Dispose();
            (accumulation.Steps == 1 ? terms.Total : terms.Total * accumulation.LossScale).backward();
            if (s >= cfg.LossOrDefault.DiscStart)   // the D step's inputs; before disc_start nothing reads them
            {
                recons.Add(output.Reconstruction.detach());
                directRecons.Add(output.DirectReconstruction?.detach());
            }
        }
        var gParams = OptimizerG.Parameters.Select(p => p.Param).ToList();
        if (Comm is not null) DataParallel.AverageGradients(gParams, Comm);
        scalars["grad_norm_g"] = CheckFinite(s, "grad_norm_g", GradClip.ClipGradNorm(gParams, cfg.MaxGradNorm));
        scalars["lr"] = OptimizerG.LearningRate;
        OptimizerG.Step();
        OptimizerG.LearningRate = LearningRateAt(t);
        Ema?.Update(OptimizerG.Parameters);

        // ---- discriminator ----
        OptimizerD.ZeroGrad(); // also drops the gradients the G backward left in D (reference: optimizer_disc.zero_grad)
        if (s >= cfg.LossOrDefault.DiscStart)
        {
            for (int i = 0; i < imgChunks.Count; i++)
            {
                DiscriminatorLossTerms d;
                using (Amp.Enable(Precision.Compute))
                    d = Loss.DiscriminatorStep(imgChunks[i], Precision.Out(recons[i]), s, directRecons[i] is { } dr ? Precision.Out(dr) : null);
                foreach (var (name, v) in d.Named()) Accumulate(scalars, name, CheckFinite(s, name, v), imgChunks.Count);
                (accumulation.Steps == 1 ? d.Total : d.Total * accumulation.LossScale).backward();
            }
            if (Comm is not null) DataParallel.AverageGradients(Discriminator.parameters().ToList(), Comm);
            scalars["grad_norm_d"] = CheckFinite(s, "grad_norm_d", GradClip.ClipGradNorm(Discriminator.parameters(), cfg.MaxGradNorm));
            scalars["lr_disc"] = OptimizerD.LearningRate;
            OptimizerD.Step();
            OptimizerD.LearningRate = LearningRateAt(t);
        }

        Step = t + 1;
        if (Comm is { WorldSize: > 1 } comm)
        {
            // every rank has the same keys (they depend on the step and config only): average them in a fixed order
            var keys = scalars.Keys.Order(StringComparer.Ordinal).ToArray();
            var mean = DataParallel.Mean(comm, device, keys.Select(key => scalars[key]).ToArray());
            for (int i = 0; i < keys.Length; i++) scalars[keys[i]] = mean[i];
        }
        var kf = kAll.to(float32);
        scalars["k_mean"] = kf.mean().item<float>();
        scalars["k_min"] = kf.min().item<float>();
        scalars["k_max"] = kf.max().item<float>();
        if (prefixAll.Length > 0) scalars["k_prefixes_mean"] = stack(prefixAll).to(float32).mean().item<float>();
        scalars["semantic_on"] = semantic ? 1 : 0;
        scalars["img_per_s"] = b / Math.Max(sw.Elapsed.TotalSeconds, 1e-9);
        var result = new StepResult(Step, scalars);
        StepCompleted?.Invoke(result);
        return result;
    }

    private static void Accumulate(Dictionary<string, double> d, string name, double v, int n) =>
        d[name] = d.GetValueOrDefault(name) + v / n;

    private static double CheckFinite(long step, string term, Tensor v) => CheckFinite(step, term, v.to(float64).item<double>());

    private static double CheckFinite(long step, string term, double v) =>
        double.IsFinite(v) ? v : throw new TrainingDivergedException(step, term, v);

    // ------------------------------------------------------------------------------------------------------------
    // state
    // ------------------------------------------------------------------------------------------------------------

    private sealed record TrainerStateFile(long Step, long DataEpoch, long DataBatch, bool FinetuneApplied, int BatchSize,
        long DataSeed, long Seed, bool UseEma, string Config);

    /// <summary>Write the full training state to <paramref name="dir"/> (replaced atomically: written to a sibling
    /// temp folder, then swapped in).</summary>
    public void Save(string dir)
    {
        dir = Path.GetFullPath(dir.TrimEnd('/', '\\'));
        var tmp = dir + ".tmp";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        StateDictFile.WriteSafetensors(Path.Combine(tmp, "model.safetensors"), Tokenizer.Module.state_dict());
        if (Ema is not null) StateDictFile.WriteSafetensors(Path.Combine(tmp, "ema.safetensors"), Ema.StateDict());
        StateDictFile.WriteSafetensors(Path.Combine(tmp, "discriminator.safetensors"), Discriminator.state_dict());
        StateDictFile.WriteSafetensors(Path.Combine(tmp, "optimizer.safetensors"), OptimizerG.StateDict());
        StateDictFile.WriteSafetensors(Path.Combine(tmp, "optimizer_disc.safetensors"), OptimizerD.StateDict());
        StateDictFile.WriteSafetensors(Path.Combine(tmp, "rng.safetensors"), new Dictionary<string, Tensor>
        {
            ["k_generator"] = kGenerator.get_state(),
            ["torch_cpu"] = get_rng_state(),
        });
        var st = new TrainerStateFile(Step, Data.Position.Epoch, Data.Position.Batch, FinetuneApplied, Data.Config.BatchSize,
            Data.Config.Seed, Config.Seed, Config.UseEma, Config.ToString());
        File.WriteAllText(Path.Combine(tmp, "trainer.json"), JsonSerializer.Serialize(st, new JsonSerializerOptions { WriteIndented = true }));
        var old = dir + ".old";
        if (Directory.Exists(old)) Directory.Delete(old, true);
        if (Directory.Exists(dir)) Directory.Move(dir, old);
        Directory.Move(tmp, dir);
        if (Directory.Exists(old)) Directory.Delete(old, true);
    }

    /// <summary>Restore a state written by <see cref="Save"/> into this (identically configured) trainer.</summary>
    public void Load(string dir)
    {
        var json = Path.Combine(dir, "trainer.json");
        if (!File.Exists(json)) throw new FileNotFoundException($"not a trainer state folder (no trainer.json): {dir}", json);
        var st = JsonSerializer.Deserialize<TrainerStateFile>(File.ReadAllText(json))
                 ?? throw new InvalidDataException($"{json}: empty");
        if (st.BatchSize != Data.Config.BatchSize || st.DataSeed != Data.Config.Seed)
            throw new InvalidDataException($"{json}: saved with batch {st.BatchSize}, data seed {st.DataSeed}; this run has batch {Data.Config.BatchSize}, data seed {Data.Config.Seed} (the data position would not mean the same batches)");
        if (st.UseEma != Config.UseEma) throw new InvalidDataException($"{json}: saved with UseEma={st.UseEma}, this run has UseEma={Config.UseEma}");
        string F(string name) => Path.Combine(dir, name);
        StateDictFile.LoadInto(Tokenizer.Module, StateDictFile.Read(F("model.safetensors")), F("model.safetensors"));
        if (Ema is not null) Ema.LoadStateDict(StateDictFile.Read(F("ema.safetensors")), F("ema.safetensors"));
        StateDictFile.LoadInto(Discriminator, StateDictFile.Read(F("discriminator.safetensors")), F("discriminator.safetensors"));
        OptimizerG.LoadStateDict(StateDictFile.Read(F("optimizer.safetensors")), F("optimizer.safetensors"));
        OptimizerD.LoadStateDict(StateDictFile.Read(F("optimizer_disc.safetensors")), F("optimizer_disc.safetensors"));
        var rng = StateDictFile.Read(F("rng.safetensors"));
        kGenerator.set_state(rng["k_generator"]);
        set_rng_state(rng["torch_cpu"]);
        Step = st.Step;
        Data.Position = new DataPosition(st.DataEpoch, st.DataBatch);
        FinetuneApplied = false;
        if (st.FinetuneApplied) ApplyFinetune();
    }

    public void Dispose()
    {
        Ema?.Dispose();
        kGenerator.Dispose();
    }
}

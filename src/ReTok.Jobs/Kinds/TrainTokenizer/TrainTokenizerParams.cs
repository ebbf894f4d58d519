using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Models.Distributed;
using ReTok.Models.Tokenizer;
using ReTok.Models.Training;

namespace ReTok.Jobs.Kinds.TrainTokenizer;

/// <summary>
/// Parameters of `train-tokenizer`. The sections <c>model</c>, <c>trainer</c> and <c>loss</c> take the reference YAML
/// (configs/vq/VQ_SB256.yaml, VQ_SS256.yaml) key for key, so `params_from: VQ_SB256.yaml` works; the top-level keys
/// are vq_train.py's command-line arguments (iterations, ckpt_every, ema, ...); <c>retok</c> holds the ReTok method
/// choices the released code lacks (nested dropout over the padded sequence, lambda(K), decoder fine-tuning; see
/// docs/jobs-train-tokenizer.md), the rest is ours (data, outputs, weights, debugging).
/// </summary>
public enum InitMode { Strict, Gigatok }

public sealed record TrainTokenizerParams : IValidatableParams, IMultiNodeParams
{
    /// <summary>The reference `model:` section (model_cls, init_args, causal_settings), read by TokenizerConfig.</summary>
    public JsonObject? Model { get; init; }
    public TrainerSection Trainer { get; init; } = new();
    public LossSection Loss { get; init; } = new();
    public RetokSection Retok { get; init; } = new();

    // ---- vq_train.py arguments
    /// <summary>--iterations: total optimizer steps T (the lr schedule runs to T).</summary>
    public long Iterations { get; init; }
    /// <summary>--early-stop-iter: stop here (the schedule still runs to `iterations`).</summary>
    public long? EarlyStopIter { get; init; }
    public long CkptEvery { get; init; } = 5000;
    /// <summary>
    /// Metrics every n steps (the reference logs every 500). Default: every step up to 10 000 iterations, then
    /// iterations / 10 000 (250 for a 2.5M-iteration run), i.e. at most ~10k points a metric key — per-step logging of
    /// such a run wrote 2.5M points a key, which no chart or API reader needs.
    /// </summary>
    public long? LogEvery { get; init; }

    /// <summary>The <see cref="LogEvery"/> in force.</summary>
    public long EffectiveLogEvery() => LogEvery ?? Math.Max(1, Iterations / 10_000);
    public bool Ema { get; init; }
    public double EmaDecay { get; init; } = 0.9999;
    /// <summary>auto (bf16 on CUDA, fp32 on CPU), none/fp32, bf16. fp16 needs a GradScaler and is not offered.</summary>
    public string MixedPrecision { get; init; } = "auto";
    /// <summary>Micro-batches per optimizer step (parsed but unused by the reference; 1 reproduces it).</summary>
    public int GradientAccumulationSteps { get; init; } = 1;
    /// <summary>`data_parallel: {replicas: N, backend: cpu|nccl}` (docs/training.md, "Data-parallel training"): one tokenizer,
    /// discriminator, LPIPS, teacher and trainer per replica, each on 1/N of every global batch; nccl replica r runs on the
    /// run's r-th leased device (gpus: N in the spec).</summary>
    public DataParallelConfig DataParallel { get; init; } = new();

    // ---- data
    /// <summary>Images when no input `data` is given: an .npz (arr_0 uint8 [N,H,W,3]) or an image folder (ImageFolder layout or flat).</summary>
    [DataPath] public string? DataPath { get; init; }
    /// <summary>No input and no data_path: generate this many synthetic images (the quickstart's 8 shape classes) in scratch.</summary>
    public int? SyntheticImages { get; init; }
    /// <summary>random_crop_flip (reference: random_crop_arr 256 + horizontal flip), center_crop, none (images must be 256x256).</summary>
    public Augmentation Augmentation { get; init; } = Augmentation.RandomCropFlip;
    /// <summary>Threads for per-image augmentation (results do not depend on it).</summary>
    public int NumWorkers { get; init; } = 2;
    /// <summary>Use only the first n images (smoke runs).</summary>
    public int? Limit { get; init; }

    // ---- outputs
    /// <summary>Reconstruction grid recon/step_n.png every n steps (and at the end); 0 = only at the end.</summary>
    public long ReconEvery { get; init; } = 5000;
    public int[] ReconTokens { get; init; } = [32, 64, 128, 256];
    public int ReconImages { get; init; } = 4;

    // ---- warm start
    /// <summary>Tokenizer weights to start from (as input `init`; giving both is an error).</summary>
    [DataPath] public string? InitCheckpoint { get; init; }
    /// <summary>strict: every key must match; gigatok: a GigaTok checkpoint without the padding `_comp` keys, which are
    /// filled by replicating the last queries' positional embeddings (logged and saved as init_filled.json).</summary>
    public InitMode InitMode { get; init; } = InitMode.Strict;

    // ---- external weights (see `retok weights list`)
    /// <summary>Weights folder (default $RETOK_HOME/weights).</summary>
    [DataPath] public string? WeightsDir { get; init; }
    /// <summary>Explicit teacher weights (dinov2_vitb14_pretrain.pth or a .safetensors of it); default: the weights folder.</summary>
    [DataPath] public string? DistillWeights { get; init; }
    [DataPath] public string? LpipsVgg16 { get; init; }
    [DataPath] public string? LpipsLin { get; init; }

    // ---- engine / debugging
    /// <summary>torch intra-op threads of this run (null: the worker's, by default the core count); the run computes on a
    /// thread of its own with this count and leaves the worker's setting as it was (<see cref="ReTok.Models.TorchThreads"/>).</summary>
    public int? TorchThreads { get; init; }
    /// <summary>Multiplies the reconstruction by NaN at this step (1-based s): the run must fail naming step and term.</summary>
    public long? DebugInjectNanAtStep { get; init; }

    public IEnumerable<string> Validate()
    {
        if (Iterations < 1) yield return $"iterations: must be >= 1, got {Iterations}";
        if (EarlyStopIter is < 1) yield return $"early_stop_iter: must be >= 1, got {EarlyStopIter}";
        if (CkptEvery < 1) yield return $"ckpt_every: must be >= 1, got {CkptEvery}";
        if (LogEvery is < 1) yield return $"log_every: must be >= 1, got {LogEvery}";
        if (ReconEvery < 0) yield return $"recon_every: must be >= 0, got {ReconEvery}";
        if (EmaDecay is <= 0 or >= 1) yield return $"ema_decay: must be in (0, 1), got {EmaDecay}";
        if (GradientAccumulationSteps < 1) yield return $"gradient_accumulation_steps: must be >= 1, got {GradientAccumulationSteps}";
        foreach (var e in (DataParallel ?? new()).Validate(Trainer.GlobalBatchSize, GradientAccumulationSteps)) yield return e;
        if (SyntheticImages is < 1) yield return $"synthetic_images: must be >= 1, got {SyntheticImages}";
        if (NumWorkers < 1) yield return $"num_workers: must be >= 1, got {NumWorkers}";
        if (ReconImages < 1) yield return $"recon_images: must be >= 1, got {ReconImages}";
        if (TorchThreads is < 1) yield return $"torch_threads: must be >= 1, got {TorchThreads}";
        if (MixedPrecision.ToLowerInvariant() is not ("auto" or "none" or "fp32" or "bf16"))
            yield return $"mixed_precision: expected auto, none, fp32 or bf16, got '{MixedPrecision}'";
        string? modelError = null;
        TokenizerConfig? cfg = null;
        try { cfg = TokenizerModel(); }
        catch (Exception e) when (e is ArgumentException or InvalidDataException) { modelError = e.Message; }
        if (modelError is not null) yield return $"model: {modelError}";
        foreach (var e in Trainer.Validate()) yield return "trainer." + e;
        foreach (var e in Loss.Validate()) yield return "loss." + e;
        foreach (var e in Retok.Validate(cfg)) yield return "retok." + e;
        if (cfg is not null)
            foreach (var k in ReconTokens)
                if (k < 1 || k > cfg.TotalTokens) yield return $"recon_tokens: {k} is outside 1..{cfg.TotalTokens}";
        if (Trainer.GlobalBatchSize % GradientAccumulationSteps != 0)
            yield return $"gradient_accumulation_steps: {GradientAccumulationSteps} does not divide trainer.global_batch_size {Trainer.GlobalBatchSize}";
        if (cfg is not null && Loss.Params.ImageSize is int lossSize && lossSize != cfg.ImageSize)
            yield return $"loss.params.image_size: {lossSize} differs from model.init_args.image_size {cfg.ImageSize} (leave it out to follow the model)";
        if (cfg is not null && SemanticOn && cfg.GridSize != 16)
            yield return $"model: the semantic loss aligns with DINOv2's 16x16 patch features, but image_size {cfg.ImageSize} over patch {cfg.PatchSize} "
                + $"gives a {cfg.GridSize}x{cfg.GridSize} grid: turn it off (trainer.distill_loss: False) or keep a 16x16 grid";
        if (Retok.MultiPrefix() && !SemanticOn)
            yield return "retok.semantic_prefixes/semantic_prefix_ks: extra prefixes only feed the semantic loss, which is off (trainer.distill_loss or a weight > 0)";
        if (cfg is not null && SemanticOn && cfg.DistillDepth is null)
            yield return "model: the semantic loss is on (trainer.distill_loss with a weight > 0) but init_args.distill_depth is null";
    }

    public IEnumerable<string> ValidateNodes(int nodes) =>
        (DataParallel ?? new()).ValidateNodes(nodes, Trainer.GlobalBatchSize, GradientAccumulationSteps);

    /// <summary>The tokenizer config, parsed exactly as TokenizerConfig.Load would read this YAML (trainer.distill_loss decides out_inner_dim).</summary>
    public TokenizerConfig TokenizerModel()
    {
        if (Model is null) throw new ArgumentException("the `model:` section is required (model_cls, init_args, ...; see configs/vq/VQ_SB256.yaml)");
        var root = new JsonObject
        {
            ["model"] = Model.DeepClone(),
            ["trainer"] = new JsonObject { ["distill_loss"] = Trainer.DistillLoss, ["distill_model"] = Trainer.DistillModel },
        };
        return TokenizerConfig.Parse(root).Model;
    }

    /// <summary>Whether the teacher runs at all: trainer.distill_loss and some lambda(K) above 0.</summary>
    public bool SemanticOn => Trainer.DistillLoss && (SemanticLambda0 > 0 || Retok.SemanticWeightFloor > 0 || (Retok.SemanticSchedule != LambdaSchedule.Constant && Retok.SemanticWeightEnd > 0));

    /// <summary>lambda at the short end: retok.semantic_weight, else loss.params.proj_weight (the reference's constant 0.5).</summary>
    public double SemanticLambda0 => Retok.SemanticWeight ?? Loss.Params.ProjWeight;
}

/// <summary>The reference `trainer:` section (configs/vq/VQ_SB256.yaml) plus GigaTok's optional keys.</summary>
public sealed record TrainerSection
{
    public int GlobalBatchSize { get; init; } = 128;
    public double Lr { get; init; } = 1e-4;
    public string LrScheduler { get; init; } = "cosine_v2";
    public double EndLr { get; init; } = 1e-5;
    public string Optimizer { get; init; } = "AdamW";
    public long GlobalSeed { get; init; }
    public long Warmup { get; init; }
    public double WeightDecay { get; init; } = 1e-4;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double MaxGradNorm { get; init; } = 10.0;
    public bool DistillLoss { get; init; } = true;
    /// <summary>Teacher: dinov2-vit-b (default, ViT-B/14 without registers), dinov2-vit-s, dinov2-vit-l.</summary>
    public string DistillModel { get; init; } = "dinov2-vit-b";
    /// <summary>GigaTok's decoder fine-tuning switch: from this 0-based iteration only the CNN pixel decoder trains and the teacher is off.</summary>
    public long? FreezeButDecoderIter { get; init; }

    public IEnumerable<string> Validate()
    {
        if (GlobalBatchSize < 1) yield return $"global_batch_size: must be >= 1, got {GlobalBatchSize}";
        if (LrScheduler != "cosine_v2") yield return $"lr_scheduler: only 'cosine_v2' (cosine_schedule_with_warmup_v2, both configs) is ported, got '{LrScheduler}'";
        if (!Optimizer.Equals("AdamW", StringComparison.OrdinalIgnoreCase)) yield return $"optimizer: only AdamW is ported, got '{Optimizer}'";
        if (Lr <= 0 || EndLr < 0) yield return $"lr/end_lr: must be > 0 / >= 0, got {Lr} / {EndLr}";
        if (Warmup < 0) yield return $"warmup: must be >= 0, got {Warmup}";
        if (MaxGradNorm < 0) yield return $"max_grad_norm: must be >= 0 (0 = no clipping), got {MaxGradNorm}";
        if (FreezeButDecoderIter is < 0) yield return $"freeze_but_decoder_iter: must be >= 0, got {FreezeButDecoderIter}";
        if (DistillModel is not ("dinov2-vit-b" or "dinov2-vit-s" or "dinov2-vit-l"))
            yield return $"distill_model: '{DistillModel}' is not ported (dinov2-vit-b, dinov2-vit-s, dinov2-vit-l)";
    }
}

/// <summary>The reference `loss:` section: loss_cls VQLoss and its params.</summary>
public sealed record LossSection
{
    public string LossCls { get; init; } = "VQLoss";
    public VqLossParams Params { get; init; } = new();

    public IEnumerable<string> Validate()
    {
        if (LossCls != "VQLoss") yield return $"loss_cls: only VQLoss is ported, got '{LossCls}'";
        foreach (var e in Params.Validate()) yield return "params." + e;
    }
}

/// <summary>VQLoss arguments as the ReTok configs set them; the reference's other options are accepted only at their off value.</summary>
public sealed record VqLossParams
{
    public long DiscStart { get; init; }
    public double DiscWeight { get; init; } = 0.5;
    public string DiscType { get; init; } = "patchgan";
    public string DiscLoss { get; init; } = "hinge";
    public int DiscDim { get; init; } = 64;
    public int DiscNumLayers { get; init; } = 3;
    public int Kw { get; init; } = 4;
    public string Norm { get; init; } = "batch";
    public string GenAdvLoss { get; init; } = "hinge";
    /// <summary>Null follows model.init_args.image_size (the reference's 256); a different value is refused.</summary>
    public int? ImageSize { get; init; }
    public double PerceptualWeight { get; init; } = 1.0;
    public double ReconstructionWeight { get; init; } = 1.0;
    public string ReconstructionLoss { get; init; } = "l2";
    /// <summary>Stored but never applied by the reference (tokenizer-training.md §10, item 5); any value is accepted.</summary>
    public double CodebookWeight { get; init; } = 1.0;
    public long AuxLossEnd { get; init; } = 15000;
    public long? EntropyLossEnd { get; init; }
    /// <summary>VQLoss's own default is True, both ReTok configs set False: the shortcut decode dir_dec = decoder(S_cnn) gets
    /// the rec/perceptual/adversarial terms while s &lt; aux_loss_end (the quickstart's small model learns with it).</summary>
    public bool UseDirectRecLoss { get; init; }
    public bool ResnetPerceptual { get; init; }
    public bool BlurDs { get; init; }
    public bool Lecam { get; init; }
    public bool DiscAdaptiveWeight { get; init; }
    /// <summary>Semantic (REPA) weight; the reference default 0.5 (configs do not set it).</summary>
    public double ProjWeight { get; init; } = 0.5;

    public IEnumerable<string> Validate()
    {
        if (DiscType != "patchgan") yield return $"disc_type: only 'patchgan' is ported, got '{DiscType}'";
        if (DiscLoss != "hinge") yield return $"disc_loss: only 'hinge' is ported, got '{DiscLoss}'";
        if (GenAdvLoss != "hinge") yield return $"gen_adv_loss: only 'hinge' is ported, got '{GenAdvLoss}'";
        if (Norm != "batch") yield return $"norm: only 'batch' is ported, got '{Norm}'";
        if (ReconstructionLoss is not ("l1" or "l2")) yield return $"reconstruction_loss: expected l1 or l2, got '{ReconstructionLoss}'";
        if (ResnetPerceptual) yield return "resnet_perceptual: only False is ported";
        if (BlurDs) yield return "blur_ds: only False is ported";
        if (Lecam) yield return "lecam: only False is ported";
        if (DiscDim < 1 || DiscNumLayers < 1 || Kw < 1) yield return "disc_dim, disc_num_layers and kw must be >= 1";
        if (PerceptualWeight < 0 || ReconstructionWeight < 0 || DiscWeight < 0 || ProjWeight < 0) yield return "loss weights must be >= 0";
    }
}

/// <summary>
/// ReTok's training choices (the released code has none of them; tokenizer-training.md §4-5, paper.md §1.4-1.6). The
/// defaults are our reading of the paper; <c>nested_dropout: false</c> + <c>semantic_schedule: constant</c> reproduce the
/// released GigaTok loop (K = 256 every step, constant weight).
/// </summary>
public sealed record RetokSection
{
    /// <summary>false: decode every step from K = fixed_k (256: the released loop).</summary>
    public bool NestedDropout { get; init; } = true;
    /// <summary>Redundant Token Padding: K over 1..N+M = 480 (true) or the prior variant 1..N = 256 (false).</summary>
    public bool UsePadding { get; init; } = true;
    /// <summary>uniform (1..N+M), clamp_to_n (uniform, then min(K, N)), powers_of_two, fixed.</summary>
    public KDistribution KDistribution { get; init; } = KDistribution.Uniform;
    /// <summary>Mixture weight p: with probability p a sample decodes K = N (the inference setting); 0 = the law alone.</summary>
    public double KEqualsNProb { get; init; }
    public int MinTokens { get; init; } = 1;
    /// <summary>One K per image (key-padding mask) or one per batch (slicing).</summary>
    public bool PerSample { get; init; } = true;
    /// <summary>Null = N (256 in the paper's configs).</summary>
    public int? FixedK { get; init; }

    /// <summary>lambda(K), non-increasing in K (Hierarchical Semantic Regularization).</summary>
    public LambdaSchedule SemanticSchedule { get; init; } = LambdaSchedule.Linear;
    /// <summary>lambda at K &lt;= semantic_k_start; null = loss.params.proj_weight (0.5). 0 (with a constant schedule) turns the teacher off.</summary>
    public double? SemanticWeight { get; init; }
    public double SemanticWeightEnd { get; init; }
    /// <summary>lambda(K) = max(floor, schedule): a floor > 0 regularizes every K, K = N included (default 0).</summary>
    public double SemanticWeightFloor { get; init; }
    public int SemanticKStart { get; init; } = 1;
    public int SemanticKEnd { get; init; } = 256;
    public int SemanticStepK { get; init; } = 128;
    /// <summary>per_sample_k: lambda(K) = w(K); per_position: token position k weighs w(k) and a prefix of K tokens gets
    /// lambda(K) = (1/K) sum_{k&lt;=K} w(k) (w = the schedule above, floor included).</summary>
    public SemanticWeighting SemanticWeighting { get; init; } = SemanticWeighting.PerSampleK;
    /// <summary>P extra prefixes per image, drawn from the K law, decoded from the same tokens for the semantic term only;
    /// the term is the mean over the 1 + P prefixes. 0 = only the sampled K.</summary>
    public int SemanticPrefixes { get; init; }
    /// <summary>Fixed extra prefix lengths instead of draws (P = their count); null = semantic_prefixes.</summary>
    public int[]? SemanticPrefixKs { get; init; }

    /// <summary>Most extra semantic prefixes a step decodes.</summary>
    public const int MaxSemanticPrefixes = 16;

    /// <summary>Whether extra semantic prefixes are asked for (they need the semantic loss on).</summary>
    public bool MultiPrefix() => SemanticPrefixes != 0 || SemanticPrefixKs is not null;

    /// <summary>Teacher size override for small test teachers (embed_dim/depth/num_heads); null = trainer.distill_model's.</summary>
    public TeacherArch? Teacher { get; init; }

    /// <summary>Decoder fine-tuning; trainer.freeze_but_decoder_iter is the reference spelling of start_step.</summary>
    public FinetuneSection? Finetune { get; init; }

    public IEnumerable<string> Validate(TokenizerConfig? cfg)
    {
        int total = cfg?.TotalTokens ?? 480, n = cfg?.NumLatentTokens ?? 256;
        int max = UsePadding ? total : n;
        if (MinTokens < 1 || MinTokens > max) yield return $"min_tokens: must be in 1..{max}, got {MinTokens}";
        if (FixedK is < 1 || FixedK > total) yield return $"fixed_k: must be in 1..{total}, got {FixedK}";
        if (!(KEqualsNProb >= 0 && KEqualsNProb <= 1)) yield return $"k_equals_n_prob: must be in [0, 1], got {KEqualsNProb}";
        if (SemanticWeight is < 0 || SemanticWeightEnd < 0) yield return "semantic_weight/semantic_weight_end: must be >= 0";
        if (!(SemanticWeightFloor >= 0)) yield return $"semantic_weight_floor: must be >= 0, got {SemanticWeightFloor}";
        if (SemanticSchedule is LambdaSchedule.Linear or LambdaSchedule.Cosine && SemanticKEnd <= SemanticKStart)
            yield return $"semantic_k_end ({SemanticKEnd}) must exceed semantic_k_start ({SemanticKStart})";
        if (SemanticPrefixes is < 0 or > MaxSemanticPrefixes)
            yield return $"semantic_prefixes: must be in 0..{MaxSemanticPrefixes} (each costs one more ViT-decoder pass), got {SemanticPrefixes}";
        if (SemanticPrefixKs is { } ks)
        {
            if (SemanticPrefixes != 0) yield return "semantic_prefix_ks: give either semantic_prefixes (drawn K) or semantic_prefix_ks (fixed K), not both";
            if (ks.Length is 0 or > MaxSemanticPrefixes) yield return $"semantic_prefix_ks: give 1..{MaxSemanticPrefixes} prefix lengths (or leave it out), got {ks.Length}";
            foreach (var k in ks.Where(k => k < 1 || k > total)) yield return $"semantic_prefix_ks: {k} is outside 1..{total}";
        }
        if (Teacher is { } t && (t.EmbedDim < 1 || t.Depth < 1 || t.NumHeads < 1 || t.EmbedDim % t.NumHeads != 0))
            yield return $"teacher: embed_dim {t.EmbedDim} must be a positive multiple of num_heads {t.NumHeads}, depth >= 1";
        if (Finetune is { } f)
            foreach (var e in f.Validate(total)) yield return "finetune." + e;
    }
}

public sealed record TeacherArch
{
    public int EmbedDim { get; init; } = 768;
    public int Depth { get; init; } = 12;
    public int NumHeads { get; init; } = 12;
    public int PatchSize { get; init; } = 14;
}

public sealed record FinetuneSection
{
    /// <summary>0-based iteration from which only the trainable prefixes train (0 with an `init` tokenizer = a separate stage).</summary>
    public long StartStep { get; init; }
    /// <summary>Parameter-name prefixes that keep training; default the CNN pixel decoder (GigaTok's freeze_but_2d_decoder).</summary>
    public string[] TrainablePrefixes { get; init; } = ["decoder."];
    public bool TeacherOff { get; init; } = true;
    public bool KeepNestedDropout { get; init; } = true;
    /// <summary>Null = N.</summary>
    public int? FixedK { get; init; }

    public IEnumerable<string> Validate(int total)
    {
        if (StartStep < 0) yield return $"start_step: must be >= 0, got {StartStep}";
        if (TrainablePrefixes.Length == 0) yield return "trainable_prefixes: give at least one prefix";
        if (FixedK is < 1 || FixedK > total) yield return $"fixed_k: must be in 1..{total}, got {FixedK}";
    }
}

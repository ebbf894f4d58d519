// Training pieces of ReTok's autoregressive/train/train_c2i.py: AdamW param groups, the WSD schedule
// (tokenizer/tokenizer_image/scheduler.py wsd_lr), one optimisation step, and the ten-crop code extraction of
// autoregressive/train/extract_codes_c2i.py as a pure function over images.
using ReTok.Models.Distributed;
using ReTok.Models.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ReTok.Models.Generation;

/// <summary>train_c2i.py defaults as run by train_c2i_and_eval.sh (generator.md 6.1).</summary>
public sealed record GptTrainOptions(
    double Lr = 1e-4,
    double WeightDecay = 0.05,
    double Beta1 = 0.9,
    double Beta2 = 0.95,
    double Eps = 1e-8,
    double MaxGradNorm = 1.0,
    long WarmupSteps = 5000,
    long TotalSteps = 1_500_000,
    double FractDecay = 0.2,
    string DecayType = "sqrt",
    ScalarType? AutocastDtype = null,
    int GradAccumSteps = 1,
    double? EmaDecay = null)
{
    /// <summary>bf16 compute on CUDA (the argparse default precision), fp32 on CPU.</summary>
    public static GptTrainOptions ForDevice(Device d) => new(AutocastDtype: d.type == DeviceType.CUDA ? ScalarType.BFloat16 : null);

    public WsdSchedule Schedule => new(Lr, WarmupSteps, TotalSteps, FractDecay, DecayType);
}

/// <summary>
/// wsd_lr of scheduler.py:59-125: warmup from base/100 (init_div_factor) to base over warmup steps, hold, then decay over
/// the last fract_decay of the steps ("sqrt" in the release: base * max(1 - sqrt((t - hold)/anneal), 0)).
/// </summary>
public sealed record WsdSchedule(double BaseLr, long WarmupSteps, long TotalSteps, double FractDecay = 0.2, string DecayType = "sqrt",
    double FinalLrFactor = 0.0, double InitDivFactor = 100)
{
    public long AnnealSteps => (long)(FractDecay * TotalSteps);
    public long HoldUntil => TotalSteps - AnnealSteps;

    public double LrAt(long step)
    {
        if (step < WarmupSteps)
        {
            double r = (double)step / WarmupSteps;
            return BaseLr * (r + (1 - r) / InitDivFactor);
        }
        if (step < HoldUntil) return BaseLr;
        double f = (double)(step - HoldUntil) / AnnealSteps;
        return DecayType switch
        {
            "sqrt" => BaseLr * (FinalLrFactor + (1 - FinalLrFactor) * Math.Max(1 - Math.Sqrt(f), 0)),
            "linear" => BaseLr * (FinalLrFactor + (1 - FinalLrFactor) * (1 - f)),
            "square" => BaseLr * (FinalLrFactor + (1 - FinalLrFactor) * Math.Max(1 - f * f, 0)),
            "cosine" => BaseLr * (FinalLrFactor + (1 - FinalLrFactor) * (1 + Math.Cos(Math.PI * f)) * 0.5),
            _ => throw new ArgumentException($"WSD decay type '{DecayType}' is not one of sqrt, linear, square, cosine"),
        };
    }
}

/// <summary>Result of one optimisation step. GradNorm is the total norm before clipping; Lr the rate this update used.</summary>
public readonly record struct GptStepResult(long Step, float Loss, double GradNorm, double Lr);

public static class GptTraining
{
    /// <summary>
    /// creat_optimizer of train_c2i.py:54-76: AdamW, weight decay on every parameter with dim >= 2 (linears, both
    /// embedding tables and positional_embedding), none on 1-D ones (RMSNorm weights).
    /// </summary>
    public static AdamW CreateOptimizer(Gpt model, GptTrainOptions o)
    {
        var ps = model.parameters().Where(p => p.requires_grad).ToList();
        var groups = new[]
        {
            new AdamW.ParamGroup(ps.Where(p => p.dim() >= 2), o.Lr, o.Beta1, o.Beta2, o.Eps, o.WeightDecay),
            new AdamW.ParamGroup(ps.Where(p => p.dim() < 2), o.Lr, o.Beta1, o.Beta2, o.Eps, 0.0),
        };
        return optim.AdamW(groups, o.Lr, o.Beta1, o.Beta2, o.Eps, o.WeightDecay);
    }

    public static void SetLr(optim.Optimizer opt, double lr)
    {
        foreach (var g in opt.ParamGroups) g.LearningRate = lr;
    }
}

/// <summary>
/// The per-step body of train_c2i.py:469-523: forward on (labels, codes[:, :-1]) with targets codes, backward, clip to
/// MaxGradNorm, AdamW step, then set the lr for the next step from the schedule at the current step count (so the first
/// update runs at the construction lr, update k >= 2 at lr(k-2), as the reference), zero grads, step += 1.
/// Class dropout, token dropout and the residual/FFN dropouts come from the model's config in training mode.
/// With <see cref="GptTrainOptions.GradAccumSteps"/> = n the batch runs as n equal micro-batches, each loss scaled by 1/n,
/// so clip and update see the full-batch mean gradient (peak activation memory of one micro-batch); the reported loss
/// is the mean of the micro-batch losses, i.e. the full-batch mean. Dropout draws then come per micro-batch.
/// Data parallel (<see cref="Comm"/> with N ranks): each replica gets its slice of the global batch
/// (<see cref="DataParallel.Slice"/>); after backward the gradients are averaged over ranks, so clipping sees the global
/// norm and every rank takes the same AdamW step; the reported loss is the mean over ranks (the global-batch mean).
/// </summary>
public sealed class GptTrainer : IDisposable
{
    public Gpt Model { get; }
    public AdamW Optimizer { get; }
    public GptTrainOptions Options { get; }
    public WsdSchedule Schedule { get; }
    public long Step { get; private set; }
    /// <summary>EMA of the parameters (utils/ema.py, updated after every optimizer step) when <see cref="GptTrainOptions.EmaDecay"/> is set.</summary>
    public Ema? Ema { get; }
    /// <summary>This replica's communicator when training data parallel, else null.</summary>
    public ICommunicator? Comm { get; }

    public GptTrainer(Gpt model, GptTrainOptions options, long startStep = 0, ICommunicator? comm = null)
    {
        Comm = comm;
        if (comm is not null) DataParallel.BroadcastState(model, comm); // every replica starts from rank 0's weights
        Model = model;
        Options = options;
        Schedule = options.Schedule;
        Optimizer = GptTraining.CreateOptimizer(model, options);
        if (options.EmaDecay is double d) Ema = new Ema(model.named_parameters(), d); // exact copy at start (train_c2i.py:318-321)
        Step = startStep;
        model.AutocastDtype = options.AutocastDtype;
        if (startStep > 0) GptTraining.SetLr(Optimizer, Schedule.LrAt(startStep - 1)); // what the reference set after step startStep-1
    }

    /// <summary>codes (B,T) int64 in [0,V), T <= block_size; labels (B,) in [0, num_classes). Data parallel: this rank's slice.</summary>
    public GptStepResult TrainStep(Tensor codes, Tensor labels)
    {
        var c = Model.Config;
        if (codes.dim() != 2 || labels.dim() != 1 || codes.shape[0] != labels.shape[0])
            throw new ArgumentException($"expected codes (B,T) and labels (B,), got [{string.Join(",", codes.shape)}] and [{string.Join(",", labels.shape)}]");
        if (codes.shape[1] > c.BlockSize)
            throw new ArgumentException($"codes have {codes.shape[1]} tokens per image but block_size is {c.BlockSize} (take the first {c.BlockSize} of the tokenizer's indices)");
        var device = Model.tok_embeddings.weight!.device;
        double lr = Optimizer.ParamGroups.First().LearningRate;
        using var scope = NewDisposeScope();
        Model.train();
        var z = codes.to(int64).to(device);
        var y = labels.to(int64).to(device);
        var acc = new GradAccumulation(Options.GradAccumSteps);
        if (z.shape[0] % acc.Steps != 0)
            throw new ArgumentException($"grad_accum_steps: a batch of {z.shape[0]} does not split into {acc.Steps} equal micro-batches");
        var zs = acc.Split(z);
        var ys = acc.Split(y);
        double lossSum = 0;
        for (int i = 0; i < zs.Count; i++)
        {
            using var micro = NewDisposeScope(); // frees this micro-batch's graph before the next forward
            var (_, l) = Model.forward(zs[i].narrow(1, 0, zs[i].shape[1] - 1), ys[i], targets: zs[i]);
            (acc.Steps == 1 ? l! : l! * acc.LossScale).backward();
            lossSum += l!.item<float>();
        }
        double meanLoss = lossSum / acc.Steps;
        if (Comm is { WorldSize: > 1 } comm)
        {
            DataParallel.AverageGradients(Model.parameters().ToList(), comm);
            meanLoss = DataParallel.Mean(comm, device, meanLoss)[0];
        }
        float loss = (float)meanLoss;
        double norm = Options.MaxGradNorm > 0 ? nn.utils.clip_grad_norm_(Model.parameters(), Options.MaxGradNorm) : double.NaN;
        Optimizer.step();
        Ema?.Update(Model.named_parameters());
        GptTraining.SetLr(Optimizer, Schedule.LrAt(Step));
        Optimizer.zero_grad();
        var result = new GptStepResult(Step, loss, norm, lr);
        Step++;
        return result;
    }

    /// <summary>Teacher-forced mean cross-entropy in eval mode (val_loss_cal.py), no dropout of any kind.</summary>
    public static float EvalLoss(Gpt model, Tensor codes, Tensor labels)
    {
        bool was = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            var device = model.tok_embeddings.weight!.device;
            var z = codes.to(int64).to(device);
            var (_, loss) = model.forward(z.narrow(1, 0, z.shape[1] - 1), labels.to(int64).to(device), targets: z);
            return loss!.item<float>();
        }
        finally { model.train(was); }
    }

    public void Dispose()
    {
        Optimizer.Dispose();
        Ema?.Dispose();
    }
}

/// <summary>
/// Code extraction augmentation of extract_codes_c2i.py:84-143 as pure functions. The input is the ADM
/// center_crop_arr output (crop_size = int(256 * crop_range), 281 for the scripted --crop-range 1.1), uint8.
/// </summary>
public static class CodeExtraction
{
    /// <summary>
    /// torchvision TenCrop(size): top-left, top-right, bottom-left, bottom-right, center of the image, then the same five
    /// of its horizontal flip. images uint8 (B,H,W,3) or (B,3,H,W) -> float (B,10,3,size,size) normalised to [-1,1]
    /// (ToTensor then Normalize(0.5, 0.5)).
    /// </summary>
    public static Tensor TenCrop(Tensor images, int size = 256)
    {
        var x = ToNchw(images);
        long h = x.shape[2], w = x.shape[3];
        if (h < size || w < size) throw new ArgumentException($"ten-crop of {size} needs images at least {size}x{size}, got {h}x{w}");
        var crops = new List<Tensor>(10);
        foreach (var img in new[] { x, x.flip(3) })
        {
            long ct = (long)Math.Round((h - size) / 2.0, MidpointRounding.ToEven), cl = (long)Math.Round((w - size) / 2.0, MidpointRounding.ToEven);
            foreach (var (top, left) in new[] { (0L, 0L), (0L, w - size), (h - size, 0L), (h - size, w - size), (ct, cl) })
                crops.Add(img.narrow(2, top, size).narrow(3, left, size));
        }
        return Normalize(stack(crops, 1));
    }

    /// <summary>The non-ten-crop path: center crop + its flip, (B,2,3,size,size), paired per image (the reference's reshape mixes images for B > 1; generator.md 5).</summary>
    public static Tensor CenterAndFlip(Tensor images, int size = 256)
    {
        var x = ToNchw(images);
        long h = x.shape[2], w = x.shape[3];
        if (h < size || w < size) throw new ArgumentException($"center crop of {size} needs images at least {size}x{size}, got {h}x{w}");
        var c = x.narrow(2, (h - size) / 2, size).narrow(3, (w - size) / 2, size);
        return Normalize(stack(new[] { c, c.flip(3) }, 1));
    }

    /// <summary>
    /// Encode every augmented view with <paramref name="encode"/> ((N,3,S,S) in [-1,1] -> indices (N, L) or any shape with
    /// N*L elements) and keep the first <paramref name="keep"/> codes of each (the snapshot encoder emits 480, the GPT models
    /// 256: generator.md 5). Returns int64 (B, 10, keep) for ten-crop, (B, 2, keep) otherwise.
    /// </summary>
    public static Tensor ExtractCodes(Tensor images, Func<Tensor, Tensor> encode, bool tenCrop = true, int size = 256, int keep = 256)
    {
        using var _ = no_grad();
        var views = tenCrop ? TenCrop(images, size) : CenterAndFlip(images, size);
        long b = views.shape[0], n = views.shape[1];
        var idx = encode(views.flatten(0, 1)).reshape(b, n, -1);
        if (idx.shape[2] < keep) throw new ArgumentException($"the encoder returned {idx.shape[2]} codes per image, fewer than the {keep} to keep");
        return idx.narrow(2, 0, keep).to(int64).contiguous();
    }

    private static Tensor ToNchw(Tensor images)
    {
        if (images.dtype != ScalarType.Byte) throw new ArgumentException($"images must be uint8, got {images.dtype}");
        if (images.dim() == 3) images = images.unsqueeze(0);
        if (images.dim() != 4) throw new ArgumentException($"images must be (B,H,W,3) or (B,3,H,W), got [{string.Join(",", images.shape)}]");
        if (images.shape[1] == 3 && images.shape[3] != 3) return images;
        if (images.shape[3] == 3) return images.permute(0, 3, 1, 2);
        throw new ArgumentException($"images must have 3 channels, got [{string.Join(",", images.shape)}]");
    }

    private static Tensor Normalize(Tensor u8) => (u8.to_type(float32) / 255f - 0.5f) / 0.5f;
}

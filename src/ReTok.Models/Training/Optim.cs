using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ReTok.Models.Training;

/// <summary>
/// torch.optim.AdamW (single-tensor path, amsgrad off) with the one property the trainer relies on and TorchSharp's
/// built-in optimizer lacks: parameters whose grad is null are skipped entirely (no moment update, no weight decay),
/// as in PyTorch where zero_grad() sets grads to None. That matters for the decoder's padding positional embedding,
/// frozen modules in decoder fine-tuning, and K-dependent parameters under nested dropout.
/// Per-parameter step counts (bias correction) as PyTorch keeps them. State is addressable by parameter name.
/// </summary>
public sealed class NamedAdamW
{
    private sealed class Slot
    {
        public long Step;
        public Tensor? ExpAvg, ExpAvgSq;
    }

    private readonly List<(string Name, Parameter Param)> parameters;
    private readonly Dictionary<string, Slot> state = new();
    public double LearningRate { get; set; }
    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public double WeightDecay { get; }

    public NamedAdamW(IEnumerable<(string Name, Parameter Param)> parameters, double lr = 1e-4, double beta1 = 0.9,
        double beta2 = 0.95, double eps = 1e-8, double weightDecay = 1e-4)
    {
        this.parameters = parameters.ToList();
        var dup = this.parameters.GroupBy(p => p.Name).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new ArgumentException($"AdamW: parameter name '{dup.Key}' appears twice");
        (LearningRate, Beta1, Beta2, Eps, WeightDecay) = (lr, beta1, beta2, eps, weightDecay);
    }

    public IReadOnlyList<(string Name, Parameter Param)> Parameters => parameters;

    /// <summary>zero_grad(set_to_none=True).</summary>
    public void ZeroGrad()
    {
        foreach (var (_, p) in parameters)
        {
            var g = p.grad;
            if (g is null) continue;
            p.grad = null;
            g.Dispose();
        }
    }

    public void Step()
    {
        using var _ = no_grad();
        double lr = LearningRate;
        foreach (var (name, p) in parameters)
        {
            var grad = p.grad;
            if (grad is null) continue;
            if (!state.TryGetValue(name, out var s))
            {
                s = new Slot { ExpAvg = zeros_like(p).DetachFromDisposeScope(), ExpAvgSq = zeros_like(p).DetachFromDisposeScope() };
                state[name] = s;
            }
            s.Step += 1;
            p.mul_(1 - lr * WeightDecay);
            s.ExpAvg!.mul_(Beta1).add_(grad, alpha: 1 - Beta1);   // PyTorch 2.x writes lerp_: same value up to rounding
            s.ExpAvgSq!.mul_(Beta2).addcmul_(grad, grad, 1 - Beta2);
            double bc1 = 1 - Math.Pow(Beta1, s.Step);
            double bc2Sqrt = Math.Sqrt(1 - Math.Pow(Beta2, s.Step));
            using var denom = (s.ExpAvgSq.sqrt() / bc2Sqrt).add_(Eps);
            p.addcdiv_(s.ExpAvg, denom, -(lr / bc1));
        }
    }

    /// <summary>Tensors "{name}.exp_avg", "{name}.exp_avg_sq", "{name}.step" (int64 scalar), plus "__lr__" (float64).</summary>
    public Dictionary<string, Tensor> StateDict()
    {
        var d = new Dictionary<string, Tensor> { ["__lr__"] = tensor(LearningRate, float64) };
        foreach (var (name, s) in state)
        {
            d[$"{name}.exp_avg"] = s.ExpAvg!.detach().clone().cpu();
            d[$"{name}.exp_avg_sq"] = s.ExpAvgSq!.detach().clone().cpu();
            d[$"{name}.step"] = tensor(s.Step, int64);
        }
        return d;
    }

    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> d, string source = "optimizer state")
    {
        if (!d.TryGetValue("__lr__", out var lr)) throw new InvalidDataException($"{source}: missing '__lr__'");
        LearningRate = lr.to(float64).item<double>();
        var byName = parameters.ToDictionary(p => p.Name, p => p.Param);
        foreach (var s in state.Values) { s.ExpAvg?.Dispose(); s.ExpAvgSq?.Dispose(); }
        state.Clear();
        foreach (var key in d.Keys.Where(k => k.EndsWith(".step")))
        {
            var name = key[..^".step".Length];
            if (!byName.TryGetValue(name, out var p)) throw new InvalidDataException($"{source}: state for unknown parameter '{name}'");
            Tensor Get(string suffix)
            {
                if (!d.TryGetValue(name + suffix, out var t)) throw new InvalidDataException($"{source}: missing '{name}{suffix}'");
                if (!t.shape.SequenceEqual(p.shape)) throw new InvalidDataException($"{source}: '{name}{suffix}' has shape [{string.Join(",", t.shape)}], parameter has [{string.Join(",", p.shape)}]");
                return t.to(p.dtype).to(p.device).clone().DetachFromDisposeScope();
            }
            state[name] = new Slot { Step = d[key].to(int64).item<long>(), ExpAvg = Get(".exp_avg"), ExpAvgSq = Get(".exp_avg_sq") };
        }
    }
}

/// <summary>tokenizer/tokenizer_image/scheduler.py learning-rate functions (stateless functions of the step).</summary>
public static class LrSchedule
{
    /// <summary>cosine_schedule_with_warmup_v2: linear warm-up from base/initDiv to base, then a half cosine to end_lr at
    /// <paramref name="steps"/>, end_lr afterwards. The trainer applies it after each optimizer step with the
    /// pre-increment iteration index (one-step lag, as vq_train.py).</summary>
    public static double CosineWithWarmup(long step, double baseLr, long warmup, long steps, double endLr,
        double numCycles = 0.5, double initDivFactor = 100)
    {
        if (step < warmup)
        {
            double r = (double)step / warmup;
            return baseLr * (r + (1 - r) / initDivFactor);
        }
        if (step >= steps) return endLr;
        double progress = (double)(step - warmup) / (steps - warmup);
        return endLr + 0.5 * (baseLr - endLr) * (1 + Math.Cos(Math.PI * numCycles * 2.0 * progress));
    }
}

public static class GradClip
{
    /// <summary>torch.nn.utils.clip_grad_norm_ (norm type 2): total = ||(||g_i||)_i||, every grad multiplied by
    /// min(1, max/(total + 1e-6)). Parameters without grad are ignored. Returns the pre-clip total norm (may be
    /// NaN/inf; the caller decides).</summary>
    public static double ClipGradNorm(IEnumerable<Parameter> parameters, double maxNorm)
    {
        using var _ = no_grad();
        var grads = parameters.Select(p => p.grad).Where(g => g is not null).Select(g => g!).ToList();
        if (grads.Count == 0) return 0.0;
        using var scope = NewDisposeScope();
        var total = stack(grads.Select(g => g.norm()).ToArray()).norm();
        var coef = (maxNorm / (total + 1e-6)).clamp_max(1.0);
        foreach (var g in grads) g.mul_(coef.to(g.dtype).to(g.device));
        return total.to(float64).item<double>();
    }
}

/// <summary>
/// utils/ema.py: p_ema = decay*p_ema + (1-decay)*p over named_parameters() (buffers are not averaged), initialised as an
/// exact copy. Kept as named tensors rather than a model copy; <see cref="CopyTo"/> loads them into a model for
/// evaluation, <see cref="StateDict"/> is what a checkpoint's "ema" entry holds (parameters only).
/// </summary>
public sealed class Ema : IDisposable
{
    private readonly Dictionary<string, Tensor> shadow = new();
    public double Decay { get; }

    public Ema(IEnumerable<(string Name, Parameter Param)> parameters, double decay = 0.9999)
    {
        Decay = decay;
        using var _ = no_grad();
        foreach (var (n, p) in parameters) shadow[n] = p.detach().clone().DetachFromDisposeScope();
    }

    public void Update(IEnumerable<(string Name, Parameter Param)> parameters)
    {
        using var _ = no_grad();
        foreach (var (n, p) in parameters)
        {
            if (!shadow.TryGetValue(n, out var e)) throw new InvalidOperationException($"EMA has no entry for parameter '{n}'");
            e.mul_(Decay).add_(p.detach(), alpha: 1 - Decay);
        }
    }

    public Dictionary<string, Tensor> StateDict() => shadow.ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone().cpu());

    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> d, string source = "ema state")
    {
        using var _ = no_grad();
        foreach (var (n, e) in shadow)
        {
            if (!d.TryGetValue(n, out var t)) throw new InvalidDataException($"{source}: missing '{n}'");
            if (!t.shape.SequenceEqual(e.shape)) throw new InvalidDataException($"{source}: '{n}' has shape [{string.Join(",", t.shape)}], expected [{string.Join(",", e.shape)}]");
            e.copy_(t);
        }
    }

    /// <summary>Overwrite the model's parameters with the EMA values (e.g. on an evaluation copy).</summary>
    public void CopyTo(IEnumerable<(string Name, Parameter Param)> parameters)
    {
        using var _ = no_grad();
        foreach (var (n, p) in parameters) p.copy_(shadow[n]);
    }

    public void Dispose()
    {
        foreach (var t in shadow.Values) t.Dispose();
        shadow.Clear();
    }
}

/// <summary>Gradient accumulation over micro-batches (the reference parses --gradient-accumulation-steps but never uses
/// it; 1 reproduces it). Each micro-batch loss is scaled by 1/steps so the summed gradient equals the full-batch mean;
/// BatchNorm statistics of the discriminator then come from micro-batches (document when used).</summary>
public sealed record GradAccumulation(int Steps = 1)
{
    public double LossScale => 1.0 / Steps;

    public IReadOnlyList<Tensor> Split(Tensor batch)
    {
        if (Steps < 1) throw new ArgumentException($"gradient accumulation steps must be >= 1, got {Steps}");
        if (batch.shape[0] % Steps != 0)
            throw new ArgumentException($"batch of {batch.shape[0]} is not divisible into {Steps} micro-batches");
        return Steps == 1 ? new[] { batch } : batch.chunk(Steps, 0);
    }
}

/// <summary>
/// Mixed-precision setting of a trainer (TorchSharp has no autocast): trainable weights and optimizer state stay float32;
/// the forward runs under <see cref="Amp"/> with <see cref="Compute"/> (linear/conv/bmm in bf16, norms, softmax and losses
/// in fp32); a frozen network (the teacher) may be cast once to the compute dtype. "auto" = bfloat16 on CUDA (the
/// trainer's own default, vq_train.py --mixed-precision bf16), float32 on CPU; bf16 is honoured on the CPU too.
/// </summary>
public sealed record Precision(ScalarType Compute)
{
    public static Precision Resolve(string request, Device device) => request.Trim().ToLowerInvariant() switch
    {
        "auto" => new(device.type == DeviceType.CUDA ? ScalarType.BFloat16 : ScalarType.Float32),
        "fp32" or "none" or "float32" => new(ScalarType.Float32),
        "bf16" or "bfloat16" => new(ScalarType.BFloat16),
        "fp16" or "float16" => device.type == DeviceType.CUDA
            ? new(ScalarType.Float16)
            : throw new ArgumentException("fp16 compute is CUDA-only here (no GradScaler); use fp32 or bf16 on CPU"),
        _ => throw new ArgumentException($"unknown precision '{request}': expected auto, fp32, bf16 or fp16"),
    };

    public bool IsFloat32 => Compute == ScalarType.Float32;

    /// <summary>Cast a floating tensor to the compute dtype (no-op for fp32 or non-floating tensors).</summary>
    public Tensor In(Tensor x) => IsFloat32 || !x.is_floating_point() || x.dtype == Compute ? x : x.to(Compute);

    /// <summary>Back to float32 for losses and logging.</summary>
    public static Tensor Out(Tensor x) => x.dtype == ScalarType.Float32 || !x.is_floating_point() ? x : x.to(ScalarType.Float32);

    /// <summary>Cast a frozen module to the compute dtype (the teacher; the reference runs it in fp16 autocast).</summary>
    public T CastFrozen<T>(T module) where T : torch.nn.Module
    {
        if (!IsFloat32) module.to(Compute);
        return module;
    }
}

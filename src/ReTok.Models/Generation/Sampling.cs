// Port of ReTok's autoregressive/models/generate.py (c2i path): CFG with the doubled batch [cond; null], the per-token
// CFG schedules, temperature / top-k / top-p (HF v3.2 filtering) and multinomial sampling, with a KV cache.
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Models.Generation;

/// <summary>
/// Sampling settings of generate.py / sample_c2i_cfg_search.py. Defaults are the README release run except CfgScale
/// (release: 1.5 with the step schedule, window start 0.18).
/// </summary>
public sealed record SamplingOptions(
    double CfgScale = 1.0,
    string CfgSchedule = "constant",
    double? WindowStart = null,
    double WindowEnd = 1.0,
    int CfgInterval = -1,
    double Temperature = 1.0,
    int TopK = 0,
    double TopP = 1.0,
    bool SampleLogits = true,
    bool InverseCdf = false)
{
    /// <summary>README release setting for GPT_XL256_e300_VQ_SB.pt.</summary>
    public static SamplingOptions Release => new(CfgScale: 1.5, CfgSchedule: "step", WindowStart: 0.18);

    public SamplingOptions Validate()
    {
        CfgSchedules.Check(CfgSchedule);
        if (TopK < 0) throw new ArgumentException($"top-k must be >= 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1], got {TopP}");
        if (Temperature < 0 || double.IsNaN(Temperature)) throw new ArgumentException($"temperature must be >= 0, got {Temperature}");
        if (WindowStart is double ws && (ws < 0 || ws > 1)) throw new ArgumentException($"cfg window start must be in [0, 1], got {ws}");
        return this;
    }

    /// <summary>The window start a schedule uses: the sampler's --step-start-ratio default 0.18 for step, rectangular_schedule's 0.05.</summary>
    public double EffectiveWindowStart => WindowStart ?? (CfgSchedule == "rectangular" ? 0.05 : 0.18);
}

/// <summary>The CFG schedules of generate.py:116-148, exactly (including the functional +1e-4 offsets).</summary>
public static class CfgSchedules
{
    /// <summary>Schedules that run in the reference. "cosine" (math not imported) and "sigmoid" (not implemented) crash there.</summary>
    public static readonly IReadOnlyList<string> Names = new[] { "constant", "linear", "linear_re", "triangular", "rectangular", "step" };

    public static void Check(string name)
    {
        if (name is "cosine" or "sigmoid")
            throw new ArgumentException($"cfg schedule '{name}' is broken in the reference generate.py (cosine: NameError on math; sigmoid: not implemented); use one of {string.Join(", ", Names)}");
        if (!Names.Contains(name)) throw new ArgumentException($"unknown cfg schedule '{name}': expected one of {string.Join(", ", Names)}");
    }

    /// <summary>Guidance scale at ratio r = (i+1)/(K-1) for decode step i (image token i+1). Token 0 always uses s (prefill).</summary>
    public static double ScaleAt(string name, double ratio, double s, double windowStart = 0.18, double windowEnd = 1.0) => name switch
    {
        "constant" => s,
        "linear" => 1.0 + (s - 1.0) * ratio + 1e-4,
        "linear_re" => 1.0 + (s - 1.0) * (1.0 - ratio) + 1e-4,
        "triangular" => ratio < 0.5 ? 1.0 + (s - 1.0) * (ratio / 0.5) + 1e-4 : 1.0 + (s - 1.0) * ((1.0 - ratio) / (1.0 - 0.5)) + 1e-4,
        "rectangular" => windowStart <= ratio && ratio <= windowEnd ? s : 1.0 + 1e-4,
        "step" => s == 1.0 ? s : windowStart <= ratio ? s : 1.0 + 1e-4,
        _ => throw new ArgumentException($"unknown cfg schedule '{name}': expected one of {string.Join(", ", Names)}"),
    };

    /// <summary>Per-token scales for K generated tokens: [0] is the prefill (raw s), [t] for t >= 1 the schedule at (t)/(K-1).</summary>
    public static double[] PerToken(SamplingOptions o, int k)
    {
        var r = new double[k];
        if (k > 0) r[0] = o.CfgScale;
        for (int i = 0; i < k - 1; i++)
            r[i + 1] = ScaleAt(o.CfgSchedule, 1.0 * (i + 1) / (k - 1), o.CfgScale, o.EffectiveWindowStart, o.WindowEnd);
        return r;
    }
}

public static class Sampling
{
    /// <summary>top_k_top_p_filtering of generate.py:19-57 (HF v3.2) on (B,V) logits; returns a filtered copy (-inf where removed).</summary>
    public static Tensor TopKTopPFilter(Tensor logits, int topK = 0, double topP = 1.0)
    {
        if (topK > 0)
        {
            int k = (int)Math.Min(Math.Max(topK, 1), logits.shape[^1]);
            var kth = logits.topk(k).values.narrow(-1, k - 1, 1);
            logits = logits.masked_fill(logits < kth, double.NegativeInfinity);
        }
        if (topP < 1.0)
        {
            var (sorted, order) = logits.sort(-1, descending: true);
            var remove = F.softmax(sorted, -1).cumsum(-1) > topP;
            // shift right so the first token above the threshold is kept; the top-1 is always kept
            remove = cat(new[] { zeros_like(remove.narrow(-1, 0, 1)), remove.narrow(-1, 0, remove.shape[^1] - 1) }, -1);
            logits = logits.masked_fill(remove.scatter(1, order, remove), double.NegativeInfinity);
        }
        return logits;
    }

    /// <summary>sample() of generate.py:60-69 on (B,V) fp32 logits -> (B,1) int64 codes. The draw is
    /// <see cref="SeededRandom.Multinomial1"/>: torch.multinomial with <paramref name="gen"/> on the CPU, inverse-CDF of
    /// CPU-drawn uniforms on other devices (TorchSharp has no CUDA generators) or when <see cref="SamplingOptions.InverseCdf"/>.</summary>
    public static Tensor SampleToken(Tensor logits, SamplingOptions o, Generator? gen = null)
    {
        var l = logits / Math.Max(o.Temperature, 1e-5);
        if (o.TopK > 0 || o.TopP < 1.0) l = TopKTopPFilter(l, o.TopK, o.TopP);
        var probs = F.softmax(l, -1);
        return o.SampleLogits ? SeededRandom.Multinomial1(probs, gen, o.InverseCdf) : probs.topk(1).indexes;
    }

    /// <summary>uncond + (cond - uncond) * s over the stacked [cond; uncond] logits (generate.py:84-85, 106-108).</summary>
    public static Tensor CombineCfg(Tensor logits, double scale)
    {
        var halves = logits.chunk(2, 0);
        return halves[1] + (halves[0] - halves[1]) * scale;
    }

    /// <summary>The conditional half of stacked [cond; uncond] logits.</summary>
    public static Tensor CondHalf(Tensor logits) => logits.chunk(2, 0)[0];

    /// <summary>
    /// generate() of generate.py:198-278 for c2i: labels (B,) -> codes (B,K) int64. K may be anything in 1..block_size
    /// (the reference scripts only use K = block_size = 256). CFG is on iff CfgScale > 1 (batch [cond; null] of 2B rows);
    /// the prefill always uses the raw scale, decode step i uses the schedule at (i+1)/(K-1). All randomness comes from
    /// <paramref name="gen"/> (the default generator when null), so a shard seeded alike reproduces bit for bit.
    /// </summary>
    public static Tensor Generate(Gpt model, Tensor labels, int numTokens, SamplingOptions o, Generator? gen = null,
        Action<int>? onToken = null)
    {
        o.Validate();
        var c = model.Config;
        if (numTokens < 1 || numTokens > c.BlockSize)
            throw new ArgumentException($"number of tokens {numTokens} must be in 1..block_size={c.BlockSize}");
        if (labels.dim() != 1) throw new ArgumentException($"labels must be 1-D (B,), got shape [{string.Join(",", labels.shape)}]");
        var device = model.tok_embeddings.weight!.device;
        labels = labels.to(int64).to(device);
        if (labels.numel() > 0 && (labels.min().item<long>() < 0 || labels.max().item<long>() >= c.ClassTableRows))
            throw new ArgumentException($"labels must be in 0..{c.ClassTableRows - 1} (the null class is {c.NumClasses})");

        bool wasTraining = model.training;
        model.eval();
        try
        {
            using var _ = no_grad();
            bool cfg = o.CfgScale > 1.0;
            long b = labels.shape[0];
            var condCombined = cfg ? cat(new[] { labels, full_like(labels, c.NumClasses) }) : labels;
            var scales = CfgSchedules.PerToken(o, numTokens);
            var result = empty(new[] { b, numTokens }, int64, device);
            using var cache = model.NewCache(condCombined.shape[0], 1 + numTokens);

            Tensor next;
            using (var scope = NewDisposeScope())
            {
                var logits = model.Prefill(condCombined, cache).select(1, 0);
                next = SampleToken(cfg ? CombineCfg(logits, scales[0]) : logits, o, gen).MoveToOuterDisposeScope();
            }
            result.narrow(1, 0, 1).copy_(next);
            onToken?.Invoke(0);
            for (int i = 0; i < numTokens - 1; i++)
            {
                using var scope = NewDisposeScope();
                bool cfgFlag = !(o.CfgInterval > -1 && i > o.CfgInterval);
                var x = cfg ? cat(new[] { next, next }) : next;
                var logits = model.Decode(x, i + 1, cache).select(1, 0);
                if (cfg) logits = cfgFlag ? CombineCfg(logits, scales[i + 1]) : CondHalf(logits);
                var tok = SampleToken(logits, o, gen);
                result.narrow(1, i + 1, 1).copy_(tok);
                next.Dispose();
                next = tok.MoveToOuterDisposeScope();
                onToken?.Invoke(i + 1);
            }
            next.Dispose();
            return result;
        }
        finally
        {
            model.train(wasTraining);
        }
    }

    /// <summary>i.i.d. uniform labels as the gFID sampler draws them (sample_c2i_cfg_search.py:292), from the given generator.</summary>
    public static Tensor RandomLabels(long n, int numClasses = 1000, Generator? gen = null, Device? device = null) =>
        SeededRandom.Randint(0, numClasses, new[] { n }, gen, device ?? CPU);

    /// <summary>Per-shard seed with the reference's per-process formula (global_seed * world_size + rank), one generator per shard.</summary>
    public static long ShardSeed(long globalSeed, int shardIndex, int shardCount) => globalSeed * shardCount + shardIndex;

    /// <summary>The generator for a shard or batch seed; a CPU generator whatever the device (see <see cref="SeededRandom"/>).</summary>
    public static Generator NewGenerator(long seed) => SeededRandom.NewGenerator(seed);
}

using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.Training;

// The ReTok method pieces the released code lacks (tokenizer-training.md §0, §4-5; paper.md §1.4-1.6). Every choice
// below is an explicit parameter; the defaults are OUR reading of the paper, stated in docs/training.md.

/// <summary>How the kept prefix length K is drawn.</summary>
public enum KDistribution
{
    /// <summary>K uniform on {MinTokens..MaxK} (default; the usual nested-dropout law).</summary>
    Uniform,
    /// <summary>K uniform over the powers of two in [MinTokens, MaxK] plus MaxK itself (FlexTok-style).</summary>
    PowersOfTwo,
    /// <summary>Always <see cref="KSamplerConfig.FixedK"/> (released ReTok training: 256, i.e. no nested dropout).</summary>
    Fixed,
    /// <summary>K uniform on {MinTokens..MaxK}, then min(K, N): the decoder never reads padding tokens (inference never
    /// supplies them), so the padding queries get no gradient; the padding only shifts mass onto K = N:
    /// P(K = N) = (MaxK - N + 1)/(MaxK - MinTokens + 1) (225/480 with padding, vs 1/480 uniform).</summary>
    ClampToN,
}

/// <summary>
/// Nested-dropout length sampling. <c>UsePadding</c> = ReTok's Redundant Token Padding range 1..N+M (N real tokens,
/// M = 224 padding tokens); false = the prior nested-dropout variant over 1..N (ablation). <c>PerSample</c>: one K per
/// image (decoded with a key-padding mask) or one K shared by the batch (decoded by slicing).
/// </summary>
public sealed record KSamplerConfig(
    int NumTokens = 256,
    int NumPadding = 224,
    bool UsePadding = true,
    KDistribution Distribution = KDistribution.Uniform,
    int MinTokens = 1,
    bool PerSample = true,
    int? FixedK = null,
    double KEqualsNProb = 0.0)
{
    public int MaxK => UsePadding ? NumTokens + NumPadding : NumTokens;

    /// <summary>K of the Fixed law: <see cref="FixedK"/>, or N when unset (the inference setting).</summary>
    public int FixedKOrN => FixedK ?? NumTokens;

    // KEqualsNProb: mixture weight p: with probability p, K = N (the inference setting) instead of a draw from the law
    // above; 0 (default) keeps the law and its random stream unchanged.

    public static KSamplerConfig Released => new(Distribution: KDistribution.Fixed, FixedK: 256);
    public static KSamplerConfig PriorNestedDropout => new(UsePadding: false);

    public void Validate()
    {
        if (NumTokens < 1 || NumPadding < 0) throw new ArgumentException($"K sampler: NumTokens {NumTokens} must be >= 1 and NumPadding {NumPadding} >= 0");
        if (MinTokens < 1 || MinTokens > MaxK) throw new ArgumentException($"K sampler: MinTokens {MinTokens} must be in [1, {MaxK}]");
        if (Distribution == KDistribution.Fixed && (FixedKOrN < 1 || FixedKOrN > NumTokens + NumPadding))
            throw new ArgumentException($"K sampler: FixedK {FixedKOrN} must be in [1, {NumTokens + NumPadding}]");
        if (!(KEqualsNProb >= 0 && KEqualsNProb <= 1)) throw new ArgumentException($"K sampler: KEqualsNProb {KEqualsNProb} must be in [0, 1]");
    }
}

public sealed class KSampler
{
    public KSamplerConfig Config { get; }
    private readonly long[] choices;

    public KSampler(KSamplerConfig config)
    {
        config.Validate();
        Config = config;
        choices = config.Distribution switch
        {
            KDistribution.PowersOfTwo => Enumerable.Range(0, 31).Select(i => 1L << i)
                .Where(k => k >= config.MinTokens && k <= config.MaxK).Append(config.MaxK).Distinct().ToArray(),
            _ => Array.Empty<long>(),
        };
    }

    /// <summary>K for each of <paramref name="batch"/> samples, int64 [B] on the CPU, drawn from <paramref name="generator"/>
    /// (a seeded CPU torch.Generator whose state the trainer checkpoints).</summary>
    public Tensor Sample(int batch, torch.Generator generator)
    {
        var c = Config;
        long n = c.PerSample ? batch : 1;
        Tensor k = c.Distribution switch
        {
            KDistribution.Uniform => randint(c.MinTokens, c.MaxK + 1, new[] { n }, dtype: int64, generator: generator),
            KDistribution.ClampToN => randint(c.MinTokens, c.MaxK + 1, new[] { n }, dtype: int64, generator: generator).clamp_max(c.NumTokens),
            KDistribution.PowersOfTwo => tensor(choices)[randint(0, choices.Length, new[] { n }, dtype: int64, generator: generator)],
            KDistribution.Fixed => full(new[] { n }, (long)c.FixedKOrN, dtype: int64),
            _ => throw new ArgumentOutOfRangeException(nameof(c.Distribution)),
        };
        if (c.KEqualsNProb > 0)
            k = where(rand(new[] { n }, dtype: float64, generator: generator).lt(c.KEqualsNProb), full(new[] { n }, (long)c.NumTokens, dtype: int64), k);
        return c.PerSample ? k : k.expand(batch).contiguous();
    }

    /// <summary>P(token position i, 1-based, is decoded) under this law: the fraction of K values >= i.</summary>
    public double KeepProbability(int position)
    {
        var c = Config;
        double baseP = c.Distribution switch
        {
            KDistribution.Uniform => Math.Clamp((double)(c.MaxK - Math.Max(position, c.MinTokens) + 1) / (c.MaxK - c.MinTokens + 1), 0, 1),
            KDistribution.ClampToN => position > c.NumTokens ? 0
                : Math.Clamp((double)(c.MaxK - Math.Max(position, c.MinTokens) + 1) / (c.MaxK - c.MinTokens + 1), 0, 1),
            KDistribution.PowersOfTwo => (double)choices.Count(k => k >= position) / choices.Length,
            _ => c.FixedKOrN >= position ? 1 : 0,
        };
        return (1 - c.KEqualsNProb) * baseP + c.KEqualsNProb * (c.NumTokens >= position ? 1 : 0);
    }

    /// <summary>P(K = k) under this law (mixture included); sums to 1 over 1..N+M.</summary>
    public double Probability(int k)
    {
        var c = Config;
        int span = c.MaxK - c.MinTokens + 1;
        double baseP = c.Distribution switch
        {
            KDistribution.Uniform => k >= c.MinTokens && k <= c.MaxK ? 1.0 / span : 0,
            KDistribution.ClampToN => k < c.MinTokens || k > c.NumTokens ? 0
                : k < c.NumTokens ? 1.0 / span : (double)(c.MaxK - Math.Max(c.NumTokens, c.MinTokens) + 1) / span,
            KDistribution.PowersOfTwo => choices.Contains(k) ? 1.0 / choices.Length : 0,
            _ => k == c.FixedKOrN ? 1 : 0,
        };
        return (1 - c.KEqualsNProb) * baseP + (k == c.NumTokens ? c.KEqualsNProb : 0);
    }
}

/// <summary>How a decoder should consume per-sample K: attend to the first <see cref="NumTokens"/> tokens (slice
/// <c>num_tokens</c>), and, when K differs within the batch, ignore positions where <see cref="KeyPaddingMask"/> is true
/// (PyTorch key_padding_mask convention; shape [B, NumTokens]). Slicing and masking are equivalent (tokenizer.md §6.2).</summary>
public sealed record DecodePlan(int NumTokens, Tensor? KeyPaddingMask);

public static class NestedDropout
{
    /// <summary>[B, length] bool, true where position &lt; k_b (token kept).</summary>
    public static Tensor KeepMask(Tensor k, int length, Device? device = null)
    {
        var pos = arange(length, dtype: int64, device: device ?? k.device).unsqueeze(0);
        return pos.lt(k.to(int64).to(pos.device).unsqueeze(1));
    }

    /// <summary>[B, length] bool, true where position >= k_b (the decoder must ignore it).</summary>
    public static Tensor KeyPaddingMask(Tensor k, int length, Device? device = null) => KeepMask(k, length, device).logical_not();

    /// <summary>Slice length = max K; a mask only when K differs within the batch.</summary>
    public static DecodePlan Plan(Tensor k, Device? device = null)
    {
        long max = k.max().item<long>(), min = k.min().item<long>();
        if (min < 1) throw new ArgumentException($"nested dropout: K must be >= 1, got {min}");
        return new DecodePlan((int)max, max == min ? null : KeyPaddingMask(k, (int)max, device));
    }

    /// <summary>For decoders that take a fixed-length token array: zero every token at position >= k_b.
    /// tokens: [B, L, ...] (token axis 1). Note the ReTok decoder should use <see cref="Plan"/> instead: a zero token still
    /// carries its positional embedding and receives attention.</summary>
    public static Tensor ZeroTail(Tensor tokens, Tensor k)
    {
        var keep = KeepMask(k, (int)tokens.shape[1], tokens.device).to(tokens.dtype);
        var shape = new long[tokens.dim()];
        Array.Fill(shape, 1L);
        shape[0] = tokens.shape[0];
        shape[1] = tokens.shape[1];
        return tokens * keep.reshape(shape);
    }
}

public enum LambdaSchedule { Constant, Linear, Cosine, Step }

/// <summary>How the schedule w(.) weights the semantic term of a prefix of K tokens.</summary>
public enum SemanticWeighting
{
    /// <summary>lambda(K) = w(K): the schedule at the kept length (default).</summary>
    PerSampleK,
    /// <summary>lambda(K) = (1/K) sum_{k&lt;=K} w(k): token position k carries weight w(k) and a prefix gets its positions'
    /// mean, so the early tokens dominate however long the prefix (the abstract's "progressively reducing toward the tail").</summary>
    PerPosition,
}

/// <summary>
/// Hierarchical Semantic Regularization weight lambda(K), non-increasing in the kept length K. The schedule w(k):
/// u = clamp((k - KStart)/(KEnd - KStart), 0, 1); Linear: l0 + (lEnd - l0) u; Cosine: lEnd + (l0 - lEnd)(1 + cos(pi u))/2;
/// Step: l0 for k &lt;= StepK, else lEnd; Constant: l0 (the released code: 0.5 for every K); then max(Floor, .), so a
/// floor keeps K = N (the inference setting) regularized. <see cref="Weighting"/> turns w into lambda(K): w(K)
/// (default) or the mean of w over positions 1..K. Defaults (our reading): per sample K, linear from 0.5 at K = 1 to 0
/// at K = N = 256 and beyond, no floor: E_K[lambda] = 64/480 = 0.133 under U{1..480} (<see cref="MeanOver"/>).
/// </summary>
public sealed record SemanticWeightConfig(
    LambdaSchedule Schedule = LambdaSchedule.Linear,
    double Lambda0 = 0.5,
    double LambdaEnd = 0.0,
    int KStart = 1,
    int KEnd = 256,
    int StepK = 128,
    double Floor = 0.0,
    SemanticWeighting Weighting = SemanticWeighting.PerSampleK)
{
    public static SemanticWeightConfig Released => new(Schedule: LambdaSchedule.Constant, Lambda0: 0.5);

    /// <summary>lambda(K) of a prefix of <paramref name="k"/> tokens.</summary>
    public double At(long k)
    {
        if (Weighting == SemanticWeighting.PerSampleK) return PositionWeight(k);
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k), $"lambda(K): K must be >= 1, got {k}");
        double sum = 0;
        for (long j = 1; j <= k; j++) sum += PositionWeight(j);
        return sum / k;
    }

    /// <summary>w(k) = max(Floor, schedule(k)): the weight of token position k (1-based).</summary>
    public double PositionWeight(long k) => Math.Max(Floor, Scheduled(k));

    /// <summary>E_K[lambda(K)] under <paramref name="law"/>: the mean weight the semantic term gets over training.</summary>
    public double MeanOver(KSampler law) => Enumerable.Range(1, law.Config.NumTokens + law.Config.NumPadding).Sum(k => law.Probability(k) * At(k));

    double Scheduled(long k)
    {
        if (Schedule == LambdaSchedule.Constant) return Lambda0;
        if (Schedule == LambdaSchedule.Step) return k <= StepK ? Lambda0 : LambdaEnd;
        if (KEnd <= KStart) throw new ArgumentException($"lambda(K): KEnd {KEnd} must exceed KStart {KStart}");
        double u = Math.Clamp((double)(k - KStart) / (KEnd - KStart), 0.0, 1.0);
        return Schedule switch
        {
            LambdaSchedule.Linear => Lambda0 + (LambdaEnd - Lambda0) * u,
            LambdaSchedule.Cosine => LambdaEnd + (Lambda0 - LambdaEnd) * 0.5 * (1 + Math.Cos(Math.PI * u)),
            _ => throw new ArgumentOutOfRangeException(nameof(Schedule)),
        };
    }

    /// <summary>Per-sample weights [B] (float32) for per-sample K.</summary>
    public Tensor At(Tensor k) => tensor(k.to(int64).cpu().data<long>().ToArray().Select(v => (float)At(v)).ToArray());
}

/// <summary>
/// Multi-prefix semantic alignment (ours; the paper does not say how many prefixes it aligns): besides the sampled K_b,
/// each image's encoded tokens are decoded at P more prefix lengths, drawn per sample from the K law
/// (<see cref="Count"/>) or the fixed list <see cref="Ks"/>, for the semantic features only. The semantic term is the
/// mean over the 1 + P prefixes: (1/(1+P)) sum_{p=0..P} (1/B) sum_b lambda(K_{p,b}) negcos_{p,b} (p = 0: the sampled K),
/// so its scale, E[lambda] included, does not grow with P; only its variance drops. Reconstruction stays on the sampled K.
/// Count 0 and no Ks (default): one prefix, the term as before.
/// </summary>
public sealed record SemanticPrefixConfig(int Count = 0, int[]? Ks = null)
{
    /// <summary>P: how many prefixes are decoded besides the sampled K.</summary>
    public int Extra => Ks?.Length ?? Count;

    public void Validate(int maxK)
    {
        if (Count < 0) throw new ArgumentException($"semantic prefixes: Count must be >= 0, got {Count}");
        if (Ks is { } ks && (Count != 0 || ks.Length == 0 || ks.Any(k => k < 1 || k > maxK)))
            throw new ArgumentException($"semantic prefixes: Ks [{string.Join(", ", ks)}] must be non-empty, in 1..{maxK}, and not given with Count {Count}");
    }

    /// <summary>K per sample of each extra prefix: P int64 [B] tensors. The law's draws come from <paramref name="generator"/>
    /// after the sampled K (none when P = 0, so the K stream is unchanged).</summary>
    public Tensor[] Sample(KSampler law, int batch, torch.Generator generator) => Ks is { } ks
        ? ks.Select(k => full(new long[] { batch }, (long)k, dtype: int64)).ToArray()
        : Enumerable.Range(0, Count).Select(_ => law.Sample(batch, generator)).ToArray();

    /// <summary>E[lambda] of the semantic term, the 1 + P prefixes averaged: <see cref="SemanticWeightConfig.MeanOver"/>
    /// when the extra prefixes follow the law, (E_K[lambda] + sum_p lambda(K_p))/(1 + P) for a fixed list.</summary>
    public double MeanWeight(SemanticWeightConfig weight, KSampler law) =>
        Ks is { } ks ? (weight.MeanOver(law) + ks.Sum(k => weight.At(k))) / (1 + ks.Length) : weight.MeanOver(law);
}

/// <summary>
/// Decoder fine-tuning stage (paper: "complemented by Decoder Fine-tuning"; no released config). From
/// <see cref="StartStep"/> (0-based iteration) on, only parameters whose name starts with one of
/// <see cref="TrainablePrefixes"/> train; others get requires_grad = false (AdamW then skips them). Default: the CNN
/// pixel decoder "decoder." only, as GigaTok's freeze_but_2d_decoder; add "s1to2decoder." (minus distill_mlp) to also
/// tune the ViT decoder. Teacher and semantic loss off (as the reference does), GAN + LPIPS kept, lr schedule
/// continues. <see cref="KeepNestedDropout"/> keeps K sampling on (true) or decodes every step with <see cref="FixedK"/>
/// (null: N, the tokenizer's real token count).
/// </summary>
public sealed record DecoderFinetuneConfig(
    long StartStep,
    string[]? TrainablePrefixes = null,
    bool TeacherOff = true,
    bool KeepNestedDropout = true,
    int? FixedK = null)
{
    public string[] Prefixes => TrainablePrefixes ?? new[] { "decoder." };

    public bool Trainable(string parameterName) => Prefixes.Any(parameterName.StartsWith);
}

using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Models.Training;

/// <summary>
/// VQLoss settings as the ReTok configs (configs/vq/VQ_S{B,S}256.yaml + VQLoss defaults) set them. Weights that the
/// reference applies elsewhere: the 0.25 commitment factor lives in the quantizer's commit term, the feature-rec weight
/// (1.0) inside the model; codebook_weight is stored but never applied by the reference, so it does not exist here.
/// </summary>
public sealed record LossConfig(
    double ReconstructionWeight = 1.0,
    string ReconstructionLoss = "l2",
    double PerceptualWeight = 1.0,
    double DiscWeight = 0.5,
    long DiscStart = 0,
    bool DiscAdaptiveWeight = false,
    long AuxLossEnd = 15000,
    long? EntropyLossEnd = null,
    double ProjWeight = 0.5,
    bool UseDirectRecLoss = false);

/// <summary>The quantizer's training losses: <c>Vq</c> = mean((q - sg(z))^2), <c>Commit</c> = beta * mean((sg(q) - z)^2)
/// with beta (0.25) already applied, <c>Entropy</c> = entropy_loss_ratio * entropy (0 in the ReTok configs).</summary>
public sealed record CodebookLosses(Tensor Vq, Tensor Commit, Tensor? Entropy = null);

/// <summary>Every generator term separately (unweighted where a weight applies) plus the weighted total.</summary>
public sealed record GeneratorLossTerms(
    Tensor Total,
    Tensor Reconstruction,          // mse(x, x_hat)                                   x ReconstructionWeight
    Tensor Perceptual,              // mean_b lpips(x, x_hat)                          x PerceptualWeight
    Tensor GeneratorAdversarial,    // -mean D(x_hat) (0 before DiscStart)            x AdversarialWeight
    double AdversarialWeight,       // adaptive weight x adopt_weight(DiscWeight, step)
    Tensor CodebookVq,
    Tensor Commitment,
    Tensor Entropy,
    Tensor FeatureReconstruction,   // already weighted by the model; 0 from AuxLossEnd on
    Tensor SemanticAlignment,       // -(1/B) sum_b mean_t cos(student, teacher), in [-1, 1]; 0 when no teacher
    Tensor SemanticWeighted,        // (1/B) sum_b lambda_b * negcos_b (lambda = ProjWeight unless per-sample weights)
    Tensor? SemanticSampledK = null, // with extra prefixes: the sampled K's unweighted term (the two above then average all prefixes)
    Tensor? DirectReconstruction = null,        // use_direct_rec_loss, s < AuxLossEnd: mse(x, dir_dec)  x ReconstructionWeight
    Tensor? DirectPerceptual = null,            //   mean_b lpips(x, dir_dec)                               x PerceptualWeight
    Tensor? DirectGeneratorAdversarial = null)  //   -mean D(dir_dec) (0 before DiscStart)                  x AdversarialWeight
{
    /// <summary>Terms in the order they are checked and logged; names are the log keys.</summary>
    public IEnumerable<(string Name, Tensor Value)> Named()
    {
        yield return ("rec", Reconstruction);
        yield return ("perceptual", Perceptual);
        yield return ("gen_adv", GeneratorAdversarial);
        yield return ("vq", CodebookVq);
        yield return ("commit", Commitment);
        yield return ("entropy", Entropy);
        yield return ("feature_rec", FeatureReconstruction);
        yield return ("semantic", SemanticAlignment);
        yield return ("semantic_weighted", SemanticWeighted);
        if (SemanticSampledK is not null) yield return ("semantic_sampled_k", SemanticSampledK);
        if (DirectReconstruction is not null) yield return ("direct_rec", DirectReconstruction);
        if (DirectPerceptual is not null) yield return ("direct_perceptual", DirectPerceptual);
        if (DirectGeneratorAdversarial is not null) yield return ("direct_gen_adv", DirectGeneratorAdversarial);
        yield return ("total_g", Total);
    }
}

public sealed record DiscriminatorLossTerms(Tensor Total, Tensor LogitsRealMean, Tensor LogitsFakeMean, bool Active,
    Tensor? LogitsDirectFakeMean = null)
{
    public IEnumerable<(string Name, Tensor Value)> Named()
    {
        yield return ("logits_real", LogitsRealMean);
        yield return ("logits_fake", LogitsFakeMean);
        if (LogitsDirectFakeMean is not null) yield return ("logits_direct_fake", LogitsDirectFakeMean);
        yield return ("total_d", Total);
    }
}

/// <summary>The loss functions of tokenizer/tokenizer_image/vq/vq_loss.py that the ReTok configs reach.</summary>
public static class Losses
{
    /// <summary>hinge_d_loss: 0.5 * (mean relu(1 - real) + mean relu(1 + fake)).</summary>
    public static Tensor HingeDLoss(Tensor logitsReal, Tensor logitsFake) =>
        0.5 * (F.relu(1.0 - logitsReal).mean() + F.relu(1.0 + logitsFake).mean());

    /// <summary>hinge_gen_loss: -mean(D(x_hat)).</summary>
    public static Tensor HingeGenLoss(Tensor logitsFake) => -logitsFake.mean();

    /// <summary>adopt_weight: <paramref name="value"/> before <paramref name="threshold"/>, else the weight.</summary>
    public static double AdoptWeight(double weight, long globalStep, long threshold, double value = 0.0) =>
        globalStep < threshold ? value : weight;

    /// <summary>Per-sample negative cosine, token mean: out[b] = -mean_t cos(student[b,t], teacher[b,t]) (F.normalize eps
    /// 1e-12 along the last dim). Shapes must match exactly, as the reference asserts.</summary>
    public static Tensor NegativeCosinePerSample(Tensor student, Tensor teacher)
    {
        if (!student.shape.SequenceEqual(teacher.shape))
            throw new ArgumentException($"semantic alignment: student features [{string.Join(",", student.shape)}] and teacher features [{string.Join(",", teacher.shape)}] differ in shape");
        var s = F.normalize(student, dim: -1);
        var t = F.normalize(teacher, dim: -1);
        var perToken = -(s * t).sum(-1);                       // [B, T...]
        return perToken.reshape(perToken.shape[0], -1).mean(new long[] { 1 });
    }

    /// <summary>calculate_adaptive_weight: ||grad nll|| / (||grad g|| + 1e-4) at the last layer, clamped to [0, 1e4], detached.</summary>
    public static Tensor AdaptiveWeight(Tensor nllLoss, Tensor gLoss, Tensor lastLayer)
    {
        var nllGrad = torch.autograd.grad(new[] { nllLoss }, new[] { lastLayer }, retain_graph: true)[0];
        var gGrad = torch.autograd.grad(new[] { gLoss }, new[] { lastLayer }, retain_graph: true)[0];
        return (nllGrad.norm() / (gGrad.norm() + 1e-4)).clamp(0.0, 1e4).detach();
    }
}

/// <summary>
/// VQLoss.forward for optimizer_idx 0 (generator) and 1 (discriminator), with the combination exactly as GigaTok's loop
/// builds it: L_G = w_rec*L_rec + w_p*L_lpips + a*w_d*L_adv + (L_vq + L_commit + L_ent) + L_fea + L_sem_weighted and
/// L_D = w_d * hinge(D(x), D(x_hat)). The perceptual network is a delegate (LPIPS comes from ReTok.Evaluation); it must
/// return a per-sample distance of any shape whose mean is the batch mean. With UseDirectRecLoss (off in the ReTok
/// configs, on by VQLoss's default) the shortcut decode dir_dec = decoder(S_cnn) gets the same rec, perceptual and
/// adversarial terms, and D a second fake batch, while s &lt; AuxLossEnd. LeCam and the other discriminator types are off
/// in the ReTok configs and not ported (docs/training.md).
/// </summary>
public sealed class TokenizerLoss
{
    public LossConfig Config { get; }
    public PatchGanDiscriminator Discriminator { get; }
    private readonly Func<Tensor, Tensor, Tensor> perceptual;

    public TokenizerLoss(LossConfig config, PatchGanDiscriminator discriminator, Func<Tensor, Tensor, Tensor> perceptual)
    {
        if (config.ReconstructionLoss is not ("l1" or "l2"))
            throw new ArgumentException($"unknown reconstruction loss '{config.ReconstructionLoss}' (expected l1 or l2)");
        Config = config;
        Discriminator = discriminator;
        this.perceptual = perceptual;
    }

    /// <param name="featureRec">the model's feature-reconstruction (shortcut) loss, already weighted; null when not computed.</param>
    /// <param name="semanticWeights">per-sample weights lambda_b [B] (ReTok HSR); null = the constant ProjWeight (released code).</param>
    /// <param name="lastLayer">decoder's last-layer weight, required only with DiscAdaptiveWeight.</param>
    /// <param name="prefixes">student features and weights (null as <paramref name="semanticWeights"/>) of extra prefixes of
    /// the same images (<see cref="SemanticPrefixConfig"/>): the semantic terms are then the mean over all 1 + P prefixes.</param>
    /// <param name="directReconstructions">dir_dec, required with UseDirectRecLoss while s &lt; AuxLossEnd (ignored otherwise).</param>
    public GeneratorLossTerms Generator(Tensor inputs, Tensor reconstructions, CodebookLosses codebook, Tensor? featureRec,
        long globalStep, Tensor? student = null, Tensor? teacher = null, Tensor? semanticWeights = null, Tensor? lastLayer = null,
        IReadOnlyList<(Tensor Student, Tensor? Weights)>? prefixes = null, Tensor? directReconstructions = null)
    {
        var c = Config;
        var zero = torch.zeros(Array.Empty<long>(), dtype: reconstructions.dtype, device: reconstructions.device);
        var rec = Reconstruction(inputs, reconstructions);
        var p = perceptual(inputs, reconstructions).mean();
        var direct = DirectActive(globalStep, directReconstructions);
        var directRec = direct is null ? zero : Reconstruction(inputs, direct);
        var directP = direct is null ? zero : perceptual(inputs, direct).mean();

        double discWeight = Losses.AdoptWeight(c.DiscWeight, globalStep, c.DiscStart);
        var genAdv = globalStep < c.DiscStart ? zero : Losses.HingeGenLoss(Discriminator.forward(reconstructions));
        var directAdv = globalStep < c.DiscStart || direct is null ? zero : Losses.HingeGenLoss(Discriminator.forward(direct));
        double adaptive = 1.0;
        if (c.DiscAdaptiveWeight && globalStep >= c.DiscStart)
        {
            if (lastLayer is null) throw new ArgumentException("DiscAdaptiveWeight needs the decoder's last-layer weight (lastLayer)");
            // the reference's null loss counts the direct rec term but not the direct perceptual one (vq_loss.py L425)
            adaptive = Losses.AdaptiveWeight(c.ReconstructionWeight * (rec + directRec) + c.PerceptualWeight * p, genAdv, lastLayer).item<float>();
        }

        var fea = featureRec ?? zero;
        if (globalStep >= c.AuxLossEnd) fea = fea * 0.0;
        var ent = codebook.Entropy ?? zero;
        if (c.EntropyLossEnd is long end && globalStep >= end) ent = zero;

        Tensor sem = zero, semWeighted = zero;
        Tensor? semSampled = null;
        if (student is not null && teacher is not null)
        {
            (sem, semWeighted) = Semantic(student, teacher, semanticWeights);
            if (prefixes is { Count: > 0 })
            {
                semSampled = sem;
                foreach (var (s, w) in prefixes)
                {
                    var (ps, pw) = Semantic(s, teacher, w);
                    sem = sem + ps;
                    semWeighted = semWeighted + pw;
                }
                sem = sem / (1 + prefixes.Count);
                semWeighted = semWeighted / (1 + prefixes.Count);
            }
        }

        var total = c.ReconstructionWeight * (rec + directRec) + c.PerceptualWeight * (p + directP) + (adaptive * discWeight) * (genAdv + directAdv)
                    + (codebook.Vq + codebook.Commit + ent) + fea + semWeighted;
        return new GeneratorLossTerms(total, rec, p, genAdv, adaptive * discWeight, codebook.Vq, codebook.Commit, ent, fea, sem, semWeighted, semSampled,
            direct is null ? null : directRec, direct is null ? null : directP, direct is null ? null : directAdv);
    }

    Tensor Reconstruction(Tensor inputs, Tensor reconstructions) =>
        Config.ReconstructionLoss == "l2" ? F.mse_loss(reconstructions, inputs) : F.l1_loss(reconstructions, inputs);

    /// <summary>dir_dec when the direct terms apply at this step (UseDirectRecLoss and s &lt; AuxLossEnd), else null.</summary>
    Tensor? DirectActive(long globalStep, Tensor? directReconstructions)
    {
        if (!Config.UseDirectRecLoss || globalStep >= Config.AuxLossEnd) return null;
        return directReconstructions ?? throw new ArgumentException(
            $"use_direct_rec_loss is on and step {globalStep} < aux_loss_end {Config.AuxLossEnd}, but no direct reconstruction (dir_dec) was given");
    }

    /// <summary>One prefix's (unweighted, weighted) semantic term: weights lambda_b [B], or null for the constant ProjWeight.</summary>
    (Tensor Unweighted, Tensor Weighted) Semantic(Tensor student, Tensor teacher, Tensor? weights)
    {
        var perSample = Losses.NegativeCosinePerSample(student, teacher);
        var sem = perSample.mean();
        return (sem, weights is null ? Config.ProjWeight * sem : (weights.to(perSample.dtype).to(perSample.device) * perSample).mean());
    }

    /// <summary>D objective: separate forwards (real batch, fake batch, then the direct fake batch with use_direct_rec_loss:
    /// BatchNorm sees each alone), inputs detached; the direct batch adds w * hinge(D(x), D(dir_dec)).</summary>
    public DiscriminatorLossTerms DiscriminatorStep(Tensor inputs, Tensor reconstructions, long globalStep, Tensor? directReconstructions = null)
    {
        var zero = torch.zeros(Array.Empty<long>(), dtype: reconstructions.dtype, device: reconstructions.device);
        if (globalStep < Config.DiscStart) return new DiscriminatorLossTerms(zero, zero, zero, false);
        var direct = DirectActive(globalStep, directReconstructions);
        var real = Discriminator.forward(inputs.detach());
        var fake = Discriminator.forward(reconstructions.detach());
        var directFake = direct is null ? null : Discriminator.forward(direct.detach());
        double w = Losses.AdoptWeight(Config.DiscWeight, globalStep, Config.DiscStart);
        var total = w * Losses.HingeDLoss(real, fake);
        if (directFake is not null) total = total + w * Losses.HingeDLoss(real, directFake);
        return new DiscriminatorLossTerms(total, real.detach().mean(), fake.detach().mean(), true, directFake?.detach().mean());
    }
}

using ReTok.Models.Tokenizer;
using ReTok.Models.Training;
using ReTok.Tests.Kinds.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace ReTok.Tests.Training;

/// <summary>
/// Multi-prefix semantic alignment on the tiny ReTok tokenizer: the encoder runs once and every extra prefix decodes the
/// same quantized tokens, so each prefix's features must equal those of a separate <see cref="ReTokTokenizer.Forward"/>
/// from that prefix, and the step's term must be the mean of the single-prefix terms.
/// </summary>
public class SemanticPrefixTests(ITestOutputHelper log)
{
    static Tensor NegCosWeighted(Tensor student, Tensor teacher, Tensor weights) => (weights * Losses.NegativeCosinePerSample(student, teacher)).mean();

    [Fact]
    public void MultiPrefixTermIsTheMeanOfTheSinglePrefixTermsAndEveryPrefixReachesTheEncoder()
    {
        using var model = TrainTokenizerData.TinyTokenizer();
        model.train();
        var trainable = new ReTokTrainable(model);
        var images = ReTokTokenizer.ImagesFromUint8(TrainTokenizerData.TinyImagesUint8()).narrow(0, 0, 2);
        var k = tensor(new long[] { 7, 300 });
        // one K shared by the batch (sliced) and a mixed pair (masked) that reaches the last padding token
        var extra = new[] { tensor(new long[] { 32, 32 }), tensor(new long[] { 480, 5 }) };
        var all = extra.Prepend(k).ToArray();
        var teacher = randn(new long[] { 2, 256, 32 }, generator: new Generator(5));
        var w = new SemanticWeightConfig(Weighting: SemanticWeighting.PerPosition);
        var loss = new TokenizerLoss(new LossConfig(), new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8)), TrainTokenizerData.FixedPerceptual);

        var output = trainable.Forward(new TokenizerStepInput(images, k, ComputeFeatureRecLoss: true, ReturnSemanticFeatures: true, extra));
        var features = output.PrefixSemanticFeatures!.Prepend(output.SemanticFeatures!).ToArray();
        Assert.Equal(3, features.Length);
        var terms = loss.Generator(images, output.Reconstruction, output.Codebook, output.FeatureRecLoss, 1, features[0], teacher, w.At(k),
            prefixes: extra.Select((kp, j) => (features[j + 1], (Tensor?)w.At(kp))).ToList());

        // the sampled K's outputs are the plain forward's bit for bit (the prefixes only add ViT-decoder passes)
        var (recon, losses, sem) = model.Forward(images, tokenCounts: k, featureRecLoss: true, semantic: true);
        Assert.Equal(0, TrainingFixtures.MaxDiff(recon, output.Reconstruction));
        Assert.Equal(0, TrainingFixtures.MaxDiff(losses.Codebook, output.Codebook.Vq));
        Assert.Equal(0, TrainingFixtures.MaxDiff(losses.Commitment, output.Codebook.Commit));
        Assert.Equal(0, TrainingFixtures.MaxDiff(losses.FeatureRec!, output.FeatureRecLoss!));
        Assert.Equal(0, TrainingFixtures.MaxDiff(sem!, features[0]));

        // each prefix alone, encoded again: the same features (bit for bit: the same ops on the same tokens), hence the
        // same single-prefix term
        var single = new double[all.Length];
        var singleUnweighted = new double[all.Length];
        for (int p = 0; p < all.Length; p++)
        {
            var kp = all[p];
            long kmax = kp.max().item<long>();
            var alone = kp.min().item<long>() == kmax
                ? model.Forward(images, tokens: (int)kmax, semantic: true).semanticFeatures!
                : model.Forward(images, tokenCounts: kp, semantic: true).semanticFeatures!;
            Assert.Equal(0, TrainingFixtures.MaxDiff(alone, features[p]));
            single[p] = NegCosWeighted(alone, teacher, w.At(kp)).item<float>();
            singleUnweighted[p] = Losses.NegativeCosinePerSample(alone, teacher).mean().item<float>();
        }
        Assert.True(single.Distinct().Count() == 3, "the three prefixes must give different terms, or the test shows nothing");
        // the step adds the three float32 terms and divides by 3 in float32: at most 3 roundings of 2^-24 relative to the
        // partial sums (<= sum |term_p|); measured below
        double bound = 3 * Math.Pow(2, -24) * single.Sum(Math.Abs);
        double diff = Math.Abs(terms.SemanticWeighted.item<float>() - single.Average());
        double diffU = Math.Abs(terms.SemanticAlignment.item<float>() - singleUnweighted.Average());
        log.WriteLine($"single-prefix terms {string.Join(", ", single.Select(v => v.ToString("G9")))}; |step - mean| = {diff:E2} (unweighted {diffU:E2}), bound {bound:E2}");
        Assert.True(diff <= bound, $"weighted: |{terms.SemanticWeighted.item<float>()} - {single.Average()}| = {diff:E2} > {bound:E2}");
        Assert.True(diffU <= 3 * Math.Pow(2, -24) * singleUnweighted.Sum(Math.Abs), $"unweighted: {diffU:E2}");
        Assert.Equal(singleUnweighted[0], terms.SemanticSampledK!.item<float>());
        Assert.Contains(terms.Named(), t => t.Name == "semantic_sampled_k");

        // gradients: every prefix's term alone reaches the encoder (CNN and ViT) through the shared tokens
        var named = model.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        var enc = new Tensor[] { named["encoder.conv_in.weight"], named["s2to1encoder.encoder_embed.weight"] };
        var perPrefix = all.Select((kp, p) => autograd.grad(new[] { NegCosWeighted(features[p], teacher, w.At(kp)) }, enc, retain_graph: true)).ToArray();
        for (int p = 0; p < all.Length; p++)
            foreach (var g in perPrefix[p]) Assert.True(g.norm().item<float>() > 0, $"prefix {p} sends no gradient to the encoder");
        Assert.True(TrainingFixtures.MaxDiff(perPrefix[1][0], perPrefix[2][0]) > 0);
        // the step's term's gradient is the mean of theirs up to float32 rounding: one backward through the summed graph
        // accumulates the three contributions in another order than three backwards do; relative to the prefixes' mean
        // gradient magnitude it measured 8e-7 (ViT encoder_embed) and 8e-6 (CNN conv_in, the longest backward) here; 1e-4
        // leaves room for other CPUs' kernels
        var step = autograd.grad(new[] { terms.SemanticWeighted }, enc, retain_graph: true);
        for (int i = 0; i < enc.Length; i++)
        {
            var mean = (perPrefix[0][i] + perPrefix[1][i] + perPrefix[2][i]) / 3;
            var scale = (perPrefix[0][i].abs() + perPrefix[1][i].abs() + perPrefix[2][i].abs()) / 3;
            double rel = TrainingFixtures.MaxDiff(step[i], mean) / TrainingFixtures.MaxAbs(scale);
            log.WriteLine($"encoder grad {i}: max |step - mean of prefixes| / max mean |prefix grad| = {rel:E2}");
            Assert.True(rel < 1e-4, $"encoder grad {i}: relative difference {rel:E2}");
        }
    }

    [Fact]
    public void ATokenizerWithoutPrefixFeaturesIsRefused()
    {
        using var trainer = TrainerTests.MakeTrainer(TrainerTests.Small(2) with { SemanticPrefixes = new SemanticPrefixConfig(Count: 1) });
        ((DummyTokenizer)trainer.Tokenizer).OmitPrefixFeatures = true;
        var ex = Assert.Throws<InvalidOperationException>(() => trainer.TrainStep());
        Assert.Contains("prefix semantic features for 1 semantic prefixes", ex.Message);
        Assert.Throws<ArgumentException>(() => TrainerTests.MakeTrainer(TrainerTests.Small(2) with { SemanticPrefixes = new SemanticPrefixConfig(Ks: new[] { 7 }) }));   // N + M = 6
    }
}

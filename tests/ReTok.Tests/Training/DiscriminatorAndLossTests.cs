using ReTok.Models.IO;
using ReTok.Models.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Tests.Training;

public class DiscriminatorAndLossTests
{
    /// <summary>The stand-in for LPIPS used by the fixture generator (FixedPerceptual in training.py).</summary>
    internal static Tensor FixedPerceptual(Tensor x, Tensor y) =>
        (tanh(1.5 * x) - tanh(1.5 * y)).abs().mean(new long[] { 1, 2, 3 }, keepdim: true);

    [Fact]
    public void DefaultDiscriminatorHasReferenceStateDictAnd30x30Logits()
    {
        using var d = new PatchGanDiscriminator();
        var sd = d.state_dict();
        var reference = TrainingFixtures.StateDictListing("disc_state_dict.tsv");
        Assert.Equal(reference.Select(r => r.Name).Order(), sd.Keys.Order()); // TorchSharp lists buffers after parameters
        foreach (var (name, shape) in reference) Assert.Equal(shape, sd[name].shape);
        Assert.Equal(2_765_633, d.parameters().Sum(p => p.numel()));   // "about 2.77 M" (tokenizer-training.md §2.5)
        using var _ = no_grad();
        Assert.Equal(new long[] { 2, 1, 30, 30 }, d.forward(zeros(2, 3, 256, 256)).shape);
    }

    [Fact]
    public void DiscriminatorInitFollowsReference()
    {
        using var d = new PatchGanDiscriminator();
        var sd = d.state_dict();
        // conv weights N(0, 0.02); BN weight N(1, 0.02), bias 0; conv biases keep the default uniform(+-1/sqrt(fan_in))
        foreach (var key in new[] { "main.2.weight", "main.5.weight", "main.8.weight" })
        {
            var w = sd[key];
            Assert.InRange(w.mean().item<float>(), -0.002, 0.002);
            Assert.InRange(w.std().item<float>(), 0.019, 0.021);
        }
        foreach (var key in new[] { "main.6.weight", "main.9.weight" })
        {
            Assert.InRange(sd[key].mean().item<float>(), 0.995, 1.005);
            Assert.InRange(sd[key].std().item<float>(), 0.015, 0.025);
        }
        Assert.Equal(0.0, TrainingFixtures.MaxAbs(sd["main.9.bias"]));
        var b0 = sd["main.0.bias"];
        Assert.True(TrainingFixtures.MaxAbs(b0) <= 1 / Math.Sqrt(3 * 16) + 1e-7);
        Assert.True(TrainingFixtures.MaxAbs(b0) > 0.02, "conv biases must keep their uniform init, not be zeroed");
    }

    /// <summary>The fixture's ndf-8 discriminator (keys `disc.*`), in train mode as the reference runs it.</summary>
    static PatchGanDiscriminator FixtureDiscriminator(IReadOnlyDictionary<string, Tensor> fx, string file)
    {
        var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
        StateDictFile.LoadInto(disc, fx.Where(kv => kv.Key.StartsWith("disc.")).ToDictionary(kv => kv.Key[5..], kv => kv.Value), file);
        disc.train();
        return disc;
    }

    static void AssertDiscriminatorGrads(PatchGanDiscriminator disc, IReadOnlyDictionary<string, Tensor> fx, string c, double tol)
    {
        foreach (var (name, p) in disc.named_parameters())
            Assert.True(TrainingFixtures.MaxDiff(p.grad!, fx[$"{c}.dgrad.{name}"]) <= tol, $"D grad {name}");
    }

    static void AssertBatchNormAfter(PatchGanDiscriminator disc, IReadOnlyDictionary<string, Tensor> fx, string c, double tol)
    {
        var sd = disc.state_dict();
        foreach (var key in new[] { "main.3.running_mean", "main.3.running_var", "main.9.running_var", "main.9.num_batches_tracked" })
            Assert.True(TrainingFixtures.MaxDiff(sd[key], fx[$"{c}.after.{key}"]) <= tol, $"BatchNorm {key} after G+D passes");
    }

    [Theory]
    [InlineData("a", 0L, 101L, false)]
    [InlineData("b", 0L, 15000L, false)]
    [InlineData("c", 1000L, 5L, false)]
    [InlineData("d", 0L, 7L, true)]
    public void LossTermsMatchReferenceVQLoss(string c, long discStart, long step, bool adaptive)
    {
        const double tol = 1e-5;
        var fx = TrainingFixtures.Load("losses.npz");
        using var disc = FixtureDiscriminator(fx, "losses.npz");
        var loss = new TokenizerLoss(new LossConfig(DiscStart: discStart, DiscAdaptiveWeight: adaptive), disc, FixedPerceptual);

        var lastW = fx["last_w"].clone().requires_grad_(true);
        var inner = fx["inner"].clone().requires_grad_(true);
        var recon = F.conv2d(fx["base"], lastW);
        var cb = fx["cb"];
        var terms = loss.Generator(fx["x"], recon, new CodebookLosses(cb[0], cb[1], cb[2]), fx["fea"], step, inner, fx["sem"],
            lastLayer: adaptive ? lastW : null);

        Assert.InRange(Math.Abs(terms.Total.item<float>() - fx.Scalar($"{c}.total")), 0, tol);
        Assert.InRange(Math.Abs(terms.Reconstruction.item<float>() - fx.Scalar($"{c}.rec")), 0, tol);
        Assert.InRange(Math.Abs(terms.Perceptual.item<float>() - fx.Scalar($"{c}.perceptual")), 0, tol);
        Assert.InRange(Math.Abs(terms.CodebookVq.item<float>() - fx.Scalar($"{c}.vq")), 0, tol);
        Assert.InRange(Math.Abs(terms.Commitment.item<float>() - fx.Scalar($"{c}.commit")), 0, tol);
        Assert.InRange(Math.Abs(terms.Entropy.item<float>() - fx.Scalar($"{c}.entropy")), 0, tol);
        Assert.InRange(Math.Abs(terms.SemanticAlignment.item<float>() - fx.Scalar($"{c}.proj")), 0, tol);
        Assert.InRange(Math.Abs(terms.AdversarialWeight - fx.Scalar($"{c}.adaptive_weight") * fx.Scalar($"{c}.disc_weight")), 0, tol);
        Assert.InRange(Math.Abs(terms.AdversarialWeight * terms.GeneratorAdversarial.item<float>() - fx.Scalar($"{c}.gen_adv_weighted")), 0, tol);
        // feature-rec is not logged by the reference; it is in the total (and zeroed from aux_loss_end: case b)
        Assert.Equal(step >= 15000 ? 0.0 : fx.Scalar("fea"), terms.FeatureReconstruction.item<float>(), 6);

        terms.Total.backward();
        Assert.InRange(TrainingFixtures.MaxDiff(lastW.grad!, fx[$"{c}.grad_last_w"]), 0, tol);
        Assert.InRange(TrainingFixtures.MaxDiff(inner.grad!, fx[$"{c}.grad_inner"]), 0, tol);

        foreach (var p in disc.parameters()) p.grad = null;
        var d = loss.DiscriminatorStep(fx["x"], recon, step);
        Assert.InRange(Math.Abs(d.Total.item<float>() - fx.Scalar($"{c}.d_loss")), 0, tol);
        Assert.Equal(step >= discStart, d.Active);
        if (d.Active)
        {
            Assert.InRange(Math.Abs(d.LogitsRealMean.item<float>() - fx.Scalar($"{c}.logits_real")), 0, tol);
            Assert.InRange(Math.Abs(d.LogitsFakeMean.item<float>() - fx.Scalar($"{c}.logits_fake")), 0, tol);
            d.Total.backward();
            if (c == "a") AssertDiscriminatorGrads(disc, fx, c, tol);
        }
        AssertBatchNormAfter(disc, fx, c, tol);
    }

    /// <summary>use_direct_rec_loss (VQLoss's default, on in our quickstart): the shortcut decode's rec, perceptual and
    /// adversarial terms, D's second fake batch, the adaptive weight's null loss, all off from aux_loss_end.</summary>
    [Theory]
    [InlineData("e", 0L, 101L, false)]
    [InlineData("f", 0L, 15000L, false)]
    [InlineData("g", 1000L, 5L, false)]
    [InlineData("h", 0L, 7L, true)]
    public void DirectTermsMatchReferenceVQLoss(string c, long discStart, long step, bool adaptive)
    {
        const double tol = 1e-5;   // as the test above: float32 sums of 2x3x32x32 terms
        var fx = TrainingFixtures.Load("losses_direct.npz");
        using var disc = FixtureDiscriminator(fx, "losses_direct.npz");
        var loss = new TokenizerLoss(new LossConfig(DiscStart: discStart, DiscAdaptiveWeight: adaptive, UseDirectRecLoss: true), disc, FixedPerceptual);

        var lastW = fx["last_w"].clone().requires_grad_(true);
        var recon = F.conv2d(fx["base"], lastW);
        var direct = F.conv2d(fx["base_direct"], lastW);
        var cb = fx["cb"];
        var terms = loss.Generator(fx["x"], recon, new CodebookLosses(cb[0], cb[1], cb[2]), fx["fea"], step,
            lastLayer: adaptive ? lastW : null, directReconstructions: direct);

        bool on = step < 15000;
        Assert.InRange(Math.Abs(terms.Total.item<float>() - fx.Scalar($"{c}.total")), 0, tol);
        Assert.InRange(Math.Abs(terms.Reconstruction.item<float>() - fx.Scalar($"{c}.rec")), 0, tol);
        Assert.InRange(Math.Abs(terms.Perceptual.item<float>() - fx.Scalar($"{c}.perceptual")), 0, tol);
        Assert.Equal(on, terms.DirectReconstruction is not null);
        Assert.InRange(Math.Abs((terms.DirectReconstruction?.item<float>() ?? 0) - fx.Scalar($"{c}.direct_rec")), 0, tol);
        Assert.InRange(Math.Abs((terms.DirectPerceptual?.item<float>() ?? 0) - fx.Scalar($"{c}.direct_p")), 0, tol);
        Assert.True(!on || fx.Scalar($"{c}.direct_rec") > 0.1, "the fixture's direct terms must be non-zero where they apply");
        Assert.InRange(Math.Abs(terms.AdversarialWeight - fx.Scalar($"{c}.adaptive_weight") * fx.Scalar($"{c}.disc_weight")), 0, tol);
        Assert.InRange(Math.Abs(terms.AdversarialWeight * terms.GeneratorAdversarial.item<float>() - fx.Scalar($"{c}.gen_adv_weighted")), 0, tol);

        terms.Total.backward();
        Assert.InRange(TrainingFixtures.MaxDiff(lastW.grad!, fx[$"{c}.grad_last_w"]), 0, tol);

        foreach (var p in disc.parameters()) p.grad = null;
        var d = loss.DiscriminatorStep(fx["x"], recon, step, direct);
        Assert.InRange(Math.Abs(d.Total.item<float>() - fx.Scalar($"{c}.d_loss")), 0, tol);
        Assert.Equal(on && step >= discStart, d.LogitsDirectFakeMean is not null);
        if (d.Active)
        {
            d.Total.backward();
            if (c == "e") AssertDiscriminatorGrads(disc, fx, c, tol);
        }
        AssertBatchNormAfter(disc, fx, c, tol);
    }

    [Fact]
    public void DirectTermsWithoutTheDirectDecodeAreRefused()
    {
        using var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
        var loss = new TokenizerLoss(new LossConfig(DiscStart: 1_000_000, UseDirectRecLoss: true), disc, FixedPerceptual);
        var x = zeros(1, 3, 32, 32);
        var e = Assert.Throws<ArgumentException>(() => loss.Generator(x, x, new CodebookLosses(tensor(0f), tensor(0f)), null, 5));
        Assert.Contains("use_direct_rec_loss", e.Message);
        Assert.Null(loss.Generator(x, x, new CodebookLosses(tensor(0f), tensor(0f)), null, 15000).DirectReconstruction);   // past aux_loss_end
    }

    [Fact]
    public void PerSampleSemanticWeightsReduceToProjWeightWhenConstant()
    {
        using var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
        var loss = new TokenizerLoss(new LossConfig(DiscStart: 1_000_000), disc, FixedPerceptual);
        var g = new torch.Generator(3);
        var x = rand(new long[] { 3, 3, 32, 32 }, generator: g) * 2 - 1;
        var s = randn(new long[] { 3, 4, 16 }, generator: g);
        var t = randn(new long[] { 3, 4, 16 }, generator: g);
        var cb = new CodebookLosses(tensor(0.1f), tensor(0.2f));
        var constant = loss.Generator(x, x * 0.9, cb, null, 1, s, t);
        var perSample = loss.Generator(x, x * 0.9, cb, null, 1, s, t, full(3, 0.5f));
        Assert.Equal(constant.SemanticWeighted.item<float>(), perSample.SemanticWeighted.item<float>(), 6);
        // weights only on sample 0 -> (1/B) * w0 * negcos_0
        var negcos = Losses.NegativeCosinePerSample(s, t);
        var one = loss.Generator(x, x * 0.9, cb, null, 1, s, t, tensor(new[] { 1f, 0f, 0f }));
        Assert.Equal(negcos[0].item<float>() / 3, one.SemanticWeighted.item<float>(), 6);
        Assert.Throws<ArgumentException>(() => Losses.NegativeCosinePerSample(s, t[.., ..3]));
    }
}

using ReTok.Models.Dinov2;
using ReTok.Models.IO;
using ReTok.Models.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Tests.Training;

/// <summary>
/// A tiny stand-in for the ReTok tokenizer with the same training interface: 6 tokens (N = 4 real + M = 2 padding) of
/// dim 8, an L2-normalised 32-entry codebook with straight-through estimator, a decoder that reads the first K tokens
/// (ZeroTail), semantic features from the decoder's hidden layer through a distill MLP, and a feature-rec term.
/// Parameter prefixes mimic the real model ("encoder.", "quantize.", "s1to2decoder.", "decoder.").
/// </summary>
internal sealed class DummyTokenizer : Module<Tensor, Tensor>, ITrainableTokenizer
{
    public const int Tokens = 6, Dim = 8, Size = 32;
    private readonly Sequential encoder;
    private readonly Embedding quantize;
    private readonly Sequential s1to2decoder;
    private readonly Linear decoder, distill_mlp, fea_proj;
    public int Calls;
    public (int Call, string Term)? InjectNaN;
    /// <summary>Returns no prefix semantic features even when asked for some (the trainer must refuse that).</summary>
    public bool OmitPrefixFeatures;

    public DummyTokenizer() : base(nameof(DummyTokenizer))
    {
        encoder = Sequential(Conv2d(3, 16, 4, stride: 4), SiLU(), Flatten(), Linear(16 * 8 * 8, Tokens * Dim));
        quantize = Embedding(32, Dim);
        s1to2decoder = Sequential(Linear(Tokens * Dim, 128), SiLU());
        decoder = Linear(128, 3 * Size * Size);
        distill_mlp = Linear(128, 4 * 16);
        fea_proj = Linear(128, Tokens * Dim);
        RegisterComponents();
    }

    public nn.Module Module => this;

    public override Tensor forward(Tensor x) => throw new NotSupportedException();

    public TokenizerStepOutput Forward(TokenizerStepInput input)
    {
        Calls++;
        var x = input.Images;
        long b = x.shape[0];
        var z = F.normalize(encoder.forward(x).view(b, Tokens, Dim), dim: -1);
        var codes = F.normalize(quantize.weight!, dim: -1);
        var idx = cdist(z.reshape(-1, Dim), codes).argmin(1);
        var q = codes[idx].view(b, Tokens, Dim);
        var vq = F.mse_loss(q, z.detach());
        var commit = 0.25 * F.mse_loss(q.detach(), z);
        var qst = z + (q - z).detach();
        var h = s1to2decoder.forward(NestedDropout.ZeroTail(qst, input.TokensPerSample).reshape(b, -1));
        var recon = decoder.forward(h).view(b, 3, Size, Size);
        Tensor? fea = input.ComputeFeatureRecLoss ? F.mse_loss(fea_proj.forward(h), z.detach().reshape(b, -1)) : null;
        Tensor? sem = input.ReturnSemanticFeatures ? distill_mlp.forward(h).view(b, 4, 16) : null;
        var prefixes = OmitPrefixFeatures ? null : input.SemanticPrefixes?.Select(kp =>
            distill_mlp.forward(s1to2decoder.forward(NestedDropout.ZeroTail(qst, kp).reshape(b, -1))).view(b, 4, 16)).ToList();
        if (InjectNaN is { } inj && inj.Call == Calls)
        {
            if (inj.Term == "commit") commit = commit * float.NaN;
            if (inj.Term == "recon") recon = recon * float.NaN;
        }
        // the shortcut decode skips the quantizer, as dir_dec = decoder(S_cnn) skips the 1-D bottleneck
        Tensor? direct = input.DirectReconstruction ? decoder.forward(s1to2decoder.forward(z.reshape(b, -1))).view(b, 3, Size, Size) : null;
        return new TokenizerStepOutput(recon, new CodebookLosses(vq, commit), fea, sem, idx,
            Metrics: new Dictionary<string, double> { ["codes_used"] = idx.unique().Item1.shape[0] }, PrefixSemanticFeatures: prefixes,
            DirectReconstruction: direct);
    }
}

/// <summary>Frozen random features: 2x2 average pool of the image, projected 3 -> 16 per cell: [B, 4, 16].</summary>
internal sealed class DummyTeacher : ISemanticTeacher
{
    private readonly Tensor proj = randn(new long[] { 3, 16 }, generator: new Generator(77));
    public Tensor Features(Tensor images)
    {
        using var _ = no_grad();
        return F.adaptive_avg_pool2d(images, new long[] { 2, 2 }).flatten(2).transpose(1, 2).matmul(proj);
    }
}

public class TrainerTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>Deterministic init from a private generator (the global RNG is shared with tests running in parallel).</summary>
    internal static void Reinit(nn.Module m, int seed, double? std = null)
    {
        var g = new Generator((ulong)seed);
        using var _ = no_grad();
        foreach (var (name, p) in m.named_parameters())
        {
            if (p.dim() > 1)
            {
                double s = std ?? 1 / Math.Sqrt(p.numel() / p.shape[0]);
                p.copy_(randn(p.shape, generator: g) * s);
            }
            else p.copy_(name.EndsWith("weight") ? ones_like(p) : zeros_like(p));
        }
    }

    internal static TensorImageSource SyntheticImages(int n = 16)
    {
        // smooth colour ramps: each image = a + b * x + c * y, quantised to uint8
        var g = new Generator(12);
        var coef = rand(new long[] { n, 3, 3 }, generator: g);
        var yy = linspace(0, 1, 40).view(1, 40, 1, 1);
        var xx = linspace(0, 1, 40).view(1, 1, 40, 1);
        var img = coef[.., 0].view(n, 1, 1, 3) * 0.5 + coef[.., 1].view(n, 1, 1, 3) * xx * 0.5 + coef[.., 2].view(n, 1, 1, 3) * yy * 0.5;
        return new TensorImageSource((img * 255).round().clamp(0, 255).to(ScalarType.Byte));
    }

    internal static TokenizerTrainer MakeTrainer(TrainerConfig cfg, DummyTokenizer? copyFromTok = null, PatchGanDiscriminator? copyFromDisc = null,
        int batch = 4, ReTok.Models.Distributed.ICommunicator? comm = null)
    {
        var tok = new DummyTokenizer();
        var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
        Reinit(tok, 1);
        Reinit(disc, 2, 0.02);
        if (copyFromTok is not null) StateDictFile.LoadInto(tok, copyFromTok.state_dict(), "copy");
        if (copyFromDisc is not null) StateDictFile.LoadInto(disc, copyFromDisc.state_dict(), "copy");
        var data = new TrainingDataLoader(SyntheticImages(), new DataConfig(batch, ImageSize: 32, Seed: 3));
        return new TokenizerTrainer(tok, disc, DiscriminatorAndLossTests.FixedPerceptual, new DummyTeacher(), data, cfg, comm: comm);
    }

    internal static TrainerConfig Small(long steps) => new(steps, BaseLr: 2e-3, EndLr: 2e-4,
        KSampler: new KSamplerConfig(NumTokens: 4, NumPadding: 2),
        SemanticWeight: new SemanticWeightConfig(KEnd: 4));

    [Fact]
    public void ReconstructionLossGoesDownOnASyntheticDataset()
    {
        // GAN held back (GigaTok's own disc_start is 20000): with disc_start 0 this tiny model is dominated by the
        // adversarial term within a few dozen steps; the GAN path is covered by the other tests.
        using var t = MakeTrainer(Small(40) with { BaseLr = 5e-3, EndLr = 1e-3, Loss = new LossConfig(DiscStart: 1000) });
        var probe = new TrainingDataLoader(SyntheticImages(), new DataConfig(16, ImageSize: 32, Augmentation: Augmentation.CenterCrop)).Next();
        double Eval()                                                           // full-length decode of a fixed batch
        {
            using var _ = no_grad();
            var o = t.Tokenizer.Forward(new TokenizerStepInput(probe, full(16, 6L), false, false));
            return F.mse_loss(o.Reconstruction, probe).item<float>();
        }
        double before = Eval();
        var rec = new List<double>();
        for (int i = 0; i < 40; i++)
        {
            var r = t.TrainStep();
            rec.Add(r.Scalars["rec"]);
            foreach (var key in new[] { "perceptual", "gen_adv", "vq", "commit", "feature_rec", "semantic", "semantic_weighted", "total_g",
                         "grad_norm_g", "lr", "img_per_s", "k_mean", "lambda_mean", "codes_used" })
                Assert.True(r.Scalars.ContainsKey(key), $"missing scalar {key}");
        }
        double after = Eval();
        output.WriteLine($"held-out rec loss {before:F4} -> {after:F4}");
        Assert.True(after < 0.5 * before, $"held-out rec loss {before:F4} -> {after:F4} (train {rec.Take(5).Average():F4} -> {rec.TakeLast(5).Average():F4})");
        Assert.Equal(40, t.Step);
        Assert.Equal(t.LearningRateAt(39), t.OptimizerG.LearningRate);       // lr(t) set after step t
    }

    [Fact]
    public void GanStepReportsDiscriminatorScalars()
    {
        using var t = MakeTrainer(Small(4));
        var r = t.TrainStep();
        foreach (var key in new[] { "total_d", "logits_real", "logits_fake", "grad_norm_d", "lr_disc", "gen_adv", "adv_weight" })
            Assert.True(r.Scalars.ContainsKey(key), $"missing scalar {key}");
        Assert.Equal(0.5, r.Scalars["adv_weight"]);
        Assert.Equal(t.Config.BaseLr, r.Scalars["lr"]);                        // step 0 runs at the construction lr
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]   // + two drawn semantic prefixes (their K draws come from the checkpointed K generator) and the direct terms
    public void ResumeFromSavedStateIsBitIdentical(bool prefixesAndDirect)
    {
        var cfg = Small(6) with { UseEma = true, EmaDecay = 0.9 };
        if (prefixesAndDirect)
            cfg = cfg with { SemanticPrefixes = new SemanticPrefixConfig(Count: 2), Loss = new LossConfig(UseDirectRecLoss: true, AuxLossEnd: 5) };
        using var a = MakeTrainer(cfg);
        using var b = MakeTrainer(cfg, (DummyTokenizer)a.Tokenizer, a.Discriminator);
        var aScalars = Enumerable.Range(0, 6).Select(_ => a.TrainStep().Scalars).ToList();
        for (int i = 0; i < 3; i++) b.TrainStep();
        var dir = Path.Combine(Directory.CreateTempSubdirectory("trainer").FullName, "state");
        b.Save(dir);
        b.Save(dir);                                                          // overwrite in place works
        Assert.True(File.Exists(Path.Combine(dir, "trainer.json")));

        using var c = MakeTrainer(cfg);
        Reinit(c.Tokenizer.Module, 99);                                       // different init, replaced by Load
        Assert.NotEqual(0.0, TrainingFixtures.MaxDiff(c.Tokenizer.Module.parameters().First(), a.Tokenizer.Module.parameters().First()));
        c.Load(dir);
        Assert.Equal(3, c.Step);
        Assert.Equal(new DataPosition(0, 3), c.Data.Position);
        var cScalars = Enumerable.Range(0, 3).Select(_ => c.TrainStep().Scalars).ToList();

        foreach (var (name, p) in a.Tokenizer.Module.state_dict())
            Assert.True(p.eq(c.Tokenizer.Module.state_dict()[name]).all().item<bool>(), $"tokenizer {name} differs");
        foreach (var (name, p) in a.Discriminator.state_dict())
            Assert.True(p.eq(c.Discriminator.state_dict()[name]).all().item<bool>(), $"discriminator {name} differs");
        foreach (var (name, p) in a.Ema!.StateDict())
            Assert.True(p.eq(c.Ema!.StateDict()[name]).all().item<bool>(), $"ema {name} differs");
        foreach (var (name, p) in a.OptimizerD.StateDict())
            Assert.True(p.eq(c.OptimizerD.StateDict()[name]).all().item<bool>(), $"D optimizer {name} differs");
        for (int i = 0; i < 3; i++)
            foreach (var key in new[] { "total_g", "total_d", "k_mean", "grad_norm_g", "lr" }
                         .Concat(prefixesAndDirect ? new[] { "k_prefixes_mean", "semantic_sampled_k" } : Array.Empty<string>()))
                Assert.Equal(aScalars[3 + i][key], cScalars[i][key]);
        if (prefixesAndDirect) Assert.True(aScalars[3].ContainsKey("direct_rec") && !aScalars[5].ContainsKey("direct_rec"));   // s = 4 < 5 <= 6
    }

    [Theory]
    [InlineData("commit", "commit")]
    [InlineData("recon", "rec")]
    public void NonFiniteLossStopsTrainingNamingStepAndTerm(string inject, string term)
    {
        using var t = MakeTrainer(Small(10));
        ((DummyTokenizer)t.Tokenizer).InjectNaN = (3, inject);
        t.TrainStep();
        t.TrainStep();
        var ex = Assert.Throws<TrainingDivergedException>(() => t.TrainStep());
        Assert.Equal(3, ex.Step);
        Assert.Equal(term, ex.Term);
        Assert.Contains("step 3", ex.Message);
        Assert.Contains($"'{term}'", ex.Message);
    }

    [Fact]
    public void DecoderFinetuneFreezesAllButTheDecoderAndTurnsTheTeacherOff()
    {
        using var t = MakeTrainer(Small(10) with { Finetune = new DecoderFinetuneConfig(StartStep: 2) });
        t.TrainStep();
        var r1 = t.TrainStep();
        Assert.Equal(1, r1.Scalars["semantic_on"]);
        var before = t.Tokenizer.Module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var r2 = t.TrainStep();
        Assert.True(t.FinetuneApplied);
        Assert.Equal(0, r2.Scalars["semantic_on"]);
        Assert.Equal(0, r2.Scalars["semantic"]);
        foreach (var (name, p) in t.Tokenizer.Module.named_parameters())
        {
            bool changed = !p.eq(before[name]).all().item<bool>();
            Assert.True(changed == name.StartsWith("decoder."), $"{name}: changed={changed}");
        }
    }

    [Fact]
    public void DiscriminatorWaitsForDiscStart()
    {
        using var t = MakeTrainer(Small(10) with { Loss = new LossConfig(DiscStart: 3) });
        var d0 = t.Discriminator.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var r1 = t.TrainStep();                                                // s = 1
        var r2 = t.TrainStep();                                                // s = 2
        Assert.False(r1.Scalars.ContainsKey("grad_norm_d"));
        Assert.Equal(0, r2.Scalars["gen_adv"]);
        foreach (var (name, p) in t.Discriminator.state_dict()) Assert.True(p.eq(d0[name]).all().item<bool>(), name);
        var r3 = t.TrainStep();                                                // s = 3: GAN on
        Assert.True(r3.Scalars.ContainsKey("grad_norm_d"));
        Assert.NotEqual(0, r3.Scalars["gen_adv"]);
        Assert.Equal(t.Config.BaseLr, r3.Scalars["lr_disc"]);                  // first D step uses the construction lr
    }

    [Fact]
    public void LoadRejectsAStateFromADifferentDataSetup()
    {
        using var a = MakeTrainer(Small(4));
        a.TrainStep();
        var dir = Path.Combine(Directory.CreateTempSubdirectory("trainer").FullName, "state");
        a.Save(dir);
        using var b = MakeTrainer(Small(4), batch: 2);
        Assert.Contains("batch", Assert.Throws<InvalidDataException>(() => b.Load(dir)).Message);
    }
}

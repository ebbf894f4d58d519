using ReTok.Models;
using ReTok.Models.IO;
using ReTok.Models.Training;
using ReTok.Tests.Kinds.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace ReTok.Tests.Kinds.TrainTokenizer;

/// <summary>
/// bf16 mixed precision of tokenizer training (runs on the CPU, which has bf16 kernels): one full iteration (G + D step)
/// of the tiny ReTok tokenizer from the same weights, batch and K in fp32 and in bf16. bf16 must really change the
/// arithmetic (it was a no-op before), stay within bf16 accuracy of fp32, and leave every parameter and optimizer
/// state in fp32 (master weights).
/// </summary>
public class MixedPrecisionGpuTests(ITestOutputHelper log)
{
    /// <summary>
    /// Relative tolerance of a loss term, bf16 vs fp32. bf16 keeps 8 significant bits: each cast rounds by at most
    /// 2^-9 = 2e-3 relative. A matmul/conv with fp32 accumulation over rounded inputs and weights errs ~2 x 2^-9 per
    /// layer, and errors of independent roundings add in quadrature over the ~40 linear/conv layers between the image
    /// and a loss (encoder, Q-Formers, decoder): sqrt(40) x 4e-3 = 2.5e-2 for one activation, less after the means a
    /// loss takes. 3e-2 is that bound, not a measurement; terms near zero use an absolute floor of 3e-2 x 1e-2.
    /// </summary>
    const double RelTol = 3e-2, AbsFloor = 3e-4;

    static (Dictionary<string, double> Scalars, TokenizerTrainer Trainer) OneStep(string precision)
    {
        var fx = Npz.Load(TrainTokenizerData.Fixture("jobs_train", "step_ref.npz"));
        var model = TrainTokenizerData.TinyTokenizer();
        var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
        StateDictFile.LoadInto(disc, fx.Where(kv => kv.Key.StartsWith("disc.")).ToDictionary(kv => kv.Key[5..], kv => kv.Value.ToTensor()), "step_ref.npz");
        var data = new TrainingDataLoader(new TensorImageSource(TrainTokenizerData.TinyImagesUint8()),
            new DataConfig(BatchSize: 1, Seed: 0, Augmentation: Augmentation.None));   // batch 1: CPU bf16 convs are slow
        var config = new TrainerConfig(TotalSteps: 10, BaseLr: 1e-4, EndLr: 1e-5, Seed: 0, Precision: precision,
            SemanticWeight: new SemanticWeightConfig(LambdaSchedule.Linear, Lambda0: 0.5, LambdaEnd: 0.0, KStart: 1, KEnd: 256));
        var trainer = new TokenizerTrainer(new ReTokTrainable(model), disc, TrainTokenizerData.FixedPerceptual,
            new TrainTokenizerData.FixedTeacher(model.Config.OutInnerDim), data, config);
        return (trainer.TrainStep().Scalars.ToDictionary(kv => kv.Key, kv => kv.Value), trainer);
    }

    static readonly string[] Terms = { "rec", "perceptual", "gen_adv", "vq", "commit", "feature_rec", "semantic", "semantic_weighted", "total_g", "total_d", "logits_real", "logits_fake" };

    [Fact]
    public void Bf16StepIsWithinBf16ToleranceOfFp32AndKeepsFp32MasterWeights()
    {
        var (f32, t32) = OneStep("auto");   // "auto" is fp32 on the CPU
        var (b16, t16) = OneStep("bf16");
        using (t32) using (t16)
        {
            Assert.True(t32.Precision.IsFloat32);
            Assert.Equal(ScalarType.BFloat16, t16.Precision.Compute);
            int differ = 0;
            foreach (var term in Terms)
            {
                double a = f32[term], b = b16[term], tol = Math.Max(RelTol * Math.Abs(a), AbsFloor);
                log.WriteLine($"{term,-18} fp32 {a,12:G6}  bf16 {b,12:G6}  |diff| {Math.Abs(a - b):E2}  tol {tol:E2}");
                Assert.True(Math.Abs(a - b) <= tol, $"{term}: bf16 {b} vs fp32 {a} (tolerance {tol})");
                if (a != b) differ++;
            }
            // bf16 must change the arithmetic of the network terms (before the fix it was a silent no-op)
            Assert.True(f32["rec"] != b16["rec"] && f32["total_g"] != b16["total_g"], "bf16 gave fp32's losses bit for bit: no bf16 compute happened");
            log.WriteLine($"{differ}/{Terms.Length} terms differ from fp32");
            foreach (var m in new nn.Module[] { t16.Tokenizer.Module, t16.Discriminator })
                foreach (var (name, p) in m.named_parameters())
                {
                    Assert.True(p.dtype == ScalarType.Float32, $"parameter {name} is {p.dtype} after a bf16 step");
                    Assert.True(p.grad is null || p.grad.dtype == ScalarType.Float32, $"gradient of {name} is {p.grad?.dtype}");
                }
            foreach (var (name, v) in t16.OptimizerG.StateDict())
                Assert.True(!v.is_floating_point() || v.dtype == ScalarType.Float32 || v.dtype == ScalarType.Float64, $"optimizer state {name} is {v.dtype}");
            // AdamW's first step moves each weight by lr g/(|g| + eps) (+ decay): +-lr wherever |g| >> eps, so bf16 may
            // flip only the elements whose gradient is below its bf16 error. The fp32 master weights must take steps
            // a bf16 weight could not hold (a bf16 ulp at |w| >= 2^-6 is >= 2^-14 > lr / 2). Only the decoder's output
            // conv is compared for direction (measured 96.9 % agreement): the codes are picked in bf16 (as under the
            // reference's autocast) and the random-init codebook's gaps (~1e-5) are below bf16's resolution, so the
            // encoder side's straight-through gradient comes from other codes (measured ~50 % agreement, i.e. none).
            using var w0 = TrainTokenizerData.TinyTokenizer();
            const double lr = 1e-4;
            foreach (var name in new[] { "decoder.conv_out.weight" })
            {
                var start = w0.state_dict()[name].to(float64);
                var d32 = t32.Tokenizer.Module.state_dict()[name].to(float64) - start;
                var d16 = t16.Tokenizer.Module.state_dict()[name].to(float64) - start;
                var cap = lr * (1 + 1e-4 * start.abs()) + start.abs() * Math.Pow(2, -23);
                Assert.True(d32.abs().le(cap).all().item<bool>() && d16.abs().le(cap).all().item<bool>(), $"{name}: a weight moved by more than one AdamW step of lr {lr}");
                var big = start.abs().ge(Math.Pow(2, -6)).logical_and(d16.abs().gt(0.5 * lr));
                long nBig = big.sum().item<long>();
                Assert.True(nBig > 0, $"{name}: no weight took a full step in bf16");
                var agree = d32.sign().eq(d16.sign()).to(float64).mean().item<double>();
                double meanDiff = (d32 - d16).abs().mean().item<double>() / lr;
                log.WriteLine($"{name}: {nBig} sub-ulp fp32 master steps, sign agreement {agree:P2}, mean |step fp32 - step bf16| {meanDiff:F3} lr");
                Assert.True(agree >= 0.9, $"{name}: bf16 and fp32 moved only {agree:P1} of the weights the same way");
            }
        }
    }

    [Fact]
    public void AmpScopeCastsLinearAndConvButNotNorms()
    {
        var lin = nn.Linear(4, 3);
        var x = randn(2, 4);
        Assert.Equal(ScalarType.Float32, Amp.Linear(lin, x).dtype);
        using (Amp.Enable(ScalarType.BFloat16))
        {
            var y = Amp.Linear(lin, x);
            Assert.Equal(ScalarType.BFloat16, y.dtype);
            Assert.Equal(ScalarType.Float32, Amp.F32(y).dtype);
            using (Amp.Enable(null)) Assert.Equal(ScalarType.Float32, Amp.Linear(lin, x).dtype);
            Assert.Equal(ScalarType.BFloat16, Amp.Dtype);
        }
        Assert.Null(Amp.Dtype);
        // gradients reach the fp32 master weight through the cast
        var w = lin.weight!;
        using (Amp.Enable(ScalarType.BFloat16)) Amp.F32(Amp.Linear(lin, x)).sum().backward();
        Assert.Equal(ScalarType.Float32, w.grad!.dtype);
        Assert.True(w.grad.abs().sum().item<float>() > 0);
    }
}

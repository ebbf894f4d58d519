using ReTok.Models.Distributed;
using ReTok.Models.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace ReTok.Tests.Training;

/// <summary>
/// Tokenizer trainer: 2 CPU replicas x 2 images against 1 replica x 4 images, K drawn per global batch (nested dropout on).
/// The discriminator's BatchNorm normalises over each replica's rows, so with the GAN on the single-replica reference
/// runs grad_accumulation 2 (BatchNorm over the same 2-row chunks); with the GAN off it is the plain 4-image batch. The
/// trainer has no dropout (the stand-in perceptual loss is deterministic), so no RNG stream needs aligning here.
/// </summary>
public class TokenizerDataParallelTests(ITestOutputHelper output)
{
    static readonly string[] Compared = { "total", "rec", "perceptual", "vq", "commit", "grad_norm_g", "grad_norm_d", "total_d", "lr" };

    // Measured on CPU (fp32, 2 threads): loss terms and global grad norms agree to <= 1.1e-7 relative (one ulp: rank means of
    // means). Weights: GAN on (reference = 2 accumulated 2-row chunks, the same kernels as the replicas) bitwise equal, also
    // after the 2 -> 1 replica resume; GAN off (reference = one 4-row matmul) <= 4e-6 after 3 steps at lr 2e-3: where a
    // gradient element is ~0 from cancellation, Adam's m/sqrt(v) turns its ulp noise into an O(lr) update. Tolerances keep
    // ~10-50x room and stay below one lr-sized step (2e-3), which is what a wrong slice, K or gradient average produces.
    const double ScalarRel = 5e-6;
    static double WeightAbs(bool chunkAligned) => chunkAligned ? 1e-6 : 4e-5;

    static TrainerConfig Cfg(bool gan) => TrainerTests.Small(6) with { Loss = new LossConfig(DiscStart: gan ? 0 : 1000) };

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TwoReplicasOfTwoImagesMatchOneReplicaOfFour(bool gan)
    {
        using var single = TrainerTests.MakeTrainer(Cfg(gan) with { GradAccumulationSteps = gan ? 2 : 1 });
        var comms = CpuCommunicator.CreateGroup(2);
        var dp = DataParallel.Run(comms, r => TrainerTests.MakeTrainer(Cfg(gan), comm: comms[r]));
        for (int step = 0; step < 3; step++)
        {
            var s1 = single.TrainStep().Scalars;
            var rs = DataParallel.Run(comms, r => dp[r].TrainStep().Scalars);
            foreach (var key in Compared.Where(s1.ContainsKey))
                foreach (var s in rs)
                {
                    double rel = Math.Abs(s1[key] - s[key]) / Math.Max(1e-12, Math.Abs(s1[key]));
                    output.WriteLine($"step {step} {key}: {s1[key]} vs {s[key]} (rel {rel:E1})");
                    Assert.True(rel <= ScalarRel, $"step {step} {key}: {s1[key]} vs {s[key]}");
                }
            Assert.Equal(s1["k_mean"], rs[0]["k_mean"]); // K comes from the global draw
        }
        AssertSameWeights(single, dp, WeightAbs(chunkAligned: gan));
        foreach (var t in dp) t.Dispose();
    }

    [Fact]
    public void SavedWithTwoReplicasResumesWithOne()
    {
        var cfg = Cfg(gan: true) with { UseEma = true, EmaDecay = 0.9 };
        using var straight = TrainerTests.MakeTrainer(cfg with { GradAccumulationSteps = 2 });
        for (int i = 0; i < 4; i++) straight.TrainStep();

        var dir = Path.Combine(Directory.CreateTempSubdirectory("retok-dp-tok").FullName, "state");
        var comms = CpuCommunicator.CreateGroup(2);
        DataParallel.Run(comms, r =>
        {
            using var t = TrainerTests.MakeTrainer(cfg, comm: comms[r]);
            t.TrainStep();
            t.TrainStep();
            if (r == 0) t.Save(dir);
            return 0;
        });
        using var resumed = TrainerTests.MakeTrainer(cfg with { GradAccumulationSteps = 2 });
        resumed.Load(dir);
        Assert.Equal(2, resumed.Step);
        resumed.TrainStep();
        resumed.TrainStep();
        AssertSameWeights(straight, new[] { resumed }, WeightAbs(chunkAligned: true));
        foreach (var (n, e) in straight.Ema!.StateDict())
            Assert.True((e - resumed.Ema!.StateDict()[n]).abs().max().item<float>() < WeightAbs(chunkAligned: true), $"ema {n}");
    }

    void AssertSameWeights(TokenizerTrainer reference, IEnumerable<TokenizerTrainer> others, double tol)
    {
        double max = 0;
        foreach (var o in others)
            foreach (var (a, b) in new[] { (reference.Tokenizer.Module, o.Tokenizer.Module), ((nn.Module)reference.Discriminator, (nn.Module)o.Discriminator) })
            {
                var pb = b.named_parameters().ToDictionary(p => p.name, p => p.parameter);
                foreach (var (n, p) in a.named_parameters())
                {
                    double d = (p - pb[n]).abs().max().item<float>();
                    max = Math.Max(max, d);
                    Assert.True(d < tol, $"{n}: max |1 replica - data parallel| = {d}");
                }
            }
        output.WriteLine($"max weight deviation {max:E2}");
    }
}

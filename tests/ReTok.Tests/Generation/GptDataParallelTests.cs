using ReTok.Models.Distributed;
using ReTok.Models.Generation;
using Xunit.Abstractions;
using static ReTok.Tests.Generation.GeneratorFixtures;
using static TorchSharp.torch;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Tests.Generation;

/// <summary>
/// N CPU replicas x batch B against 1 replica x batch N*B. Dropout of every kind is off (SeededTiny): the replicas'
/// dropout draws are per-rank streams (docs/training.md), so only the dropout-free run is comparable sample for sample.
/// </summary>
public class GptDataParallelTests(ITestOutputHelper output)
{
    static Gpt SeededTiny() => new(TinyConfig() with { ClassDropoutProb = 0 }, new Generator(3));

    static (Tensor Codes, Tensor Labels) Batch()
    {
        var t = Npz("train.npz");
        return (cat(new[] { t.T("codes"), t.T("codes").flip(1) }, 0), cat(new[] { t.T("labels"), t.T("labels") }, 0));
    }

    // per step a different global batch: the rows rotated by the step
    static (Tensor, Tensor) At((Tensor C, Tensor L) b, long step) => (b.C.roll(step, 0), b.L.roll(step, 0));

    static readonly GptTrainOptions Opts = new(Lr: 1e-3, WarmupSteps: 2, TotalSteps: 10);

    // Measured on CPU (fp32, 2 threads): averaged gradients equal the 2B gradient bitwise (max |diff| 0: halving a sum of two
    // half-batch means is exact here), losses differ by one ulp (~1e-7 relative; the logged loss is a mean of two means),
    // grad norms agree exactly, weights after 3 AdamW steps by <= 7.5e-9 and after the 2 -> 1 replica resume by <= 1.9e-8
    // (Adam's g/sqrt(v) amplifies ulp drift where g ~ 0). The tolerances leave ~50-100x room for other thread counts and
    // BLAS paths yet are far below what a wrong slice, a missing division by N or a per-rank clip would cause (~lr = 1e-3).
    const double LossRel = 1e-5, GradAbs = 1e-6, WeightAbs = 1e-6;

    [Fact]
    public void TwoReplicasOfBMatchOneReplicaOf2B()
    {
        var data = Batch();
        using var single = SeededTiny();
        using var t1 = new GptTrainer(single, Opts);
        var comms = CpuCommunicator.CreateGroup(2);
        var models = new[] { SeededTiny(), SeededTiny() };
        var tr = DataParallel.Run(comms, r => new GptTrainer(models[r], Opts, comm: comms[r]));

        // the averaged gradient of one forward/backward (outside the trainer, which zeroes grads after its step)
        var (c0, l0) = data;
        var (_, loss) = single.forward(c0.narrow(1, 0, c0.shape[1] - 1), l0, targets: c0);
        loss!.backward();
        var grads = DataParallel.Run(comms, r =>
        {
            var (c, l) = (DataParallel.Slice(c0, r, 2), DataParallel.Slice(l0, r, 2));
            var (_, lr) = models[r].forward(c.narrow(1, 0, c.shape[1] - 1), l, targets: c);
            lr!.backward();
            DataParallel.AverageGradients(models[r].parameters().ToList(), comms[r]);
            return models[r].named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        });
        double maxGrad = 0;
        foreach (var (n, p) in single.named_parameters())
        {
            maxGrad = Math.Max(maxGrad, MaxAbsDiff(p.grad!, grads[0][n]));
            Assert.Equal(0f, MaxAbsDiff(grads[0][n], grads[1][n])); // every rank holds the same reduced gradient
        }
        output.WriteLine($"max |grad 1x2B - mean of 2xB| = {maxGrad:E2}");
        Assert.True(maxGrad < GradAbs, $"gradients differ by {maxGrad}");
        t1.Optimizer.zero_grad();
        foreach (var t in tr) t.Optimizer.zero_grad();

        for (long step = 0; step < 3; step++)
        {
            var (c, l) = At(data, step);
            var r1 = t1.TrainStep(c, l);
            var rs = DataParallel.Run(comms, r => tr[r].TrainStep(DataParallel.Slice(c, r, 2), DataParallel.Slice(l, r, 2)));
            output.WriteLine($"step {step}: loss {r1.Loss} vs {rs[0].Loss}, norm {r1.GradNorm} vs {rs[0].GradNorm}");
            foreach (var r in rs)
            {
                Assert.True(Math.Abs(r1.Loss - r.Loss) <= LossRel * Math.Abs(r1.Loss), $"step {step}: loss {r1.Loss} vs {r.Loss}");
                Assert.True(Math.Abs(r1.GradNorm - r.GradNorm) <= LossRel * r1.GradNorm, $"step {step}: grad norm {r1.GradNorm} vs {r.GradNorm}");
            }
            Assert.Equal(rs[0], rs[1]);
        }
        AssertSameWeights(single, models);
    }

    [Fact]
    public void SavedWithTwoReplicasResumesWithOneAsTheUninterruptedRun()
    {
        var data = Batch();
        var dir = Directory.CreateTempSubdirectory("retok-dp-").FullName;
        try
        {
            using var straight = SeededTiny();
            using (var t = new GptTrainer(straight, Opts))
                for (long s = 0; s < 4; s++) { var (c, l) = At(data, s); t.TrainStep(c, l); }

            // two replicas for steps 0-1, then the state rank 0 would checkpoint (model + AdamW state + step)
            var comms = CpuCommunicator.CreateGroup(2);
            var models = new[] { SeededTiny(), SeededTiny() };
            DataParallel.Run(comms, r =>
            {
                using var t = new GptTrainer(models[r], Opts, comm: comms[r]);
                for (long s = 0; s < 2; s++)
                {
                    var (c, l) = At(data, s);
                    t.TrainStep(DataParallel.Slice(c, r, 2), DataParallel.Slice(l, r, 2));
                }
                if (r == 0) t.Optimizer.save_state_dict(Path.Combine(dir, "optimizer.bin"));
                return 0;
            });

            using var resumed = SeededTiny();
            using (no_grad()) foreach (var (n, p) in resumed.named_parameters()) p.copy_(models[0].get_parameter(n)!);
            using (var t = new GptTrainer(resumed, Opts, startStep: 2))
            {
                t.Optimizer.load_state_dict(Path.Combine(dir, "optimizer.bin"));
                for (long s = 2; s < 4; s++) { var (c, l) = At(data, s); t.TrainStep(c, l); }
            }
            AssertSameWeights(straight, new[] { resumed });
        }
        finally { Directory.Delete(dir, true); }
    }

    void AssertSameWeights(Gpt reference, IEnumerable<Gpt> others)
    {
        double max = 0;
        foreach (var m in others)
            foreach (var (n, p) in reference.named_parameters())
            {
                var d = MaxAbsDiff(p, m.get_parameter(n)!);
                max = Math.Max(max, d);
                Assert.True(d < WeightAbs, $"{n}: max |1 replica - data parallel| = {d}");
            }
        output.WriteLine($"max weight deviation {max:E2}");
    }
}

using ReTok.Models.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ReTok.Tests.Training;

public class OptimTests
{
    [Fact]
    public void CosineScheduleMatchesReference()
    {
        var fx = TrainingFixtures.Load("optim.npz");
        var steps = fx["lr.steps"].data<long>().ToArray();
        foreach (var (tag, warm) in new[] { ("nowarm", 0L), ("warm", 100L) })
        {
            var reference = fx[$"lr.{tag}"].data<double>().ToArray();
            for (int i = 0; i < steps.Length; i++)
                Assert.Equal(reference[i], LrSchedule.CosineWithWarmup(steps[i], 1e-4, warm, 1000, 1e-5), 15);
        }
    }

    [Fact]
    public void AdamWClipAndEmaMatchTorchIncludingSkippedNullGrads()
    {
        const double tol = 1e-6;
        var fx = TrainingFixtures.Load("optim.npz");
        var a = new Parameter(fx["adamw.a0"].clone());
        var b = new Parameter(fx["adamw.b0"].clone());
        var named = new List<(string, Parameter)> { ("a", a), ("b", b) };
        var opt = new NamedAdamW(named, lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 1e-4);
        using var ema = new Ema(named, decay: 0.9);
        var lrs = fx["adamw.lrs"].data<double>().ToArray();
        var norms = fx["adamw.norms"].data<double>().ToArray();
        for (int t = 0; t < 6; t++)
        {
            opt.ZeroGrad();
            Assert.Null(b.grad);
            a.grad = fx[$"adamw.ga{t}"].clone();
            if (t is not (1 or 4)) b.grad = fx[$"adamw.gb{t}"].clone();
            Assert.Equal(norms[t], GradClip.ClipGradNorm(new[] { a, b }, 10.0), 4);
            opt.LearningRate = lrs[t];
            opt.Step();
            ema.Update(named);
            Assert.InRange(TrainingFixtures.MaxDiff(a, fx[$"adamw.a{t + 1}"]), 0, tol);
            Assert.InRange(TrainingFixtures.MaxDiff(b, fx[$"adamw.b{t + 1}"]), 0, tol);
            var e = ema.StateDict();
            Assert.InRange(TrainingFixtures.MaxDiff(e["a"], fx[$"ema.a{t + 1}"]), 0, tol);
            Assert.InRange(TrainingFixtures.MaxDiff(e["b"], fx[$"ema.b{t + 1}"]), 0, tol);
        }
        Assert.True(norms[2] > 10, "fixture step 2 must exercise clipping");
    }

    [Fact]
    public void OptimizerStateRoundTripsAndResumesIdentically()
    {
        var g = new torch.Generator(5);
        Parameter P() => new Parameter(randn(new long[] { 4, 3 }, generator: new torch.Generator(9)));
        var (p1, p2) = (P(), P());
        var o1 = new NamedAdamW(new[] { ("w", p1) }, lr: 1e-2);
        var grads = Enumerable.Range(0, 4).Select(_ => randn(new long[] { 4, 3 }, generator: g)).ToList();
        for (int i = 0; i < 2; i++) { o1.ZeroGrad(); p1.grad = grads[i].clone(); o1.Step(); }
        var o2 = new NamedAdamW(new[] { ("w", p2) }, lr: 5);
        using (no_grad()) p2.copy_(p1);
        o2.LoadStateDict(o1.StateDict());
        Assert.Equal(1e-2, o2.LearningRate);
        for (int i = 2; i < 4; i++)
        {
            o1.ZeroGrad(); p1.grad = grads[i].clone(); o1.Step();
            o2.ZeroGrad(); p2.grad = grads[i].clone(); o2.Step();
        }
        Assert.Equal(0.0, TrainingFixtures.MaxDiff(p1, p2));
        var bad = o1.StateDict();
        bad["w.exp_avg"] = zeros(2, 2);
        Assert.Contains("w.exp_avg", Assert.Throws<InvalidDataException>(() => o2.LoadStateDict(bad, "opt.safetensors")).Message);
    }

    [Fact]
    public void GradAccumulationAndPrecisionHelpers()
    {
        var acc = new GradAccumulation(2);
        Assert.Equal(0.5, acc.LossScale);
        Assert.Equal(2, acc.Split(zeros(4, 3)).Count);
        Assert.Throws<ArgumentException>(() => acc.Split(zeros(3, 3)));
        var cpu = Precision.Resolve("auto", CPU);
        Assert.True(cpu.IsFloat32);
        var x = ones(2);
        Assert.Same(x, cpu.In(x));
        var bf = Precision.Resolve("bf16", CPU);
        Assert.Equal(ScalarType.BFloat16, bf.In(x).dtype);
        Assert.Equal(ScalarType.Float32, Precision.Out(bf.In(x)).dtype);
        Assert.Throws<ArgumentException>(() => Precision.Resolve("fp16", CPU));
    }
}

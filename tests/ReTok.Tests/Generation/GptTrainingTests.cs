using ReTok.Models.Generation;
using static ReTok.Tests.Generation.GeneratorFixtures;
using static TorchSharp.torch;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Tests.Generation;

/// <summary>
/// Runs alone: the activation-checkpointing test seeds and replays TorchSharp's process-wide CPU generator, which
/// tests running in parallel would advance between the plain and the checkpointed forward.
/// </summary>
[CollectionDefinition("GlobalCpuGenerator", DisableParallelization = true)]
public class GlobalCpuGeneratorCollection { }

[Collection("GlobalCpuGenerator")]
public class GptTrainingTests
{
    [Fact]
    public void WsdScheduleMatchesReference()
    {
        var w = Npz("wsd.npz");
        var steps = w["steps"].As<long>();
        foreach (var dt in new[] { "sqrt", "linear", "square", "cosine" })
        {
            var s = new WsdSchedule(1e-4, 5000, 1_500_000, 0.2, dt);
            var want = w[dt].As<double>();
            for (int i = 0; i < steps.Length; i++)
                Assert.True(Math.Abs(s.LrAt(steps[i]) - want[i]) <= 1e-15, $"{dt} step {steps[i]}: {s.LrAt(steps[i])} vs {want[i]}");
        }
        var rel = new GptTrainOptions().Schedule; // release: warmup 5000, hold to 1.2M, sqrt decay to 0 at 1.5M
        Assert.Equal(1e-6, rel.LrAt(0), 15);
        Assert.Equal(1e-4, rel.LrAt(1_199_999));
        Assert.Equal(0.0, rel.LrAt(1_500_000));
    }

    [Fact]
    public void ParamGroupsDecayEveryMatrixAndNoVector()
    {
        using var model = TinyModel();
        using var opt = GptTraining.CreateOptimizer(model, new GptTrainOptions());
        var groups = opt.ParamGroups.Cast<TorchSharp.Modules.AdamW.ParamGroup>().ToList();
        Assert.Equal(2, groups.Count);
        Assert.Equal(0.05, groups[0].Options.weight_decay);
        Assert.Equal(0.0, groups[1].Options.weight_decay);
        Assert.Equal((0.9, 0.95), groups[0].Betas);
        // 2-D: positional_embedding, both embedding tables, 5 linears x 2 layers, output = 14; 1-D: 2 norms x 2 layers + final = 5
        Assert.Equal(14, groups[0].Parameters.Count());
        Assert.Equal(5, groups[1].Parameters.Count());
        Assert.Contains(groups[0].Parameters, p => ReferenceEquals(p, model.positional_embedding));
    }

    [Fact]
    public void TrainStepsMatchReferenceLossesNormsLrsAndWeights()
    {
        // generator.py: 3 steps of train_c2i.py's loop (dropouts 0, class dropout 0.1 from manual_seed(7)), AdamW lr 1e-3,
        // WSD warmup 2 of 10 steps, clip 1.0.
        var t = Npz("train.npz");
        using var model = TinyModel();
        model.ClassDropGenerator = new Generator(7);
        var opts = new GptTrainOptions(Lr: 1e-3, WarmupSteps: 2, TotalSteps: 10);
        using var trainer = new GptTrainer(model, opts);
        var losses = t["losses"].As<double>();
        var norms = t["grad_norms"].As<double>();
        var lrs = t["lrs"].As<double>();
        for (int i = 0; i < 3; i++)
        {
            var r = trainer.TrainStep(t.T("codes"), t.T("labels"));
            Assert.Equal(i, r.Step);
            Assert.True(Math.Abs(r.Loss - losses[i]) < 1e-4, $"step {i} loss {r.Loss} vs {losses[i]}");
            Assert.True(Math.Abs(r.GradNorm - norms[i]) < 1e-4 * norms[i], $"step {i} grad norm {r.GradNorm} vs {norms[i]}");
            Assert.Equal(lrs[i], r.Lr, 12);
        }
        Assert.Equal(t.T("eval_loss_after").item<double>(), GptTrainer.EvalLoss(model, t.T("codes"), t.T("labels")), 1e-4);
        var after = GptCheckpoint.Read(File("train_after.safetensors"));
        var before = GptCheckpoint.Read(File("tiny.safetensors"));
        foreach (var (k, p) in model.state_dict())
        {
            var moved = (after[k] - before[k]).abs().max().item<float>();
            var d = (p - after[k]).abs();
            var far = (d > 1e-6).to_type(float32).mean().item<float>();
            // Adam moves every weight by ~lr per step. All but a handful of weights land within 1e-6 of the reference; the
            // few that do not have near-zero gradients, where Adam's g/sqrt(v) amplifies fp32 rounding (seen: 2 of 16384).
            Assert.True(far < 1e-3, $"{k}: {far:P3} of weights differ by > 1e-6 (reference moved up to {moved})");
            Assert.True(d.max().item<float>() < 0.05 * moved, $"{k}: max |ours - ref| {d.max().item<float>()}, reference moved {moved}");
        }
    }

    [Fact]
    public void Bf16AutocastStepTracksFp32()
    {
        var t = Npz("train.npz");
        using var m32 = TinyModel();
        using var m16 = TinyModel();
        m32.ClassDropGenerator = new Generator(1);
        m16.ClassDropGenerator = new Generator(1);
        using var a = new GptTrainer(m32, new GptTrainOptions(Lr: 1e-3));
        using var b = new GptTrainer(m16, new GptTrainOptions(Lr: 1e-3, AutocastDtype: ScalarType.BFloat16));
        var ra = a.TrainStep(t.T("codes"), t.T("labels"));
        var rb = b.TrainStep(t.T("codes"), t.T("labels"));
        Assert.Equal(ScalarType.Float32, m16.output.weight!.dtype); // master weights stay fp32
        Assert.NotEqual(ra.Loss, rb.Loss);
        Assert.True(Math.Abs(ra.Loss - rb.Loss) < 0.05, $"{ra.Loss} vs {rb.Loss}");
        Assert.True(Math.Abs(ra.GradNorm - rb.GradNorm) < 0.05 * ra.GradNorm);
    }

    [Fact]
    public void TrainStepRejectsCodesLongerThanTheBlock()
    {
        using var model = TinyModel();
        using var trainer = new GptTrainer(model, new GptTrainOptions());
        var e = Assert.Throws<ArgumentException>(() => trainer.TrainStep(zeros(2, 30, int64), zeros(2, int64)));
        Assert.Contains("block_size", e.Message);
    }

    [Fact]
    public void TenCropMatchesTorchvision()
    {
        var t = Npz("tencrop.npz");
        var crops = CodeExtraction.TenCrop(t.T("images"), 32);
        Assert.Equal(new long[] { 2, 10, 3, 32, 32 }, crops.shape);
        Assert.True(MaxAbsDiff(crops, t.T("crops")) < 1e-6);
    }

    [Fact]
    public void ExtractCodesKeepsTheFirst256PerViewSampleMajor()
    {
        // fake encoder: 480 codes per view, code j of view v = 1000*v + j where v is the view's row in the batch
        var images = randint(0, 256, new long[] { 3, 281, 281, 3 }, dtype: uint8, generator: new Generator(0));
        int calls = 0;
        Tensor Encode(Tensor x)
        {
            calls++;
            Assert.Equal(new long[] { 30, 3, 256, 256 }, x.shape);
            Assert.True(x.min().item<float>() >= -1 && x.max().item<float>() <= 1);
            return arange(30, dtype: int64).unsqueeze(1) * 1000 + arange(480, dtype: int64).unsqueeze(0);
        }
        var codes = CodeExtraction.ExtractCodes(images, Encode);
        Assert.Equal(1, calls);
        Assert.Equal(new long[] { 3, 10, 256 }, codes.shape);
        Assert.Equal(ScalarType.Int64, codes.dtype);
        Assert.Equal(1000L * (1 * 10 + 4) + 255, codes[1, 4, 255].item<long>());

        // the flip pair path keeps image i's two views together (the reference's reshape mixes them for B > 1)
        var pair = CodeExtraction.ExtractCodes(images, x => arange(x.shape[0], dtype: int64).unsqueeze(1).expand(-1, 300), tenCrop: false);
        Assert.Equal(new long[] { 3, 2, 256 }, pair.shape);
        Assert.Equal(new long[] { 4, 5 }, new[] { pair[2, 0, 0].item<long>(), pair[2, 1, 0].item<long>() });
        var views = CodeExtraction.CenterAndFlip(images);
        Assert.Equal(0f, MaxAbsDiff(views.select(1, 1), views.select(1, 0).flip(3)));
    }

    static Gpt SeededTiny() => new(TinyConfig() with { ClassDropoutProb = 0 }, new Generator(3)); // no random draws in training

    [Fact]
    public void AccumulatedMicroBatchesMatchOneBigBatch()
    {
        var t = Npz("train.npz");
        var codes = cat(new[] { t.T("codes"), t.T("codes").flip(1) }, 0); // 2x the fixture rows, so the halves differ
        var labels = cat(new[] { t.T("labels"), t.T("labels") }, 0);
        Assert.Equal(0, codes.shape[0] % 4);
        using var big = SeededTiny();
        using var micro = SeededTiny();
        var o = new GptTrainOptions(Lr: 1e-3, WarmupSteps: 2, TotalSteps: 10);
        using var tb = new GptTrainer(big, o);
        using var tm = new GptTrainer(micro, o with { GradAccumSteps = 4 });
        for (int i = 0; i < 3; i++)
        {
            var rb = tb.TrainStep(codes, labels);
            var rm = tm.TrainStep(codes, labels);
            // sums of 4 quarter-batch means vs one mean differ only in fp32 summation order (seen 1e-7 relative: one ulp)
            Assert.True(Math.Abs(rb.Loss - rm.Loss) < 1e-5 * Math.Abs(rb.Loss), $"step {i}: loss {rb.Loss} vs {rm.Loss}");
            Assert.True(Math.Abs(rb.GradNorm - rm.GradNorm) < 1e-5 * rb.GradNorm, $"step {i}: grad norm {rb.GradNorm} vs {rm.GradNorm}");
        }
        var wm = micro.state_dict();
        foreach (var (k, p) in big.state_dict())
        {
            // 3 steps at lr <= 1e-3 move weights by ~3e-3; the ulp-level gradient drift moves them apart by ~4e-9 (seen);
            // 1e-6 leaves room for other thread counts (Adam's g/sqrt(v) amplifies drift where g ~ 0) yet catches a wrong
            // loss scale or a missed micro-batch (both change the update by ~lr).
            Assert.True(MaxAbsDiff(p, wm[k]) < 1e-6, $"{k}: max |big - accumulated| = {MaxAbsDiff(p, wm[k])}");
        }
        Assert.Throws<ArgumentException>(() => new GptTrainer(SeededTiny(), o with { GradAccumSteps = 3 }).TrainStep(codes, labels));
    }

    [Fact]
    public void ActivationCheckpointingGivesThePlainGradients()
    {
        // dropout 0.1 everywhere: the recompute must replay the same masks (CPU generator state saved and restored)
        var t = Npz("train.npz");
        Dictionary<string, Tensor> Grads(bool ckpt, out float loss)
        {
            using var m = new Gpt(TinyConfig(dropout: 0.1), new Generator(3));
            m.ActivationCheckpointing = ckpt;
            using (no_grad()) m.output.weight!.normal_(0, 0.02, generator: new Generator(4)); // zero at init: no gradient would reach the blocks
            m.ClassDropGenerator = new Generator(5);
            m.train();
            manual_seed(11);
            var z = t.T("codes").to(int64);
            var (_, l) = m.forward(z.narrow(1, 0, z.shape[1] - 1), t.T("labels").to(int64), targets: z);
            l!.backward();
            loss = l.item<float>();
            var after = rand(1).item<float>(); // the generator must end where the plain run leaves it
            var g = m.named_parameters().ToDictionary(kv => kv.name, kv => kv.parameter.grad!.clone());
            g["__rng_after__"] = tensor(after);
            return g;
        }
        var plain = Grads(false, out var lp);
        var ck = Grads(true, out var lc);
        Assert.Equal(lp, lc);
        Assert.Equal(plain.Keys.OrderBy(k => k), ck.Keys.OrderBy(k => k));
        foreach (var (k, g) in plain)
        {
            // the recompute runs the same kernels on the same inputs: equal up to the summation order of the
            // parameter-gradient accumulation (seen: bitwise equal on CPU); 1e-6 relative to the gradient scale
            var tol = 1e-6 * Math.Max(1e-3, g.abs().max().item<float>());
            Assert.True(MaxAbsDiff(g, ck[k]) <= tol, $"{k}: max |plain - checkpointed| = {MaxAbsDiff(g, ck[k])} (tol {tol})");
        }
        Assert.True(plain["layers.0.attention.wqkv.weight"].abs().max().item<float>() > 0, "gradients reach the first block");
    }

    [Fact]
    public void EmaFollowsUpdateEmaAfterEveryStepAndResumesFromItsState()
    {
        // utils/ema.py update_ema: ema = decay*ema + (1-decay)*param after each optimizer step, starting as a copy
        var t = Npz("train.npz");
        const double decay = 0.9;
        var o = new GptTrainOptions(Lr: 1e-3, WarmupSteps: 2, TotalSteps: 10, EmaDecay: decay);
        using var model = SeededTiny();
        using var trainer = new GptTrainer(model, o);
        var want = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone().to(float64));
        Dictionary<string, Tensor>? mid = null;
        for (int i = 0; i < 4; i++)
        {
            trainer.TrainStep(t.T("codes"), t.T("labels"));
            foreach (var (n, p) in model.named_parameters()) want[n] = want[n] * decay + p.detach().to(float64) * (1 - decay);
            if (i == 1) mid = trainer.Ema!.StateDict();
        }
        var got = trainer.Ema!.StateDict();
        Assert.Equal(want.Keys.OrderBy(k => k), got.Keys.OrderBy(k => k));
        foreach (var (n, w) in want)
        {
            // fp32 EMA vs the float64 formula: 4 updates of values ~0.1 round at ~1e-8; 1e-6 would still catch a skipped
            // or doubled update (each moves the EMA by 0.1 * the weight change, ~1e-4 at lr 1e-3)
            Assert.True(MaxAbsDiff(w, got[n]) < 1e-6, $"{n}: max |ema - formula| = {MaxAbsDiff(w, got[n])}");
        }
        Assert.True(MaxAbsDiff(got["output.weight"], model.output.weight!) > 1e-5, "the EMA lags the raw weights");

        // resume: a fresh EMA loaded from the step-2 state and fed the same parameters continues identically
        using var resumed = new ReTok.Models.Training.Ema(model.named_parameters(), decay);
        resumed.LoadStateDict(mid!, "test");
        Assert.Equal(0f, MaxAbsDiff(resumed.StateDict()["output.weight"], mid!["output.weight"]));
    }
}

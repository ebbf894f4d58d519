using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using ReTok.Models.Training;
using ReTok.Tests.Kinds.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace ReTok.Tests.Kinds.TrainTokenizer;

/// <summary>
/// Two full training iterations of the tiny ReTok tokenizer (G step + D step each) against the reference loop
/// (GigaTok's vq_train.py body + VQLoss, run by tests/fixtures/gen/jobs_train.py) on the same weights, batch order and K.
///
/// Bounds, and why they hold on any CPU and thread count (float32 results depend on reduction order):
/// * Codes: the fixture stores each token's gap between its nearest and second-nearest code and a bound on how far the
///   two implementations' encoder outputs can move that gap (float32 rounding measured against float64, and at
///   iteration 1 the measured effect of the noise elements' step-0 moves, both with a 10x margin). Tokens with a larger
///   gap must get the reference's code; the few near-ties may take either. The step then runs on the reference's codes
///   (<see cref="CodeForcer"/>): a flipped tie changes the decoder's input discretely (one flip at iteration 1 moved rec
///   by 1.3e-4 on one CI machine), which no rounding bound covers, while everything downstream of the choice is what
///   the comparisons below are about.
/// * Float32 gradient noise: the generator runs each iteration's objective also in float64 and stores, per tensor,
///   sigma = RMS(float32 grad - float64 grad) (the reference's measured rounding error; at iteration 1 combined in
///   quadrature with the RMS gradient change measured when every element whose iteration-0 gradient lies within
///   10 sigma of zero moves by +-2 lr0: Adam's first step is lr * sign(g), and only there may the two implementations'
///   signs differ) and a per-element mask:
///   "resolved" where |float64 grad| > 1000 sigma. We allow the two float32 gradients to disagree by 10 sigma per element
///   (<see cref="NoiseAllowance"/>: another reduction order may be several times noisier than the reference's), so a
///   resolved gradient is known to 1 %. The rest is rounding noise: the attention key bias (softmax ignores q.b_k) and
///   conv biases in front of a GroupNorm have an exactly-zero true gradient, and their float32 gradient (~1e-9..1e-7)
///   is comparable to AdamW's eps = 1e-8.
/// * AdamW (betas 0.9 / 0.95) moves an element by lr * m/(sqrt(v) + eps) per step; after bias correction |m/sqrt(v)|
///   is 1 at step 1 and at most 1.00037 at step 2 (Cauchy-Schwarz over the two gradients), and its derivative with
///   respect to log(g2/g1) is at most 0.5. A relative gradient disagreement d per iteration therefore changes step 1 by
///   at most d lr0 and step 2 by at most 2 d * 0.5 lr1: resolved elements agree within 1 % of (lr0 + lr1); noise
///   elements may land anywhere in +-1.00037 (lr0 + lr1) (plus weight decay) and are only held to that.
/// * Iteration 1's objective: to first order, the step-0 weight differences change it by at most
///   lr0 (1 % * sum_resolved |g1| + 2.0008 * sum_noise |g1|) (float64 g1 from the fixture) on top of rounding.
/// <see cref="AdamWMatchesTorchGivenTheReferenceGradients"/> pins the optimizer itself at rounding level.
/// </summary>
public class TrainStepParityTests(ITestOutputHelper log)
{
    /// <summary>Float32 forward rounding of the loss terms (means over ~4e5 elements: measured below 5e-7 at iteration 0).</summary>
    const double Tol = 1e-4;
    /// <summary>Resolved = |float64 grad| above this many RMS rounding errors of its tensor (fixture's NOISE_K).</summary>
    const double NoiseK = 1000;
    /// <summary>How many of the reference's RMS rounding errors the two float32 gradients may differ by, per element.</summary>
    const double NoiseAllowance = 10;
    /// <summary>Largest |m/sqrt(v)| of bias-corrected Adam at step 1 or 2 with betas (0.9, 0.95).</summary>
    const double AdamMaxRatio = 1.00037;

    /// <summary>Records each forward's nearest-code indices and makes the quantizer use the reference's codes instead:
    /// a near-tie that float32 breaks the other way on this CPU would otherwise make every later comparison discrete.</summary>
    sealed class CodeForcer : ITrainableTokenizer
    {
        readonly ReTokTrainable inner;
        public readonly List<long[]> Codes = new();
        public ReTokTokenizer Model => inner.Model;
        public nn.Module Module => inner.Module;
        public CodeForcer(ReTokTrainable inner, Func<int, long[]> reference)
        {
            this.inner = inner;
            inner.Model.Quantizer.IndexOverride = natural =>
            {
                Codes.Add(natural.flatten().data<long>().ToArray());
                var forced = reference(Codes.Count - 1);
                Assert.Equal(forced.Length, natural.numel());
                return tensor(forced, device: natural.device).view(natural.shape);
            };
        }
        public TokenizerStepOutput Forward(TokenizerStepInput input) => inner.Forward(input);
    }

    /// <summary>np.packbits (big-endian bit order) of the concatenated parameters, unpacked for each name.</summary>
    static Dictionary<string, Tensor> Masks(byte[] packed, string[] names, IReadOnlyDictionary<string, Tensor> shapes)
    {
        var d = new Dictionary<string, Tensor>();
        long at = 0;
        foreach (var n in names)
        {
            long count = shapes[n].numel();
            var bits = new bool[count];
            for (long i = 0; i < count; i++, at++) bits[i] = ((packed[at >> 3] >> (7 - (int)(at & 7))) & 1) != 0;
            d[n] = tensor(bits).view(shapes[n].shape);
        }
        return d;
    }

    /// <summary>
    /// Step 0's outcome where it is a coin flip: AdamW's first step is lr * sign(g), and where the float64 gradient lies
    /// within <see cref="NoiseAllowance"/> sigma of zero (noise.0.sign_free: exactly-zero true gradients among them)
    /// either sign is right. Those elements must lie within AdamW's bound of the reference's, and then take its values,
    /// as does the discriminator (its own noise elements likewise): iteration 1 then compares the two implementations
    /// from the same weights. Measured without this, the ~1.8e5 coin-flip elements' moves shifted iteration 1's
    /// gradients by ~1e-3 relative, machine-dependently (grad_norm_g 13.2284 vs 13.2099 here).
    /// </summary>
    static void ContinueFromTheReferenceCoinFlips(IReadOnlyDictionary<string, NpyArray> fx, ReTokTokenizer model,
        PatchGanDiscriminator disc, string[] names, IReadOnlyDictionary<string, Tensor> before, double lr0)
    {
        using var _ = no_grad();
        var free = Masks(fx["noise.0.sign_free"].As<byte>(), names, before);
        var theirs = fx["retok.0.after_free"].ToTensor();
        var ours = model.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        long at = 0;
        foreach (var n in names)
        {
            long c = free[n].sum().item<long>();
            if (c == 0) continue;
            var want = theirs.narrow(0, at, c);
            at += c;
            var got = ours[n].masked_select(free[n]);
            // two AdamW first steps of opposite sign, plus weight decay on |w| <= 1 and one rounding
            double bound = 2 * AdamMaxRatio * lr0 + 2 * lr0 * 1e-4 + 1e-6;
            double worst = (got - want).abs().max().item<float>();
            Assert.True(worst <= bound, $"{n}: a coin-flip element of step 0 is {worst:E2} from the reference's, beyond AdamW's {bound:E2}");
            ours[n].masked_scatter_(free[n], want);
        }
        Assert.Equal(theirs.numel(), at);
        StateDictFile.LoadInto(disc, fx.Where(kv => kv.Key.StartsWith("retok.0.disc_after.")).ToDictionary(kv => kv.Key["retok.0.disc_after.".Length..], kv => kv.Value.ToTensor()), "step_ref.npz");
    }

    /// <summary>Our ReTok variant (per-image K over the 480 padded tokens through the key-padding mask, lambda(K)); the
    /// fixture's "released" case (K = 256, constant weight) is covered by <see cref="FirstIterationGradientsMatchInFloat64"/>.</summary>
    [Theory]
    [InlineData("retok")]
    public void TwoIterationsMatchTheReferenceLoop(string which)
    {
        var fx = Npz.Load(TrainTokenizerData.Fixture("jobs_train", "step_ref.npz"));
        double S(string key) => fx[key].ToTensor().to(float64).item<double>();
        manual_seed(0);
        using var model = TrainTokenizerData.TinyTokenizer();
        var before = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        using var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
        StateDictFile.LoadInto(disc, fx.Where(kv => kv.Key.StartsWith("disc.")).ToDictionary(kv => kv.Key[5..], kv => kv.Value.ToTensor()), "step_ref.npz");
        var data = new TrainingDataLoader(new TensorImageSource(TrainTokenizerData.TinyImagesUint8()),
            new DataConfig(BatchSize: 2, Seed: 0, Augmentation: Augmentation.None));
        var config = new TrainerConfig(TotalSteps: 10, BaseLr: 1e-4, EndLr: 1e-5, Seed: 0,
            KSampler: which == "released" ? KSamplerConfig.Released : new KSamplerConfig(),
            SemanticWeight: which == "released" ? SemanticWeightConfig.Released
                : new SemanticWeightConfig(LambdaSchedule.Linear, Lambda0: 0.5, LambdaEnd: 0.0, KStart: 1, KEnd: 256));
        var recorder = new CodeForcer(new ReTokTrainable(model), t => fx[$"{which}.{t}.codes"].As<long>());
        using var trainer = new TokenizerTrainer(recorder, disc, TrainTokenizerData.FixedPerceptual,
            new TrainTokenizerData.FixedTeacher(model.Config.OutInnerDim), data, config);
        var names = System.Text.Encoding.UTF8.GetString(fx[$"{which}.param_names"].As<byte>()).Split('\n');
        double lr0 = S($"{which}.0.lr"), lr1 = S($"{which}.1.lr");
        const double relGrad = NoiseAllowance / NoiseK;   // relative disagreement of a resolved gradient

        for (int t = 0; t < 2; t++)
        {
            var r = trainer.TrainStep().Scalars;
            var p = $"{which}.{t}.";
            var k = fx[p + "k"].ToTensor();
            Assert.Equal(k.min().item<long>(), (long)r["k_min"]);
            Assert.Equal(k.max().item<long>(), (long)r["k_max"]);
            var refCodes = fx[p + "codes"].As<long>();
            var margins = fx[p + "margins"].As<double>();
            double ambiguous = S(p + "ambiguous_below");
            Assert.Equal(refCodes.Length, recorder.Codes[t].Length);
            for (int i = 0; i < refCodes.Length; i++)
            {
                if (refCodes[i] == recorder.Codes[t][i]) continue;
                log.WriteLine($"{p}codes: token {i} has code {recorder.Codes[t][i]}, reference {refCodes[i]} (gap {margins[i]:E2}, ambiguous below {ambiguous:E2}); the step uses the reference's");
                Assert.True(margins[i] < ambiguous, $"{p}codes: token {i} has code {recorder.Codes[t][i]}, reference {refCodes[i]}, though its gap {margins[i]:E2} is beyond what rounding and the noise elements' moves can bridge ({ambiguous:E2})");
            }

            // Iteration 1's objective also moved with the step-0 weight differences (first order, see the class summary).
            double budget = t == 0 ? 0 : lr0 * (relGrad * S("noise.1.l1_on_resolved0") + 2 * AdamMaxRatio * S("noise.1.l1_on_unresolved0"));
            foreach (var term in new[] { "rec", "perceptual", "gen_adv", "vq", "commit", "entropy", "feature_rec", "semantic",
                         "semantic_weighted", "total_g", "total_d", "logits_real", "logits_fake" })
            {
                double tol = term == "total_g" ? Tol + budget : Tol;
                log.WriteLine($"{p}{term}: ours {r[term]:F7} ref {S(p + term):F7} diff {Math.Abs(r[term] - S(p + term)):E2} (bound {tol:E2})");
                Assert.True(Math.Abs(r[term] - S(p + term)) <= tol, $"{p}{term}: ours {r[term]}, reference {S(p + term)}");
            }
            // ||g_ours - g_ref|| <= (1 + allowance) * ||g_ref - g_float64||: the measured rounding error, whose square is
            // sum over tensors of numel * sigma^2.
            var sigma = fx[$"noise.{t}.sigma"].As<double>();
            double err = Math.Sqrt(names.Select((n, i) => before[n].numel() * sigma[i] * sigma[i]).Sum());
            double gtol = (1 + NoiseAllowance) * err;
            log.WriteLine($"{p}grad_norm_g: ours {r["grad_norm_g"]:F5} ref {S(p + "grad_norm_g"):F5} (bound {gtol:E2})");
            Assert.True(Math.Abs(r["grad_norm_g"] - S(p + "grad_norm_g")) <= gtol, $"{p}grad_norm_g: ours {r["grad_norm_g"]}, reference {S(p + "grad_norm_g")}, bound {gtol:E2}");
            log.WriteLine($"{p}grad_norm_d: ours {r["grad_norm_d"]:F5} ref {S(p + "grad_norm_d"):F5}");
            Assert.True(Math.Abs(r["grad_norm_d"] - S(p + "grad_norm_d")) <= 2e-3 * S(p + "grad_norm_d"), $"{p}grad_norm_d: ours {r["grad_norm_d"]}, reference {S(p + "grad_norm_d")}");
            Assert.Equal(S(p + "lr"), r["lr"], 12);
            Assert.Equal(S(p + "usage"), r["codebook_usage"], 9);
            if (t == 0) ContinueFromTheReferenceCoinFlips(fx, model, disc, names, before, lr0);
        }

        // What the two AdamW steps changed, element by element where the fixture has the reference's delta and in
        // aggregate per tensor elsewhere: resolved elements within 1 % of (lr0 + lr1), every element within Adam's bound.
        var after = model.state_dict();
        var resolved = Masks(fx["noise.0.resolved"].As<byte>(), names, before);
        var resolved1 = Masks(fx["noise.1.resolved"].As<byte>(), names, before);
        double tolE = relGrad * (lr0 + lr1), maxStep = AdamMaxRatio * (lr0 + lr1);
        var refRes = fx["retok.delta_abssum_resolved"].As<double>();
        long nRes = 0, nAll = 0;
        for (int i = 0; i < names.Length; i++)
        {
            var n = names[i];
            var m = resolved[n].logical_and(resolved1[n]);
            var d = (after[n] - before[n]).to(float64);
            // weight decay: lr * 1e-4 * |w| per step on top of the Adam step; one float32 rounding of w
            var cap = maxStep + (lr0 + lr1) * 1e-4 * before[n].abs().to(float64) + before[n].abs().to(float64) * Math.Pow(2, -23);
            Assert.True(d.abs().le(cap).all().item<bool>(), $"{n}: an element moved by more than AdamW can in two steps");
            long c = m.sum().item<long>();
            double ours = d.abs().masked_select(m).sum().item<double>();
            double theirs = refRes[i];
            log.WriteLine($"{n}: {c} resolved, sum |delta| ours {ours:E6} reference {theirs:E6} (bound {c * tolE:E2})");
            Assert.True(Math.Abs(ours - theirs) <= c * tolE, $"{n}: sum |delta| over its {c} resolved elements ours {ours:E4}, reference {theirs:E4}, bound {c * tolE:E2}");
            nRes += c;
            nAll += m.numel();
        }
        log.WriteLine($"{nRes} of {nAll} elements resolved in both iterations");
        Assert.True(nRes > nAll / 10, $"only {nRes} of {nAll} elements resolved: the fixture no longer tests the update");
        foreach (var key in fx.Keys.Where(k => k.StartsWith($"{which}.delta.")))
        {
            var name = key[$"{which}.delta.".Length..];
            var m = resolved[name].logical_and(resolved1[name]);
            var diff = (after[name] - before[name] - fx[key].ToTensor()).abs().to(float64);
            // max over the elements of a mask (0 when it selects none: e.g. a bias whose true gradient is 0 throughout)
            static double Max(Tensor v) => v.numel() == 0 ? 0 : v.max().item<double>();
            double worst = Max(diff.masked_select(m)) / tolE;
            log.WriteLine($"delta {name}: {m.sum().item<long>()} of {m.numel()} resolved, worst {worst:F3} of the bound, unresolved max |diff| {Max(diff.masked_select(m.logical_not())):E2}");
            Assert.True(worst <= 1, $"{name}: a resolved element moved {worst:F2} x 1 % of (lr0 + lr1) away from the reference");
        }
        var dsd = disc.state_dict();
        foreach (var key in fx.Keys.Where(k => k.StartsWith($"{which}.disc_after.")))
        {
            var name = key[$"{which}.disc_after.".Length..];
            // Iteration 1's fake images differ at 1e-5 (the generator's steps above), and Adam turns small
            // disagreements of small gradients into sizeable steps. A different update direction would show as a
            // deviation ~lr; observed: max 0.25 lr (first conv), 2.6 % of its elements beyond 5 % of lr. Bounds: every
            // element within 0.5 lr, at most 5 % beyond 5 % of lr.
            var d = (dsd[name] - fx[key].ToTensor()).abs();
            double diff = d.max().item<float>(), off = d.gt(0.05 * 1e-4).to(float64).mean().item<double>();
            log.WriteLine($"discriminator {name}: max |diff| {diff:E2}, {off:P2} of the elements beyond 5 % of lr");
            Assert.True(diff <= 0.5 * 1e-4 && off <= 0.05, $"discriminator {name} after two steps: max |diff| {diff:E2}, {off:P2} of the elements beyond 5 % of lr");
        }
    }

    /// <summary>
    /// NamedAdamW against torch.optim.AdamW on real tensors of the model, given the reference's own post-clip float32
    /// gradients of both iterations (retok case): an attention in_proj_bias whose key third has an exactly-zero true
    /// gradient (softmax ignores q.b_k; its float32 gradient is rounding noise of the order of eps = 1e-8, where Adam's
    /// step g/(|g| + eps) is most sensitive), a conv bias in front of a GroupNorm (likewise) and two ordinary weights.
    /// Both sides run the same elementwise operations, each correctly rounded (at most one FMA contraction apart), so
    /// the bound is rounding: 2 ulp of the weight plus 1e-6 of the step (lr * 1.0004 at most, see
    /// <see cref="TwoIterationsMatchTheReferenceLoop"/>) per step.
    /// </summary>
    [Fact]
    public void AdamWMatchesTorchGivenTheReferenceGradients()
    {
        var fx = Npz.Load(TrainTokenizerData.Fixture("jobs_train", "step_ref.npz"));
        using var model = TrainTokenizerData.TinyTokenizer();
        var names = fx.Keys.Where(k => k.StartsWith("adam.0.grad.")).Select(k => k["adam.0.grad.".Length..]).ToList();
        Assert.Equal(4, names.Count);
        var sd = model.state_dict();
        var ps = names.Select(n => (n, new TorchSharp.Modules.Parameter(sd[n].detach().clone()))).ToList();
        var opt = new NamedAdamW(ps, lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 1e-4);
        int tiny = 0;
        for (int t = 0; t < 2; t++)
        {
            double lr = fx[$"retok.{t}.lr"].ToTensor().to(float64).item<double>();
            opt.ZeroGrad();
            foreach (var (n, p) in ps) p.grad = fx[$"adam.{t}.grad.{n}"].ToTensor();
            tiny += ps.Sum(q => (int)q.Item2.grad!.abs().lt(100 * 1e-8).sum().item<long>());
            opt.LearningRate = lr;
            opt.Step();
            foreach (var (n, p) in ps)
            {
                var want = fx[$"adam.{t}.after.{n}"].ToTensor().to(float64);
                var diff = (p.detach().to(float64) - want).abs();
                var bound = want.abs() * Math.Pow(2, -22) + 1e-6 * lr * 1.0004;
                double worst = (diff / bound).max().item<double>();
                log.WriteLine($"AdamW step {t} {n}: max |ours - torch| {diff.max().item<double>():E2} ({worst:F2} of the bound)");
                Assert.True(worst <= 1, $"AdamW step {t} {n}: max |ours - torch| {diff.max().item<double>():E2} exceeds rounding ({worst:F2} of the bound)");
            }
        }
        // the case the test is for: gradients of the order of eps (the exactly-zero true gradients' rounding noise)
        Assert.True(tiny >= 64, $"only {tiny} gradient elements below 100 eps: the fixture no longer exercises Adam near eps");
    }

    /// <summary>Every generator gradient of the first (released) iteration in float64 against the reference's float64
    /// backward: per-tensor norms at 1e-6 relative. This is what pins the backward (rotation trick, masks, SafeConv2d).</summary>
    [Fact]
    public void FirstIterationGradientsMatchInFloat64()
    {
        var fx = Npz.Load(TrainTokenizerData.Fixture("jobs_train", "step_ref.npz"));
        var names = System.Text.Encoding.UTF8.GetString(fx["released.param_names"].As<byte>()).Split('\n');
        var refNorms = fx["f64.grad_norms"].As<double>();
        using var model = TrainTokenizerData.TinyTokenizer();
        using var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
        StateDictFile.LoadInto(disc, fx.Where(kv => kv.Key.StartsWith("disc.")).ToDictionary(kv => kv.Key[5..], kv => kv.Value.ToTensor()), "step_ref.npz");
        model.to(float64).train();
        disc.to(float64).train();
        var data = new TrainingDataLoader(new TensorImageSource(TrainTokenizerData.TinyImagesUint8()), new DataConfig(BatchSize: 2, Seed: 0, Augmentation: Augmentation.None));
        var x = data.Next().to(float64);
        var o = new ReTokTrainable(model).Forward(new TokenizerStepInput(x, full(new long[] { 2 }, 256L, dtype: int64), true, true));
        var loss = new TokenizerLoss(new LossConfig(), disc, TrainTokenizerData.FixedPerceptual);
        var terms = loss.Generator(x, o.Reconstruction, o.Codebook, o.FeatureRecLoss, 1, o.SemanticFeatures,
            new TrainTokenizerData.FixedTeacher(model.Config.OutInnerDim).Features(x));
        Assert.Equal(fx["f64.total_g"].ToTensor().item<double>(), terms.Total.item<double>(), 9);
        terms.Total.backward();
        var ours = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad is null ? 0.0 : p.parameter.grad.norm().item<double>());
        double worst = 0;
        for (int i = 0; i < names.Length; i++)
        {
            double a = ours[names[i]], b = refNorms[i], rel = Math.Abs(a - b) / Math.Max(b, 1e-300);
            if (b > 1e-6) worst = Math.Max(worst, rel);
            Assert.True(Math.Abs(a - b) <= 1e-6 * b + 1e-12, $"{names[i]}: |grad| ours {a:E8}, reference {b:E8}");
        }
        log.WriteLine($"{names.Length} tensors, worst relative difference of |grad| (norms > 1e-6): {worst:E2}");
    }
}

/// <summary>Training makes progress: on two fixed images the tiny tokenizer's reconstruction loss falls by 30 % within
/// eight steps (full objective: GAN, feature reconstruction, semantic stand-in; released K = 256). Seeded, so the same
/// numbers every run (0.579 -> ~0.32).</summary>
public class TrainingProgressTests(ITestOutputHelper log)
{
    [Fact]
    public void ReconstructionLossFallsWithinEightSteps()
    {
        manual_seed(0);
        using var model = TrainTokenizerData.TinyTokenizer();
        using var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
        var data = new TrainingDataLoader(new TensorImageSource(TrainTokenizerData.TinyImagesUint8()),
            new DataConfig(BatchSize: 2, Seed: 0, Augmentation: Augmentation.None));
        var config = TrainerConfig.Released(8) with { BaseLr = 1e-3, EndLr = 1e-4 };
        using var trainer = new TokenizerTrainer(new ReTokTrainable(model), disc, TrainTokenizerData.FixedPerceptual,
            new TrainTokenizerData.FixedTeacher(model.Config.OutInnerDim), data, config);
        var rec = new List<double>();
        for (int t = 0; t < 8; t++) rec.Add(trainer.TrainStep().Scalars["rec"]);
        log.WriteLine("rec: " + string.Join(", ", rec.Select(r => r.ToString("F4"))));
        double first = rec.Take(2).Average(), last = rec.TakeLast(3).Average();
        Assert.True(last < 0.7 * first, $"reconstruction loss did not fall by 30 %: first two steps {first:F4}, last three {last:F4}");
    }
}

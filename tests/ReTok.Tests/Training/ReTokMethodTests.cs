using ReTok.Models.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Tests.Training;

public class ReTokMethodTests
{
    [Fact]
    public void UniformPaddedKSamplingCoversOneToNPlusMUniformly()
    {
        var sampler = new KSampler(new KSamplerConfig());
        var k = sampler.Sample(48_000, new torch.Generator(1)).data<long>().ToArray();
        Assert.Equal(1, k.Min());
        Assert.Equal(480, k.Max());
        Assert.InRange(k.Average(), 238.5, 242.5);                         // (1 + 480) / 2
        var counts = new int[4];
        foreach (var v in k) counts[(v - 1) / 120]++;
        Assert.All(counts, c => Assert.InRange(c, 11_400, 12_600));        // each quarter ~ 12000
        // tail activation (paper.md §1.4): P(position 256 decoded) = 225/480 under padding, 1/256 without
        Assert.Equal(225.0 / 480, sampler.KeepProbability(256), 12);
        Assert.Equal(353.0 / 480, sampler.KeepProbability(128), 12);
        Assert.Equal(449.0 / 480, sampler.KeepProbability(32), 12);
        Assert.InRange(k.Count(v => v >= 256) / (double)k.Length, 225.0 / 480 - 0.01, 225.0 / 480 + 0.01);
        Assert.Equal(1.0 / 256, new KSampler(KSamplerConfig.PriorNestedDropout).KeepProbability(256), 12);
    }

    [Fact]
    public void KSamplingVariantsAndSeeds()
    {
        var prior = new KSampler(KSamplerConfig.PriorNestedDropout).Sample(5000, new torch.Generator(3)).data<long>().ToArray();
        Assert.Equal(256, prior.Max());
        Assert.Equal(1, prior.Min());

        var batch = new KSampler(new KSamplerConfig(PerSample: false));
        var g = new torch.Generator(4);
        var draws = Enumerable.Range(0, 20).Select(_ => batch.Sample(8, g).data<long>().ToArray()).ToList();
        Assert.All(draws, d => Assert.Single(d.Distinct()));
        Assert.True(draws.Select(d => d[0]).Distinct().Count() > 10);

        var pow = new KSampler(new KSamplerConfig(Distribution: KDistribution.PowersOfTwo)).Sample(4000, new torch.Generator(5)).data<long>().ToArray();
        Assert.Equal(new long[] { 1, 2, 4, 8, 16, 32, 64, 128, 256, 480 }, pow.Distinct().Order().ToArray());

        Assert.All(new KSampler(KSamplerConfig.Released).Sample(6, new torch.Generator(6)).data<long>().ToArray(), v => Assert.Equal(256, v));

        var s = new KSampler(new KSamplerConfig());
        Assert.Equal(s.Sample(64, new torch.Generator(9)).data<long>().ToArray(), s.Sample(64, new torch.Generator(9)).data<long>().ToArray());
        Assert.NotEqual(s.Sample(64, new torch.Generator(9)).data<long>().ToArray(), s.Sample(64, new torch.Generator(10)).data<long>().ToArray());
        Assert.Throws<ArgumentException>(() => new KSampler(new KSamplerConfig(MinTokens: 500)));
    }

    /// <summary>Count of value-set hits must be within 5 binomial standard deviations of n·p (a fixed seed makes the test
    /// deterministic; 5 sigma keeps it valid for any seed with probability 1 - 6e-7 per check).</summary>
    static void AssertBinomial(long[] k, Func<long, bool> hit, double p, string what)
    {
        int n = k.Length, c = k.Count(hit);
        double sd = Math.Sqrt(n * p * (1 - p));
        Assert.True(Math.Abs(c - n * p) <= 5 * sd + 1e-9, $"{what}: {c} hits of {n}, expected {n * p:F1} ± {5 * sd:F1}");
    }

    [Theory]
    [InlineData(KDistribution.Uniform, 0.0)]
    [InlineData(KDistribution.ClampToN, 0.0)]
    [InlineData(KDistribution.Uniform, 0.25)]
    [InlineData(KDistribution.ClampToN, 0.25)]
    public void KLawsMatchTheirAnalyticDistribution(KDistribution law, double pN)
    {
        var sampler = new KSampler(new KSamplerConfig(Distribution: law, KEqualsNProb: pN));
        var k = sampler.Sample(48_000, new torch.Generator(11)).data<long>().ToArray();
        // analytic law: base (uniform 1..480, or clamped at 256) mixed with a point mass p at K = N = 256
        double baseAtN = law == KDistribution.ClampToN ? 225.0 / 480 : 1.0 / 480;
        double atN = (1 - pN) * baseAtN + pN;
        Assert.Equal(atN, sampler.Probability(256), 12);
        Assert.Equal(1.0, Enumerable.Range(1, 480).Sum(sampler.Probability), 9);
        AssertBinomial(k, v => v == 256, atN, "P(K = 256)");
        AssertBinomial(k, v => v <= 64, (1 - pN) * 64 / 480, "P(K <= 64)");
        AssertBinomial(k, v => v > 256, law == KDistribution.ClampToN ? 0 : (1 - pN) * 224 / 480, "P(K > 256)");
        Assert.Equal(1, k.Min());
        if (law == KDistribution.ClampToN) Assert.Equal(256, k.Max());
        // KeepProbability is the tail sum of Probability
        foreach (var i in new[] { 1, 32, 128, 256, 257, 480 })
            Assert.Equal(Enumerable.Range(i, 481 - i).Sum(sampler.Probability), sampler.KeepProbability(i), 9);
        AssertBinomial(k, v => v >= 128, sampler.KeepProbability(128), "P(K >= 128)");
    }

    [Fact]
    public void KMixtureZeroKeepsTodaysRandomStream()
    {
        // p = 0 must not consume extra random numbers: a resumed run draws exactly the K it drew before this knob existed
        var a = new KSampler(new KSamplerConfig()).Sample(64, new torch.Generator(9)).data<long>().ToArray();
        var b = new KSampler(new KSamplerConfig(KEqualsNProb: 0.0)).Sample(64, new torch.Generator(9)).data<long>().ToArray();
        Assert.Equal(a, b);
        Assert.All(new KSampler(new KSamplerConfig(KEqualsNProb: 1.0)).Sample(32, new torch.Generator(9)).data<long>().ToArray(), v => Assert.Equal(256, v));
        Assert.Throws<ArgumentException>(() => new KSampler(new KSamplerConfig(KEqualsNProb: 1.5)));
        Assert.Throws<ArgumentException>(() => new KSampler(new KSamplerConfig(KEqualsNProb: double.NaN)));
    }

    /// <summary>
    /// Mean semantic weight E_K[lambda(K)] in closed form (N = 256, N + M = 480; linear lambda = 0.5 (1 - (K-1)/255) up
    /// to K = 256, 0 beyond): default (uniform) sum_{k<=256} = 0.5 (256 - 128) = 64, so 64/480; floor 0.1 under
    /// clamp_to_n: lambda >= 0.1 iff K <= 205 (sum 0.5 (205 - 82) = 61.5), K = 206..255 give 50 x 0.1, K = 256 has mass
    /// 225/480 at 0.1: (61.5 + 5 + 22.5)/480 = 89/480; constant 0.5 (released): 0.5. Each is compared with MeanOver and
    /// with the empirical mean of lambda over 48 000 sampled K (|error| within 5 standard errors; lambda is in [0, 0.5]
    /// so its standard deviation is at most 0.25).
    /// </summary>
    [Theory]
    [InlineData("default", 64.0 / 480)]
    [InlineData("floor_clamp", 89.0 / 480)]
    [InlineData("released", 0.5)]
    [InlineData("floor_mixture", 0.0)]
    public void MeanSemanticWeightOverTheKLaw(string setting, double closedForm)
    {
        var (kc, wc) = setting switch
        {
            "default" => (new KSamplerConfig(), new SemanticWeightConfig()),
            "floor_clamp" => (new KSamplerConfig(Distribution: KDistribution.ClampToN), new SemanticWeightConfig(Floor: 0.1)),
            "released" => (new KSamplerConfig(), SemanticWeightConfig.Released),
            _ => (new KSamplerConfig(KEqualsNProb: 0.5), new SemanticWeightConfig(Floor: 0.05)),
        };
        // p = 0.5 mixture at K = N with floor 0.05: half the default law (uniform 1..480 with floor: lambda >= 0.05 iff
        // K <= 230, sum 0.5 (230 - 229·230/510) = 63.363..., K = 231..480 give 250 x 0.05) plus half at lambda(256) = 0.05
        if (setting == "floor_mixture") closedForm = 0.5 * ((0.5 * (230 - 229.0 * 230 / 510) + 250 * 0.05) / 480) + 0.5 * 0.05;
        var sampler = new KSampler(kc);
        Assert.Equal(closedForm, wc.MeanOver(sampler), 12);
        var lambdas = wc.At(sampler.Sample(48_000, new torch.Generator(21))).data<float>().ToArray();
        Assert.InRange(lambdas.Average(x => (double)x), closedForm - 5 * 0.25 / Math.Sqrt(48_000), closedForm + 5 * 0.25 / Math.Sqrt(48_000));
        Assert.All(lambdas, l => Assert.True(l >= wc.Floor - 1e-7));
    }

    [Fact]
    public void SemanticWeightDecreasesWithK()
    {
        var lin = new SemanticWeightConfig();
        Assert.Equal(0.5, lin.At(1));
        Assert.Equal(0.25, lin.At(128), 2);
        Assert.Equal(0.0, lin.At(256));
        Assert.Equal(0.0, lin.At(480));
        foreach (var cfg in new[] { lin, lin with { Schedule = LambdaSchedule.Cosine }, lin with { Schedule = LambdaSchedule.Step, StepK = 64 },
                     lin with { LambdaEnd = 0.1, KEnd = 480 } })
        {
            var values = Enumerable.Range(1, 480).Select(k => cfg.At(k)).ToArray();
            for (int i = 1; i < values.Length; i++) Assert.True(values[i] <= values[i - 1] + 1e-15, $"{cfg.Schedule} increases at K={i + 1}");
            Assert.Equal(cfg.Lambda0, values[0], 12);
            Assert.Equal(cfg.LambdaEnd, values[^1], 12);
        }
        var cos = lin with { Schedule = LambdaSchedule.Cosine };
        Assert.Equal(0.25, cos.At(128), 2);
        Assert.Equal(0.5, (lin with { Schedule = LambdaSchedule.Step, StepK = 64 }).At(64));
        Assert.Equal(0.0, (lin with { Schedule = LambdaSchedule.Step, StepK = 64 }).At(65));
        Assert.All(Enumerable.Range(1, 480), k => Assert.Equal(0.5, SemanticWeightConfig.Released.At(k)));
        var kt = tensor(new long[] { 1, 129, 300 });
        Assert.Equal(new[] { 0.5f, (float)lin.At(129), 0f }, lin.At(kt).data<float>().ToArray());
    }

    /// <summary>
    /// Per-position weighting by hand (default linear schedule w(k) = 0.5 (1 - (k-1)/255) for k &lt;= 256, 0 beyond):
    /// lambda(K) = (1/K) sum_{k&lt;=K} w(k) = 0.5 (1 - (K-1)/510) for K &lt;= 256 (the mean of k-1 is (K-1)/2), and
    /// sum_{k&lt;=256} w(k) = 0.5 (256 - 128) = 64 so lambda(K) = 64/K beyond. Mean weight under U{1..480}:
    /// (sum_{K&lt;=256} 0.5 (1 - (K-1)/510) + 64 sum_{K=257..480} 1/K)/480 = (96 + 64 (H_480 - H_256))/480 = 0.2837;
    /// under clamp_to_n: (sum_{K&lt;256} 0.5 (1 - (K-1)/510) + 225 lambda(256))/480 = (95.75 + 225 x 0.25)/480 = 152/480.
    /// </summary>
    [Fact]
    public void PerPositionWeightIsTheMeanOfThePrefixPositionsWeights()
    {
        var pos = new SemanticWeightConfig(Weighting: SemanticWeighting.PerPosition);
        foreach (var k in new[] { 1, 2, 3, 64, 128, 255, 256 })
            Assert.Equal(0.5 * (1 - (k - 1) / 510.0), pos.At(k), 12);
        foreach (var k in new[] { 257, 300, 479, 480 })
            Assert.Equal(64.0 / k, pos.At(k), 12);
        Assert.Equal(0.25, pos.At(256), 12);
        // the position weights are the per-sample schedule; a prefix's weight never increases with K and stays above w(K)
        for (int k = 1; k <= 480; k++)
        {
            Assert.Equal(new SemanticWeightConfig().At(k), pos.PositionWeight(k));
            if (k > 1) Assert.True(pos.At(k) <= pos.At(k - 1) + 1e-15, $"lambda increases at K={k}");
            Assert.True(pos.At(k) >= pos.PositionWeight(k) - 1e-15);
        }
        Assert.Equal(new[] { 0.5f, (float)(0.5 * (1 - 99 / 510.0)), (float)(64.0 / 400) }, pos.At(tensor(new long[] { 1, 100, 400 })).data<float>().ToArray());
        // a constant schedule has the same weight either way; a floor enters each position's weight
        Assert.All(Enumerable.Range(1, 480), k => Assert.Equal(0.5, (SemanticWeightConfig.Released with { Weighting = SemanticWeighting.PerPosition }).At(k), 15));
        double floorSum = Enumerable.Range(1, 480).Sum(k => Math.Max(0.1, 0.5 * (1 - Math.Min(k - 1, 255) / 255.0)));
        Assert.Equal(floorSum / 480, (pos with { Floor = 0.1 }).At(480), 12);
        Assert.Throws<ArgumentOutOfRangeException>(() => pos.At(0));

        double harmonic = Enumerable.Range(257, 224).Sum(k => 1.0 / k);
        var uniform = new KSampler(new KSamplerConfig());
        Assert.Equal((96 + 64 * harmonic) / 480, pos.MeanOver(uniform), 12);
        Assert.Equal(152.0 / 480, pos.MeanOver(new KSampler(new KSamplerConfig(Distribution: KDistribution.ClampToN))), 12);
        var lambdas = pos.At(uniform.Sample(48_000, new torch.Generator(22))).data<float>().ToArray();
        double mean = pos.MeanOver(uniform);
        Assert.InRange(lambdas.Average(x => (double)x), mean - 5 * 0.25 / Math.Sqrt(48_000), mean + 5 * 0.25 / Math.Sqrt(48_000));
    }

    [Fact]
    public void SemanticPrefixesDrawFromTheKLawOrAFixedListAndAverageTheirWeights()
    {
        var law = new KSampler(new KSamplerConfig());
        // none: no draw, so the K stream after them is today's
        var g = new torch.Generator(31);
        Assert.Empty(new SemanticPrefixConfig().Sample(law, 8, g));
        Assert.Equal(law.Sample(8, new torch.Generator(31)).data<long>().ToArray(), law.Sample(8, g).data<long>().ToArray());
        // drawn: P per-sample draws in order from the same generator
        var drawn = new SemanticPrefixConfig(Count: 2).Sample(law, 8, new torch.Generator(32));
        var g2 = new torch.Generator(32);
        Assert.Equal(2, drawn.Length);
        Assert.Equal(law.Sample(8, g2).data<long>().ToArray(), drawn[0].data<long>().ToArray());
        Assert.Equal(law.Sample(8, g2).data<long>().ToArray(), drawn[1].data<long>().ToArray());
        var fixedKs = new SemanticPrefixConfig(Ks: new[] { 64, 256 }).Sample(law, 3, new torch.Generator(33));
        Assert.Equal(new long[] { 64, 64, 64 }, fixedKs[0].data<long>().ToArray());
        Assert.Equal(new long[] { 256, 256, 256 }, fixedKs[1].data<long>().ToArray());

        // mean weight of the averaged term: the law's for drawn prefixes, (E_K[lambda] + lambda(64) + lambda(256))/3 for the list
        var w = new SemanticWeightConfig();
        Assert.Equal(w.MeanOver(law), new SemanticPrefixConfig(Count: 3).MeanWeight(w, law), 15);
        Assert.Equal((64.0 / 480 + 0.5 * (1 - 63 / 255.0) + 0) / 3, new SemanticPrefixConfig(Ks: new[] { 64, 256 }).MeanWeight(w, law), 12);
        Assert.Equal(2, new SemanticPrefixConfig(Ks: new[] { 64, 256 }).Extra);

        Assert.Throws<ArgumentException>(() => new SemanticPrefixConfig(Count: -1).Validate(480));
        Assert.Throws<ArgumentException>(() => new SemanticPrefixConfig(Ks: new[] { 481 }).Validate(480));
        Assert.Throws<ArgumentException>(() => new SemanticPrefixConfig(Ks: Array.Empty<int>()).Validate(480));
        Assert.Throws<ArgumentException>(() => new SemanticPrefixConfig(Count: 1, Ks: new[] { 8 }).Validate(480));
    }

    [Fact]
    public void NestedDropoutMasksAndDecodePlans()
    {
        var k = tensor(new long[] { 1, 3 });
        Assert.Equal(new[] { true, false, false, false, true, true, true, false }, NestedDropout.KeepMask(k, 4).data<bool>().ToArray());
        Assert.Equal(new[] { false, true, true, true, false, false, false, true }, NestedDropout.KeyPaddingMask(k, 4).data<bool>().ToArray());

        var plan = NestedDropout.Plan(k);
        Assert.Equal(3, plan.NumTokens);
        Assert.Equal(new long[] { 2, 3 }, plan.KeyPaddingMask!.shape);
        Assert.Equal(new[] { false, true, true, false, false, false }, plan.KeyPaddingMask.data<bool>().ToArray());
        var same = NestedDropout.Plan(tensor(new long[] { 7, 7, 7 }));
        Assert.Equal(7, same.NumTokens);
        Assert.Null(same.KeyPaddingMask);
        Assert.Throws<ArgumentException>(() => NestedDropout.Plan(tensor(new long[] { 0, 2 })));

        var tokens = ones(2, 4, 5);
        var z = NestedDropout.ZeroTail(tokens, k);
        Assert.Equal(new[] { 5f, 0f, 0f, 0f, 5f, 5f, 5f, 0f }, z.sum(-1).data<float>().ToArray());
    }

    [Fact]
    public void FinetuneSelectsTrainableParametersByPrefix()
    {
        var f = new DecoderFinetuneConfig(StartStep: 10);
        Assert.True(f.Trainable("decoder.conv_in.weight"));
        Assert.False(f.Trainable("s1to2decoder.transformer.0.linear1.weight"));
        Assert.False(f.Trainable("encoder.conv_in.weight"));
        Assert.False(f.Trainable("quantize.embedding.weight"));
        var both = f with { TrainablePrefixes = new[] { "decoder.", "s1to2decoder." } };
        Assert.True(both.Trainable("s1to2decoder.transformer.0.linear1.weight"));
        Assert.True(f.TeacherOff);
    }
}

using System.Text.Json;
using ReTok.Models.Generation;
using TorchSharp;
using static ReTok.Tests.Generation.GeneratorFixtures;
using static TorchSharp.torch;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Tests.Generation;

public class SamplingTests
{
    private static List<(string Name, long Seed, int Tokens, SamplingOptions Options)> Cases()
    {
        using var doc = JsonDocument.Parse(System.IO.File.ReadAllText(File("generate_cases.json")));
        return doc.RootElement.EnumerateArray().Select(e => (
            e.GetProperty("name").GetString()!, e.GetProperty("seed").GetInt64(), e.GetProperty("tokens").GetInt32(),
            new SamplingOptions(
                CfgScale: e.GetProperty("cfg_scale").GetDouble(),
                CfgSchedule: e.GetProperty("cfg_schedule").GetString()!,
                WindowStart: e.GetProperty("window_start").ValueKind == JsonValueKind.Null ? null : e.GetProperty("window_start").GetDouble(),
                WindowEnd: e.GetProperty("window_end").GetDouble(),
                CfgInterval: e.GetProperty("cfg_interval").GetInt32(),
                Temperature: e.GetProperty("temperature").GetDouble(),
                TopK: e.GetProperty("top_k").GetInt32(),
                TopP: e.GetProperty("top_p").GetDouble()))).ToList();
    }

    [Fact]
    public void RngProbeAgainstPyTorch113()
    {
        var r = Npz("rng.npz");
        var g = new Generator(0);
        Assert.Equal(0f, MaxAbsDiff(rand(5, generator: g), r.T("rand")));
        Assert.True(MaxAbsDiff(randn(5, generator: g), r.T("randn")) < 1e-6);
        Assert.True(randint(0, 10, new long[] { 8 }, dtype: int64, generator: g).eq(r.T("randint")).all().item<bool>());
        var probs = r.T("probs");
        var draws = cat(Enumerable.Range(0, 20).Select(_ => multinomial(probs, 1, generator: g)).ToArray(), 1);
        var same = draws.eq(r.T("multinomial")).to_type(float32).mean().item<float>();
        Console.WriteLine($"multinomial agreement with torch 1.13: {same}");
        Assert.Equal(1f, same);
    }

    [Fact]
    public void GreedyGenerationMatchesReferenceForEveryScheduleExactly()
    {
        var g = Npz("generate.npz");
        using var model = TinyModel();
        var labels = g.T("labels");
        foreach (var (name, seed, k, o) in Cases().Where(c => c.Options.Temperature == 0))
        {
            var toks = Sampling.Generate(model, labels, k, o, new Generator((ulong)seed));
            Assert.Equal(new long[] { 6, k }, toks.shape);
            var mism = toks.ne(g.T(name)).sum().item<long>();
            Assert.True(mism == 0, $"{name}: {mism} tokens differ\n{toks.str()}\n{g.T(name).str()}");
        }
    }

    [Fact]
    public void SampledGenerationMatchesReferenceTokens()
    {
        var g = Npz("generate.npz");
        using var model = TinyModel();
        foreach (var (name, seed, k, o) in Cases().Where(c => c.Options.Temperature > 0))
        {
            var toks = Sampling.Generate(model, g.T("labels"), k, o, new Generator((ulong)seed));
            var mism = toks.ne(g.T(name)).sum().item<long>();
            Assert.True(mism == 0, $"{name}: {mism} tokens differ");
        }
    }

    [Fact]
    public void TopKTopPFilterMatchesReference()
    {
        var f = Npz("filter.npz");
        var l = f.T("logits");
        void Check(Tensor got, Tensor want)
        {
            Assert.True(got.isinf().eq(want.isinf()).all().item<bool>());
            var keep = want.isfinite();
            Assert.Equal(0f, MaxAbsDiff(got.masked_select(keep), want.masked_select(keep)));
        }
        Check(Sampling.TopKTopPFilter(l, topK: 7), f.T("topk7"));
        Check(Sampling.TopKTopPFilter(l, topP: 0.9), f.T("topp09"));
        Check(Sampling.TopKTopPFilter(l, topP: 0.3), f.T("topp03"));
        Check(Sampling.TopKTopPFilter(l, topK: 20, topP: 0.5), f.T("both"));
        Assert.Equal(7L, Sampling.TopKTopPFilter(l, topK: 7).isfinite().sum(1).min().item<long>());
    }

    [Fact]
    public void CfgSchedulesGiveTheReferenceScalePerToken()
    {
        var s = Npz("schedules.npz");
        int n = 0;
        foreach (var (key, arr) in s)
        {
            // key: {name}_ws{ws|d}_we{we|d}_s{scale}_k{K}
            var p = key.Split('_');
            int k = int.Parse(p[^1][1..]);
            double scale = double.Parse(p[^2][1..], System.Globalization.CultureInfo.InvariantCulture);
            string we = p[^3][2..], ws = p[^4][2..];
            string name = string.Join('_', p[..^4]);
            var o = new SamplingOptions(scale, name, ws == "d" ? null : double.Parse(ws, System.Globalization.CultureInfo.InvariantCulture),
                we == "d" ? 1.0 : double.Parse(we, System.Globalization.CultureInfo.InvariantCulture));
            var per = CfgSchedules.PerToken(o, k);
            Assert.Equal(scale, per[0]); // prefill: raw scale
            Assert.Equal(arr.As<double>(), per[1..]); // exact, including the +1e-4 offsets
            n++;
        }
        Assert.Equal(48, n);

        // release setting (generator.md 3.3): tokens 1..45 at 1.0001, 46..255 at 1.5
        var rel = CfgSchedules.PerToken(SamplingOptions.Release, 256);
        Assert.Equal(1.5, rel[0]);
        Assert.All(rel[1..46], v => Assert.Equal(1.0001, v, 12));
        Assert.All(rel[46..], v => Assert.Equal(1.5, v));
    }

    [Theory]
    [InlineData("cosine")]
    [InlineData("sigmoid")]
    [InlineData("nope")]
    public void UnusableSchedulesAreRefused(string name)
    {
        using var model = TinyModel();
        var e = Assert.Throws<ArgumentException>(() => Sampling.Generate(model, tensor(new long[] { 1 }), 4, new SamplingOptions(2.0, name)));
        Assert.Contains(name, e.Message);
    }

    [Fact]
    public void SeedsReproduceAndFlexibleLengthIsAPrefix()
    {
        using var model = TinyModel();
        var labels = tensor(new long[] { 1, 2, 3, 4 });
        var o = new SamplingOptions(CfgScale: 2.0, CfgSchedule: "step", WindowStart: 0.2, TopK: 20);
        var a = Sampling.Generate(model, labels, 16, o, new Generator(42));
        var b = Sampling.Generate(model, labels, 16, o, new Generator(42));
        var c = Sampling.Generate(model, labels, 16, o, new Generator(43));
        Assert.True(a.eq(b).all().item<bool>());
        Assert.False(a.eq(c).all().item<bool>());
        Assert.Equal(ScalarType.Int64, a.dtype);
        Assert.InRange(a.min().item<long>(), 0, 127);
        Assert.InRange(a.max().item<long>(), 0, 127);

        // constant schedule: the per-token scale does not depend on K, so K=7 is the prefix of K=16
        var oc = new SamplingOptions(CfgScale: 1.75, TopK: 20);
        var full = Sampling.Generate(model, labels, 16, oc, new Generator(5));
        var part = Sampling.Generate(model, labels, 7, oc, new Generator(5));
        Assert.True(part.eq(full.narrow(1, 0, 7)).all().item<bool>());
        Assert.Throws<ArgumentException>(() => Sampling.Generate(model, labels, 17, oc));
        Assert.Throws<ArgumentException>(() => Sampling.Generate(model, tensor(new long[] { 11 }), 4, oc));
    }

    [Fact]
    public void Bf16ModelSamplesWithFp32LogitsAndCloseScores()
    {
        // the sampler's --precision bf16: the whole GPT cast; RMSNorm still normalises in fp32 and logits come out fp32
        using var m32 = TinyModel();
        using var m16 = TinyModel();
        m16.to(bfloat16);
        m32.eval();
        m16.eval();
        using var _ = no_grad();
        var f = Npz("forward.npz");
        var z = f.T("codes");
        using var c32 = m32.NewCache(3, 17);
        using var c16 = m16.NewCache(3, 17);
        var a = cat(new[] { m32.Prefill(f.T("labels"), c32), m32.Decode(z.narrow(1, 0, 15), 1, c32) }, 1);
        var b = cat(new[] { m16.Prefill(f.T("labels"), c16), m16.Decode(z.narrow(1, 0, 15), 1, c16) }, 1);
        Assert.Equal(ScalarType.Float32, b.dtype);
        Assert.True(MaxAbsDiff(a, b) is > 0f and < 0.25f, $"bf16 vs fp32 logits {MaxAbsDiff(a, b)}"); // logits span ~+-10
        var toks = Sampling.Generate(m16, tensor(new long[] { 1, 2 }), 16, new SamplingOptions(CfgScale: 2.0, CfgSchedule: "step"), new Generator(0));
        Assert.Equal(new long[] { 2, 16 }, toks.shape);
    }

    [Fact]
    public void SampledTokenFrequenciesFollowTheGuidedDistribution()
    {
        // The first token's distribution is softmax(uncond + s*(cond-uncond)) of the prefill logits. 20000 draws sit within
        // sampling noise of it (expected total variation ~0.03) and clearly away from the unguided distribution.
        using var model = TinyModel();
        model.eval();
        using var _ = no_grad();
        const double s = 3.0;
        using var cache = model.NewCache(2, 1);
        var lg = model.Prefill(tensor(new long[] { 2, 10 }), cache).select(1, 0);
        var guided = Sampling.CombineCfg(lg, s).softmax(-1)[0].to_type(float64);
        var unguided = lg[0].softmax(-1).to_type(float64);
        var toks = Sampling.Generate(model, full(20000, 2L, int64), 1, new SamplingOptions(CfgScale: s), new Generator(1));
        var freq = toks.flatten().bincount(null, 128).to_type(float64) / 20000.0;
        double Tv(Tensor a, Tensor b) => 0.5 * (a - b).abs().sum().item<double>();
        Assert.True(Tv(freq, guided) < 0.05, $"total variation to the guided distribution {Tv(freq, guided)}");
        Assert.True(Tv(freq, unguided) > 0.1, $"total variation to the unguided distribution {Tv(freq, unguided)}");
    }
}

using System.Text.RegularExpressions;
using ReTok.Models;
using ReTok.Models.Generation;
using TorchSharp;
using static ReTok.Tests.Generation.GeneratorFixtures;
using static TorchSharp.torch;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Tests.Generation;

/// <summary>Device requests resolve to explicit indices; TF32 is a process setting that really reaches libtorch.</summary>
public class DevicesGpuTests
{
    [Theory]
    [InlineData("cuda", "cuda:0")]
    [InlineData("CUDA", "cuda:0")]
    [InlineData("auto", "cuda:0")]
    [InlineData("", "cuda:0")]
    [InlineData(null, "cuda:0")]
    [InlineData("1", "cuda:1")]
    [InlineData("cuda:1", "cuda:1")]
    [InlineData(" cpu ", "cpu")]
    public void RequestsResolveToExplicitDeviceIndices(string? request, string want) =>
        Assert.Equal(want, Devices.Canonical(request, cudaAvailable: true, cudaDeviceCount: 2));

    [Fact]
    public void AutoIsCpuWithoutCudaAndBadRequestsNameTheValue()
    {
        Assert.Equal("cpu", Devices.Canonical("auto", false, 0));
        Assert.Contains("'cuda:0'", Assert.Throws<InvalidOperationException>(() => Devices.Canonical("cuda:0", false, 0)).Message);
        Assert.Contains("only 2", Assert.Throws<InvalidOperationException>(() => Devices.Canonical("cuda:2", true, 2)).Message);
        Assert.Contains("'gpu'", Assert.Throws<ArgumentException>(() => Devices.Canonical("gpu", true, 2)).Message);
        Assert.Contains("'cuda:-1'", Assert.Throws<ArgumentException>(() => Devices.Canonical("cuda:-1", true, 2)).Message);
    }

    [Fact]
    public void ResolvedDevicesCarryTheirIndex()
    {
        // what Resolve builds from a canonical name: TorchSharp's torch.CUDA / Device("cuda") would have index -1
        Assert.Equal(0, new Device(Devices.Canonical("cuda", true, 1)).index);
        Assert.Equal(DeviceType.CPU, Devices.Resolve("cpu").type);
        if (!cuda.is_available())
        {
            Assert.Equal(DeviceType.CPU, Devices.Resolve("auto").type);
            Assert.Throws<InvalidOperationException>(() => Devices.Resolve("cuda"));
        }
        else Assert.Equal(0, Devices.Resolve("cuda").index);
    }

    [Fact]
    public void Tf32SettingReachesLibtorchAndParsesStrictly()
    {
        var before = GpuMath.Current;
        try
        {
            GpuMath.Set(true);
            Assert.Equal((true, true), GpuMath.Current);
            GpuMath.Set(false);
            Assert.Equal((false, false), GpuMath.Current);
        }
        finally { backends.cuda.matmul.allow_tf32 = before.Matmul; backends.cudnn.allow_tf32 = before.Cudnn; }
        Assert.True(GpuMath.ParseTf32(null));
        Assert.True(GpuMath.ParseTf32("on"));
        Assert.False(GpuMath.ParseTf32("0"));
        Assert.False(GpuMath.ParseTf32("OFF"));
        Assert.Contains("RETOK_TF32='maybe'", Assert.Throws<ArgumentException>(() => GpuMath.ParseTf32("maybe")).Message);
    }
}

/// <summary>
/// Seeded draws through <see cref="SeededRandom"/>: the CPU keeps torch's kernels bit for bit; the inverse-CDF path
/// (what a CUDA device runs, with uniforms drawn from the CPU generator) is exact at the CDF boundaries, unbiased, and
/// reproducible, and can be forced on the CPU so that devices can be compared.
/// </summary>
public class SeededRandomGpuTests
{
    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.eq(b).all().item<bool>();

    [Fact]
    public void CpuDrawsAreTorchsKernelsBitForBit()
    {
        var probs = softmax(randn(new long[] { 6, 50 }, generator: new Generator(4)) * 2, -1);
        Assert.True(Same(SeededRandom.Multinomial1(probs, new Generator(9)), multinomial(probs, 1, generator: new Generator(9))));
        Assert.True(Same(SeededRandom.Rand(new long[] { 7 }, new Generator(2), CPU), rand(7, generator: new Generator(2))));
        Assert.True(Same(SeededRandom.Randint(0, 10, new long[] { 9 }, new Generator(3), CPU),
            randint(0, 10, new long[] { 9 }, dtype: int64, generator: new Generator(3))));
        var a = empty(5, 3); var b = empty(5, 3);
        SeededRandom.Normal_(a, 0, 0.02, new Generator(5));
        b.normal_(0, 0.02, new Generator(5));
        Assert.True(Same(a, b));
    }

    [Fact]
    public void InverseCdfPicksTheFirstCategoryAboveTheTargetAndNeverAZeroOne()
    {
        var p = tensor(new float[] { 0.2f, 0f, 0.5f, 0.3f }).view(1, 4).expand(6, 4).contiguous();
        var u = tensor(new double[] { 0.0, 0.1999, 0.2, 0.69, 0.7, 0.999999 }).view(6, 1);
        var got = SeededRandom.InverseCdf(p, u).view(-1).data<long>().ToArray();
        Assert.Equal(new long[] { 0, 0, 2, 2, 3, 3 }, got);
        // unnormalised rows: the target scales with the row sum
        Assert.Equal(2, SeededRandom.InverseCdf(tensor(new float[] { 2, 0, 5, 3 }).view(1, 4), tensor(new[] { 0.5 }).view(1, 1)).item<long>());
    }

    [Fact]
    public void InverseCdfDrawsFollowTheDistribution()
    {
        var p = tensor(new float[] { 0.05f, 0.45f, 0f, 0.3f, 0.2f });
        long n = 40000;
        var draws = SeededRandom.Multinomial1(p.view(1, 5).expand(n, 5), new Generator(11), inverseCdf: true).view(-1);
        var counts = bincount(draws, minlength: 5).to(float64) / n;
        for (int i = 0; i < 5; i++)
        {
            double pi = p[i].item<float>(), sd = Math.Sqrt(pi * (1 - pi) / n);
            // 5 sigma per category: a false alarm has probability ~3e-6 per run
            Assert.True(Math.Abs(counts[i].item<double>() - pi) <= 5 * sd + 1e-12, $"category {i}: {counts[i].item<double>()} vs {pi}");
        }
        Assert.Equal(0, counts[2].item<double>());
    }

    [Fact]
    public void ForcedInverseCdfGenerationIsReproducibleAndAgreesWithMultinomialWhereTheChoiceIsSure()
    {
        using var model = TinyModel();
        var labels = tensor(new long[] { 1, 2, 3 });
        var o = new SamplingOptions(CfgScale: 1.5, CfgSchedule: "step", InverseCdf: true);
        var a = Sampling.Generate(model, labels, 12, o, new Generator(7));
        var b = Sampling.Generate(model, labels, 12, o, new Generator(7));
        Assert.True(Same(a, b));
        Assert.False(Same(a, Sampling.Generate(model, labels, 12, o, new Generator(8))));
        // near-zero temperature: one token has probability ~1, so both draw methods must pick it
        var cold = o with { Temperature = 1e-4 };
        Assert.True(Same(Sampling.Generate(model, labels, 12, cold, new Generator(1)),
            Sampling.Generate(model, labels, 12, cold with { InverseCdf = false }, new Generator(2))));
    }

    [Fact]
    public void NoSourceBuildsAGeneratorForADeviceOrDrawsWithOneOnADevice()
    {
        // TorchSharp 0.107 ignores a Generator's device (always CPU); a generator passed to a kernel on a CUDA tensor
        // throws there. Seeded draws on possibly-CUDA tensors must go through SeededRandom.
        var src = RepoPaths.File("src");
        var deviceGen = new Regex(@"new\s+(torch\.)?Generator\([^()]*(\([^()]*\))?[^()]*,\s*[^)]*\)");
        var offenders = Directory.EnumerateFiles(src, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.EndsWith("SeededRandom.cs"))
            .SelectMany(f => System.IO.File.ReadLines(f).Select((l, i) => (f, i, l)))
            .Where(x => deviceGen.IsMatch(x.l) || Regex.IsMatch(x.l, @"device:\s*[^,)]+,\s*generator:"))
            .Select(x => $"{Path.GetRelativePath(src, x.f)}:{x.i + 1}: {x.l.Trim()}").ToList();
        Assert.True(offenders.Count == 0, string.Join("\n", offenders));
    }
}

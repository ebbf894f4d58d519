using System.CommandLine;
using ReTok.Cli;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using static ReTok.Tests.Generation.GeneratorFixtures;
using static TorchSharp.torch;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Tests.Generation;

public class GeneratorCliTests
{
    private static Task<int> Run(params string[] args)
    {
        var root = new RootCommand();
        root.Subcommands.Add(GeneratorCommands.Build());
        return root.Parse(args).InvokeAsync();
    }

    [Fact]
    public async Task SampleWritesCodesAndLabelsEqualToTheLibraryCall()
    {
        var dir = Directory.CreateTempSubdirectory("gencli").FullName;
        var outPath = Path.Combine(dir, "codes.npy");
        int rc = await Run("generator", "sample", "--config", File("tiny_config.json"), "--checkpoint", File("tiny.safetensors"),
            "--classes", "1,2,3", "--n-per-class", "2", "--tokens", "12", "--cfg-scale", "1.75", "--cfg-schedule", "step",
            "--seed", "3", "--out", outPath, "--device", "cpu");
        Assert.Equal(0, rc);
        var codes = Npy.Load(outPath).ToTensor();
        var labels = Npy.Load(GeneratorCommands.LabelsPathFor(outPath)).ToTensor();
        Assert.Equal(new long[] { 6, 12 }, codes.shape);
        Assert.Equal(ScalarType.Int64, codes.dtype);
        Assert.Equal(new long[] { 1, 1, 2, 2, 3, 3 }, labels.data<long>().ToArray());
        using var model = TinyModel();
        var want = Sampling.Generate(model, labels, 12, new SamplingOptions(1.75, "step"), new Generator(3));
        Assert.True(codes.eq(want).all().item<bool>());

        var npz = Path.Combine(dir, "c.npz");
        Assert.Equal(0, await Run("generator", "sample", "--config", File("tiny_config.json"), "--checkpoint", File("tiny.safetensors"),
            "--classes", "random:5", "--tokens", "4", "--out", npz, "--device", "cpu"));
        Assert.Equal(new long[] { 5, 4 }, ReTok.Models.IO.Npz.Header(npz, "codes").Shape);
        Assert.Equal(new long[] { 5 }, ReTok.Models.IO.Npz.Header(npz, "labels").Shape);
    }

    [Fact]
    public async Task InspectAcceptsTheFixtureAndSampleRejectsBadClasses()
    {
        Assert.Equal(0, await Run("generator", "inspect", File("tiny.safetensors"), "--config", File("tiny_config.json")));
        Assert.NotEqual(0, await Run("generator", "sample", "--config", File("tiny_config.json"), "--checkpoint", File("tiny.safetensors"),
            "--classes", "1,99", "--tokens", "4", "--out", Path.Combine(Path.GetTempPath(), "never.npy"), "--device", "cpu"));
        Assert.False(System.IO.File.Exists(Path.Combine(Path.GetTempPath(), "never.npy")));
        var e = Assert.Throws<ArgumentException>(() => GeneratorCommands.ParseLabels("1,x", 1, 10, new Generator(0), CPU));
        Assert.Contains("'x'", e.Message);
    }
}

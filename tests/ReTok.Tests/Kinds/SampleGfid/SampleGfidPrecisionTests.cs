using ReTok.Engine;
using ReTok.Jobs.Kinds.SampleGfid;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Tests.Kinds.SampleGfid;

/// <summary>sample-gfid `precision` (sample_c2i --precision; the README run is PRECISION="none" = fp32).</summary>
public class SampleGfidPrecisionTests
{
    static SampleGfidParams Parse(string extra) => (SampleGfidParams)JobSpecs.Parse($$"""
        kind: sample-gfid
        params: {num_samples: 8{{extra}}}
        """).Steps[0].Params;

    [Fact]
    public void PrecisionBindsAndMapsToTheGptComputeDtype()
    {
        // default auto = the behaviour before the key: bf16 on CUDA, fp32 (no autocast) on CPU
        var auto = Parse("");
        Assert.Equal("auto", auto.Precision);
        Assert.Equal(ScalarType.BFloat16, auto.AutocastDtype(DeviceType.CUDA));
        Assert.Null(auto.AutocastDtype(DeviceType.CPU));
        foreach (var fp32 in new[] { "none", "fp32" })
        {
            var p = Parse($", precision: {fp32}");
            Assert.Null(p.AutocastDtype(DeviceType.CUDA));
            Assert.Null(p.AutocastDtype(DeviceType.CPU));
        }
        Assert.Equal(ScalarType.BFloat16, Parse(", precision: bf16").AutocastDtype(DeviceType.CUDA));
        Assert.Equal(ScalarType.Float16, Parse(", precision: fp16").AutocastDtype(DeviceType.CUDA));
        var ex = Assert.Throws<SpecValidationException>(() => Parse(", precision: half"));
        Assert.Contains("precision: expected auto, none, fp32, bf16 or fp16, got 'half'", ex.Message);
    }

    [Fact]
    public void GfidSpecIsTheReadmeSetting()
    {
        var root = AppContext.BaseDirectory;
        while (root is not null && !Directory.Exists(Path.Combine(root, "jobs"))) root = Path.GetDirectoryName(root);
        var p = (SampleGfidParams)JobSpecs.Load(Path.Combine(root!, "jobs", "gfid-gpt-xl-retok-s-b.yaml")).Steps[0].Params;
        // generator.md §0: fp32 (PRECISION="none"), CFG 1.5, step schedule from 0.18, top-k 0, top-p 1, temperature 1, seed 0, 32 per GPU, 50k
        Assert.Equal(("none", 1.5, "step", 0.18, 0, 1.0, 1.0, 0, 32, 50000),
            (p.Precision, p.CfgScale, p.CfgSchedule, p.WindowStart!.Value, p.TopK, p.TopP, p.Temperature, p.Seed, p.BatchSize, p.NumSamples));
        Assert.Null(p.AutocastDtype(DeviceType.CUDA));
    }
}

using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using TorchSharp;
using static TorchSharp.torch;
using static ReTok.Tests.Tokenizer.TokenizerTestData;

namespace ReTok.Tests.IO;

/// <summary>StateDictFile.Read/Describe/LoadInto/WriteSafetensors on files written by python3 torch.save (tests/fixtures/gen/tokenizer.py).
/// Legacy (pre-1.6) pickles are covered by Evaluation/MetricsTests.StateDictFileReadsLegacyAndZipPickles.</summary>
public class StateDictFileTests
{
    static float[] Floats(Tensor t) => t.to(ScalarType.Float32).contiguous().data<float>().ToArray();

    [Fact]
    public void Load_NestedTrainingCheckpoint_PrefersEmaAndDecodesEveryDtypeAndLayout()
    {
        var sd = StateDictFile.Read(F("pickle_nested.pt"));
        Assert.Equal(new[] { "a", "half", "bf16", "transposed", "offset", "shared", "param", "flag", "scalar" }.Order(), sd.Keys.Order());
        // ema holds the model's floating tensors x2
        Assert.Equal(new[] { 0f, 1f, 2f, 3f, 4f, 5f }, Floats(sd["a"]));
        Assert.Equal(new long[] { 2, 3 }, sd["a"].shape);
        Assert.Equal(ScalarType.Float16, sd["half"].dtype);
        Assert.Equal(new[] { 3f, -4f, 0.5f, 8f }, Floats(sd["half"]));
        Assert.Equal(ScalarType.BFloat16, sd["bf16"].dtype);
        Assert.Equal(new[] { 2f, -7f, 0.25f }, Floats(sd["bf16"]));
        Assert.Equal(ScalarType.Int64, sd["transposed"].dtype);   // arange(12).reshape(3,4).t(): stride (1,4)
        Assert.Equal(new long[] { 4, 3 }, sd["transposed"].shape);
        Assert.Equal(new long[] { 0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11 }, sd["transposed"].contiguous().data<long>().ToArray());
        Assert.Equal(new long[] { 4, 5, 6, 7 }, sd["shared"].data<long>().ToArray());            // row 1 of the same storage
        Assert.Equal(new double[] { 6, 8, 10, 12 }, sd["offset"].data<double>().ToArray());      // arange(10)[3:7] x2, offset 3
        Assert.Equal(new[] { 2f, 2f, 2f, 2f }, Floats(sd["param"]));                            // nn.Parameter → _rebuild_parameter
        Assert.Equal(new[] { true, false, true }, sd["flag"].data<bool>().ToArray());
        Assert.Equal(0, sd["scalar"].dim());
        Assert.Equal(7, sd["scalar"].item<int>());
    }

    [Fact]
    public void Load_PreferModel_AndFallbacks()
    {
        Assert.Equal(new[] { 0f, 0.5f, 1f, 1.5f, 2f, 2.5f }, Floats(StateDictFile.Read(F("pickle_nested.pt"), prefer: "model")["a"]));
        Assert.Equal(new[] { 0f, 0.5f, 1f, 1.5f, 2f, 2.5f }, Floats(StateDictFile.Read(F("pickle_model_only.pt"))["a"]));   // no ema → model
        Assert.Equal(new[] { 0f, 0.5f, 1f, 1.5f, 2f, 2.5f }, Floats(StateDictFile.Read(F("pickle_plain.pt"))["a"]));        // bare state dict
    }

    [Fact]
    public void Describe_ListsEntriesChosenWeightsDtypesAndSteps()
    {
        var info = StateDictFile.Describe(F("pickle_nested.pt"));
        Assert.Equal(new[] { "model", "ema", "optimizer", "steps", "args" }, info.Entries.Select(e => e.Name));
        Assert.Equal("ema", info.Chosen);
        Assert.Equal(9, info.TensorCount);
        Assert.Equal(6 + 4 + 3 + 12 + 4 + 4 + 4 + 3 + 1, info.ParameterCount);
        Assert.Equal(5000L, info.Scalars["steps"]);
        Assert.Contains("argparse.Namespace", info.Entries.Single(e => e.Name == "args").What);
        Assert.Equal(1, info.DtypeCounts["bfloat16"]);
        Assert.Null(StateDictFile.Describe(F("pickle_plain.pt")).Chosen);
    }

    [Fact]
    public void Safetensors_RoundTripKeepsDtypesAndValues()
    {
        var path = Path.Combine(Path.GetTempPath(), $"retok-st-{Guid.NewGuid():N}.safetensors");
        try
        {
            var sd = new Dictionary<string, Tensor>
            {
                ["w"] = torch.arange(12, dtype: ScalarType.Float32).reshape(3, 4) / 3,
                ["b"] = torch.tensor(new[] { 1.5f, -2f }).to(ScalarType.BFloat16),
                ["i"] = torch.arange(5, dtype: ScalarType.Int64).t(),
                ["empty"] = torch.zeros(0, 3),
            };
            StateDictFile.WriteSafetensors(path, sd);
            var back = StateDictFile.Read(path);
            Assert.Equal(sd.Keys.Order(), back.Keys.Order());
            foreach (var (k, t) in sd)
            {
                Assert.Equal(t.dtype, back[k].dtype);
                Assert.Equal(t.shape, back[k].shape);
                Assert.True(t.eq(back[k]).all().item<bool>(), k);
            }
            Assert.Equal(4, StateDictFile.Describe(path).TensorCount);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Load_NotACheckpoint_SaysWhichFile()
    {
        var path = Path.Combine(Path.GetTempPath(), $"retok-bad-{Guid.NewGuid():N}.pt");
        File.WriteAllText(path, "hello, not a zip");
        try
        {
            var e = Assert.Throws<InvalidDataException>(() => StateDictFile.Read(path));
            Assert.Contains(path, e.Message);
        }
        finally { File.Delete(path); }
    }

    static TokenizerConfig Tiny => TokenizerConfig.Load(F("tiny.yaml"));

    [Fact]
    public void LoadInto_Strict_ListsMissingUnexpectedAndMisShapedKeysTogether()
    {
        using var model = new ReTokTokenizer(Tiny);
        var sd = StateDictFile.Read(F("tiny.safetensors"));
        sd.Remove("s2to1encoder.ln_post.bias");
        sd["decoder.extra.weight"] = torch.zeros(3);
        sd["quant_conv.bias"] = torch.zeros(9);
        var e = Assert.Throws<InvalidDataException>(() => StateDictFile.LoadInto(model, sd, "my-ckpt.safetensors"));
        Assert.Contains("my-ckpt.safetensors", e.Message);
        Assert.Contains("1 missing keys:\n    s2to1encoder.ln_post.bias", e.Message);
        Assert.Contains("1 unexpected keys:\n    decoder.extra.weight", e.Message);
        Assert.Contains("quant_conv.bias: checkpoint [9] vs model [8]", e.Message);
    }
}

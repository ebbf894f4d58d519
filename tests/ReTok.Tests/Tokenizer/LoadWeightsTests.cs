using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using TorchSharp;
using static TorchSharp.torch;
using static ReTok.Tests.Tokenizer.TokenizerTestData;

namespace ReTok.Tests.Tokenizer;

/// <summary>ReTokTokenizer.LoadWeights on the tiny checkpoint (the file IO itself: IO/StateDictFileTests).</summary>
public class LoadWeightsTests
{
    static TokenizerConfig Tiny => TokenizerConfig.Load(F("tiny.yaml"));

    [Fact]
    public void LoadWeights_CopiesValuesCastsDtypeAndToleratesMissingDistillMlp()
    {
        using var model = new ReTokTokenizer(Tiny);
        var sd = StateDictFile.Read(F("tiny.safetensors"));   // stored as BF16
        foreach (var k in sd.Keys.Where(ReTokTokenizer.IsTrainingOnlyKey).ToList()) sd.Remove(k);
        model.LoadWeights(sd, "tiny");
        var w = model.state_dict()["s1to2decoder.conv_out.weight"];
        Assert.Equal(ScalarType.Float32, w.dtype);
        Assert.True(w.eq(sd["s1to2decoder.conv_out.weight"].to(ScalarType.Float32)).all().item<bool>());
    }

    [Fact]
    public void LoadWeights_WrongArchitecture_NamesWhatDiffers()
    {
        using var model = new ReTokTokenizer(Tiny with { DecoderLayers = 3 });
        var e = Assert.Throws<InvalidDataException>(() => model.LoadWeights(StateDictFile.Read(F("tiny.safetensors")), "tiny.safetensors"));
        Assert.Contains("tiny.safetensors is a different tokenizer architecture", e.Message);
        Assert.Contains("decoder ViT layers: checkpoint 2, config 3", e.Message);
        var notTok = new Dictionary<string, Tensor> { ["a"] = torch.zeros(2) };
        var e2 = Assert.Throws<InvalidDataException>(() => model.LoadWeights(notTok, "other.pt"));
        Assert.Contains("other.pt is not a ReTok/GigaTok VQVitModelPlus state dict", e2.Message);
    }
}

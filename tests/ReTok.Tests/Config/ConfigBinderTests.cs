using System.Text.Json.Nodes;
using ReTok.Config;
using ReTok.Models.Generation;
using ReTok.Models.Tokenizer;

namespace ReTok.Tests.Config;

/// <summary>The one strict binder (ReTok.Config): the same checks and messages for YAML, JSON text and JSON trees.</summary>
public class ConfigBinderTests
{
    public sealed record Inner(double Lr = 1e-4, string Name = "x");
    public sealed record Sample(int Steps, Inner Inner, bool Ema = false, int[]? Sizes = null, string? Note = null);

    [Fact]
    public void YamlAndJson_GiveTheSameErrors_WithKeyPathTypeAndDidYouMean()
    {
        const string yaml = "steps: lots\ninner:\n  lrr: 0.1\n";
        const string json = """{"steps": "lots", "inner": {"lrr": 0.1}}""";
        var a = Assert.Throws<ConfigException>(() => ConfigBinder.BindYaml<Sample>(yaml, "params")).Errors;
        var b = Assert.Throws<ConfigException>(() => ConfigBinder.BindJson<Sample>(json, "params")).Errors;
        Assert.Equal(a, b);
        Assert.Contains("params.steps: expected an integer (int), got 'lots'", a);
        Assert.Contains(a, e => e.StartsWith("params.inner.lrr: unknown key (did you mean 'lr'?)"));
    }

    [Fact]
    public void JsonStrings_StayStrings_AndDefaultsAreTheRecords()
    {
        var s = ConfigBinder.Bind<Sample>(JsonNode.Parse("""{"steps": 3, "inner": {}, "note": "null", "sizes": [1, 2]}"""), "p");
        Assert.Equal((3, 1e-4, "x", "null", false), (s.Steps, s.Inner.Lr, s.Inner.Name, s.Note, s.Ema));
        Assert.Equal([1, 2], s.Sizes);
        Assert.Contains("p.steps: required key is missing", Assert.Throws<ConfigException>(() => ConfigBinder.BindJson<Sample>("{}", "p")).Message);
    }

    [Fact]
    public void YamlWriter_RoundTrips_AndQuotesStringsThatWouldReadAsSomethingElse()
    {
        var node = new JsonObject { ["a"] = "true", ["b"] = "12", ["c"] = "plain", ["d"] = null, ["e"] = 1e-5, ["f"] = new JsonArray(1, 2) };
        var text = ConfigYaml.Write(node);
        Assert.DoesNotContain("...", text);
        Assert.Equal(node.ToJsonString(), ConfigYaml.ToJson(ConfigYaml.Parse(text, "t"))!.ToJsonString());
    }

    [Fact]
    public void GeneratorYaml_RoundTripsEveryField()
    {
        var c = new GptConfig(64, 2, 4, VocabSize: 512, BlockSize: 32, NumClasses: 10, FfnDimMultiplier: 1.3, NormEps: 1e-6, InitializerRange: 0.01);
        var p = Path.Combine(Path.GetTempPath(), $"retok-gen-{Guid.NewGuid():N}.yaml");
        try
        {
            File.WriteAllText(p, GeneratorYaml.Write(c));
            Assert.Equal(c, GeneratorYaml.Read(p));
            File.WriteAllText(p, GeneratorYaml.Write(c) + "rope: true\n");
            var e = Assert.Throws<InvalidDataException>(() => GeneratorYaml.Read(p));
            Assert.Contains(p, e.Message);
            Assert.Contains("'rope'", e.Message);
        }
        finally { File.Delete(p); }
    }

    [Fact]
    public void GptConfigJson_StartsFromThePreset_AndNamesUnknownKeys()
    {
        var c = GptConfig.FromJson("""{"gpt_model": "GPT-B", "vocab_size": 4096, "cls_token_num": 1, "n_kv_head": null}""", "g.json");
        Assert.Equal((768, 12, 12, 4096), (c.Dim, c.NLayer, c.NHead, c.VocabSize));
        var e = Assert.Throws<ArgumentException>(() => GptConfig.FromJson("""{"gpt_model": "GPT-B", "n_layers": 3}""", "g.json"));
        Assert.Contains("g.json: n_layers: unknown key (did you mean 'n_layer'?)", e.Message);
    }

    /// <summary>Every reference init_args key of VQVitModelPlusArgs is a property name (snake_case or [JsonPropertyName]).</summary>
    [Fact]
    public void TokenizerConfig_KeysAreTheReferenceNames()
    {
        var keys = typeof(TokenizerConfig).GetProperties().Where(p => p.SetMethod is not null).Select(ConfigBinder.KeyOf).ToHashSet();
        foreach (var k in new[]
                 {
                     "codebook_size", "codebook_embed_dim", "codebook_l2_norm", "codebook_show_usage", "commit_loss_beta", "entropy_loss_ratio",
                     "encoder_ch_mult", "decoder_ch_mult", "model_size", "encoder_size", "decoder_size", "num_latent_tokens", "z_channels", "dropout_p",
                     "multi_level_query_init", "last_level_2d_query_init", "multi_level_2d_query_init", "adaptive_gn", "d2s_up", "rot", "use_attn",
                     "fea_rec_loss_type", "fea_rec_loss_weight", "distill_depth", "out_inner_dim",
                 })
            Assert.Contains(k, keys);
    }
}

using ReTok.Models.Tokenizer;
using TorchSharp;
using static TorchSharp.torch;
using static ReTok.Tests.Tokenizer.TokenizerTestData;

namespace ReTok.Tests.Tokenizer;

public class TokenizerConfigTests
{
    // configs/vq/VQ_SB256.yaml's model section and the trainer key that sets out_inner_dim (zfu006/ReTok ffaa8a7)
    const string SbYaml = """
        model:
          model_cls: VQVitModelPlus
          init_args:
            codebook_size: 16384
            codebook_embed_dim: 8
            codebook_l2_norm: True
            codebook_show_usage: True
            commit_loss_beta: 0.25
            entropy_loss_ratio: 0.0
            encoder_ch_mult: [1, 1, 2, 2, 4]
            decoder_ch_mult: [1, 1, 2, 2, 4]
            model_size: null
            encoder_size: "small"
            decoder_size: "base"
            num_latent_tokens: 256
            z_channels: 256
            dropout_p: 0.0
            multi_level_query_init: True
            last_level_2d_query_init: False
            multi_level_2d_query_init:  False
            adaptive_gn: True
            d2s_up: True
            rot: True
            use_attn: False
            fea_rec_loss_type: "mse"
            fea_rec_loss_weight: 1.0
            distill_depth: 3
          causal_settings:
            causal_type: null
            dynamic_length_train: False
            dynamic_level_range: null
            min_level: 0
        trainer:
          global_batch_size: 128
          lr: 1e-4
          distill_loss: True
        loss:
          loss_cls: VQLoss
          params:
            disc_start: 0
        """;

    [Fact]
    public void ReferenceYaml_LoadsAsThePreset_WithTrainerSectionsKept()
    {
        var p = Temp(SbYaml);
        try
        {
            var y = TokenizerConfig.LoadFile(p);
            Assert.Equal("VQ_SB256", y.Model.PresetName);
            Assert.Equal((768, 12, 12), y.Model.DecoderVit);
            Assert.Equal((512, 6, 8), y.Model.EncoderVit);
            Assert.Equal(768, y.Model.OutInnerDim);
            Assert.Equal(3, y.Model.DistillDepth);
            Assert.Equal("128", y.Trainer["global_batch_size"]?.ToString());
            Assert.True(y.Loss.ContainsKey("params"));
        }
        finally { File.Delete(p); }
    }

    [Fact]
    public void UnknownKey_FailsNamingTheKeyAndFile()
    {
        var p = Temp(SbYaml.Replace("    rot: True", "    rot: True\n    rot_extra_trick: 3"));
        try
        {
            var e = Assert.Throws<InvalidDataException>(() => TokenizerConfig.Load(p));
            Assert.Contains("model.init_args.rot_extra_trick", e.Message);
            Assert.Contains(p, e.Message);
        }
        finally { File.Delete(p); }
    }

    [Theory]
    [InlineData("    use_attn: False", "    use_attn: True", "use_attn")]
    [InlineData("    num_latent_tokens: 256", "    num_latent_tokens: 128", "num_latent_tokens")]
    [InlineData("    rot: True", "    rot: True\n    use_lfq: True", "use_lfq")]
    [InlineData("    causal_type: null", "    causal_type: per-level", "causal_type")]
    [InlineData("    z_channels: 256", "    z_channels: lots", "z_channels")]
    public void UnsupportedOrBadValues_FailNamingTheKey(string from, string to, string key)
    {
        var p = Temp(SbYaml.Replace(from, to));
        try { Assert.Contains(key, Assert.Throws<InvalidDataException>(() => TokenizerConfig.Load(p)).Message); }
        finally { File.Delete(p); }
    }

    [Fact]
    public void DepthToSpace_IsDcrOrder_NotPixelShuffle()
    {
        var x = torch.randn(2, 12, 3, 5);
        var y = Ops.DepthToSpace(x, 2);
        Assert.Equal(new long[] { 2, 3, 6, 10 }, y.shape);
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
            {
                // out[b, c, 2h+i, 2w+j] = in[b, (2i+j)·C + c, h, w]
                var picked = y.slice(2, i, 6, 2).slice(3, j, 10, 2);
                Assert.True(picked.eq(x.narrow(1, (2 * i + j) * 3, 3)).all().item<bool>());
            }
        Assert.False(y.eq(nn.functional.pixel_shuffle(x, 2)).all().item<bool>());
    }

    [Fact]
    public void StateDict_MatchesTheReferenceListing_VQ_SS256_And_VQ_SB256()
    {
        foreach (var name in new[] { "VQ_SS256", "VQ_SB256" })
        {
            var expected = File.ReadAllLines(F($"tokenizer_state_dict_{name}.tsv"))
                .Where(l => !l.StartsWith('#') && !l.StartsWith("key\t")).Select(l => l.Split('\t'))
                .ToDictionary(c => c[0], c => c[1]);
            using var model = new ReTokTokenizer(TokenizerConfig.Preset(name));
            var sd = model.state_dict();
            Assert.Equal(expected.Keys.Order(), sd.Keys.Order());
            foreach (var (k, t) in sd) Assert.Equal(expected[k], "[" + string.Join(", ", t.shape) + "]");
            Assert.Equal(TokenizerConfig.Preset(name), TokenizerConfig.Guess(sd) with { }, new ArchComparer());
        }
    }

    [Fact]
    public void FreshInit_FollowsTheReference()
    {
        using var m = new ReTokTokenizer(TokenizerConfig.Load(F("tiny.yaml")));
        var sd = m.state_dict();
        double Std(string k) => sd[k].std().item<float>();
        Assert.InRange(Std("encoder.conv_blocks.0.res.0.conv1.weight"), 0.018, 0.022);          // trunc_normal std 0.02
        Assert.Equal(0f, sd["encoder.conv_blocks.0.res.0.conv1.bias"].abs().max().item<float>());
        Assert.Equal(1f, sd["encoder.conv_blocks.0.res.0.norm1.weight"].min().item<float>());    // GroupNorm 1/0, not uninitialised
        Assert.Equal(0f, sd["decoder.norm_out.bias"].abs().max().item<float>());
        Assert.InRange(Std("s2to1encoder.positional_embedding"), 0.11, 0.14);                     // 64^-0.5 = 0.125
        var inProj = sd["s1to2decoder.transformer.0.self_attn.in_proj_weight"];
        Assert.True(inProj.abs().max().item<float>() <= Math.Sqrt(6.0 / (64 + 192)) + 1e-6);      // xavier_uniform on (3E, E)
        var cb = sd["quantize.embedding.weight"];
        Assert.True((cb.norm(1) - 1).abs().max().item<float>() < 1e-5);                           // unit rows
        Assert.True(sd["quant_conv.weight"].abs().max().item<float>() <= 1 / Math.Sqrt(32) + 1e-6); // default Conv2d init
        Assert.Equal(0f, sd["quantize.codebook_used"].abs().max().item<float>());
    }

    /// <summary>image_size (ours) scales the grid and N with it: 64 px over 4 levels (patch 8) is an 8x8 grid, N = 64
    /// multi-level queries (1+1+2+...+32) + M = 32 padding queries; the weights' shapes give the config back.</summary>
    [Fact]
    public void SmallImages_ScaleTheGridAndTokens_AndRoundTrip()
    {
        var yaml = File.ReadAllText(F("tiny.yaml"))
            .Replace("encoder_ch_mult: [1, 1, 1, 1, 2]", "encoder_ch_mult: [1, 1, 1, 2]")
            .Replace("decoder_ch_mult: [1, 1, 1, 1, 2]", "decoder_ch_mult: [1, 1, 1, 2]")
            .Replace("num_latent_tokens: 256", "num_latent_tokens: 64\n    image_size: 64");
        var cfg = TokenizerConfig.Load(Temp(yaml));
        Assert.Equal((64, 8, 64, 32, 96), (cfg.ImageSize, cfg.GridSize, cfg.NumLatentTokens, cfg.NumPaddingTokens, cfg.TotalTokens));
        using var m = new ReTokTokenizer(cfg);
        var guessed = TokenizerConfig.Guess(m.state_dict());   // (head counts and distill depth are not in the shapes)
        Assert.Equal((64, 64, 8), (guessed.ImageSize, guessed.NumLatentTokens, guessed.GridSize));
        using var _ = NewDisposeScope();
        var x = rand(2, 3, 64, 64) * 2 - 1;
        var codes = m.Encode(x);
        Assert.Equal(new long[] { 2, 96 }, codes.shape);
        foreach (int k in new[] { 1, 64, 96 }) Assert.Equal(new long[] { 2, 3, 64, 64 }, m.Decode(codes, k).shape);
        var err = Assert.Throws<ArgumentException>(() => m.Encode(rand(1, 3, 256, 256)));
        Assert.Contains("64 x 64", err.Message);
        // N must be the grid's cell count: the multi-level queries pool the grid into exactly N cells
        var bad = Assert.Throws<InvalidDataException>(() => TokenizerConfig.Load(Temp(yaml.Replace("num_latent_tokens: 64", "num_latent_tokens: 256"))));
        Assert.Contains("8x8 = 64", bad.Message);
    }

    sealed class ArchComparer : IEqualityComparer<TokenizerConfig>
    {
        public bool Equals(TokenizerConfig? a, TokenizerConfig? b) => a!.SameArchitecture(b!);
        public int GetHashCode(TokenizerConfig c) => 0;
    }
}

using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using ReTok.Config;
using TorchSharp;
using YamlDotNet.RepresentationModel;

namespace ReTok.Models.Tokenizer;

/// <summary>
/// The tokenizer's `model.init_args` (reference: VQVitModelPlusArgs, vq_vit_model.py L48-138), with the reference's
/// snake_case YAML names and the reference's dataclass defaults, so a YAML that leaves a key out means what it means
/// to the authors' loader. Dead reference options are accepted only at their off value (tokenizer.md §11).
/// Extensions of ours (not reference keys), for tiny test configs: `ch`, `num_res_blocks`, explicit
/// `encoder_width/layers/heads`, `decoder_width/layers/heads` overriding the named sizes, and `image_size` (the
/// reference's fixed 256; smaller images, e.g. the quickstart's, need num_latent_tokens = (image_size / patch)²).
/// init_args binds onto this record through <see cref="ConfigBinder"/>: the keys are the snake_case property names, and
/// [JsonPropertyName] spells out the ones with digits, whose snake_case would not be the reference's.
/// </summary>
public sealed record TokenizerConfig
{
    public int CodebookSize { get; init; } = 16384;
    public int CodebookEmbedDim { get; init; } = 8;
    [JsonPropertyName("codebook_l2_norm")] public bool CodebookL2Norm { get; init; } = true;
    public bool CodebookShowUsage { get; init; } = true;
    public double CommitLossBeta { get; init; } = 0.25;
    public double EntropyLossRatio { get; init; } = 0.0;
    public int[] EncoderChMult { get; init; } = [1, 1, 2, 2, 4];
    public int[] DecoderChMult { get; init; } = [1, 1, 2, 2, 4];
    public string? ModelSize { get; init; } = "small";
    public string? EncoderSize { get; init; }
    public string? DecoderSize { get; init; }
    public int NumLatentTokens { get; init; } = 256;
    public int ZChannels { get; init; } = 256;
    public double DropoutP { get; init; } = 0.0;
    public bool MultiLevelQueryInit { get; init; }
    [JsonPropertyName("last_level_2d_query_init")] public bool LastLevel2dQueryInit { get; init; }
    [JsonPropertyName("multi_level_2d_query_init")] public bool MultiLevel2dQueryInit { get; init; }
    public bool AdaptiveGn { get; init; }
    [JsonPropertyName("d2s_up")] public bool D2sUp { get; init; }
    public bool Rot { get; init; }
    public bool UseAttn { get; init; } = true;
    public string FeaRecLossType { get; init; } = "cosine";
    public double FeaRecLossWeight { get; init; } = 1.0;
    public int? DistillDepth { get; init; }
    public int OutInnerDim { get; init; } = 768;

    // extensions (ours): CNN width and depth (reference Encoder/Decoder constructor defaults) and explicit ViT sizes
    public int Ch { get; init; } = 128;
    public int NumResBlocks { get; init; } = 2;
    public int? EncoderWidth { get; init; }
    public int? EncoderLayers { get; init; }
    public int? EncoderHeads { get; init; }
    public int? DecoderWidth { get; init; }
    public int? DecoderLayers { get; init; }
    public int? DecoderHeads { get; init; }
    /// <summary>Input height = width (ViTEncoder/ViTDecoder default 256, not configurable in the reference).</summary>
    public int ImageSize { get; init; } = 256;

    /// <summary>Redundant Token Padding: the reference hard-codes M = N − 32 = 224 (blocks.py L1098, L1137).</summary>
    [JsonIgnore] public int NumPaddingTokens => NumLatentTokens - 32;
    [JsonIgnore] public int TotalTokens => NumLatentTokens + NumPaddingTokens;
    [JsonIgnore] public int PatchSize => 1 << (EncoderChMult.Length - 1);
    [JsonIgnore] public int GridSize => ImageSize / PatchSize;

    static readonly Dictionary<string, (int Width, int Layers, int Heads)> Sizes = new()
    {
        ["tiny"] = (256, 4, 4), ["small"] = (512, 6, 8), ["base"] = (768, 12, 12), ["large"] = (1024, 24, 16),
        ["xl"] = (1280, 36, 20), ["xxl"] = (1536, 48, 24), ["xxxl"] = (2560, 48, 40),
    };

    (int Width, int Layers, int Heads) Vit(string which, string? size, int? w, int? l, int? h)
    {
        (int, int, int) named = (0, 0, 0);
        if (size != null && !Sizes.TryGetValue(size, out named))
            throw new ArgumentException($"{which}_size '{size}' is not one of {string.Join(", ", Sizes.Keys)}");
        if (size == null && (w == null || l == null || h == null))
            throw new ArgumentException($"{which}: give {which}_size (or model_size) or all of {which}_width/_layers/_heads");
        return (w ?? named.Item1, l ?? named.Item2, h ?? named.Item3);
    }

    [JsonIgnore] public (int Width, int Layers, int Heads) EncoderVit =>
        Vit("encoder", EncoderSize ?? ModelSize, EncoderWidth, EncoderLayers, EncoderHeads);
    [JsonIgnore] public (int Width, int Layers, int Heads) DecoderVit =>
        Vit("decoder", DecoderSize ?? ModelSize, DecoderWidth, DecoderLayers, DecoderHeads);

    /// <summary>configs/vq/VQ_SS256.yaml ("ReTok-S-S", 136M with distill_mlp).</summary>
    public static TokenizerConfig VQ_SS256 => new()
    {
        ModelSize = null, EncoderSize = "small", DecoderSize = "small", MultiLevelQueryInit = true, AdaptiveGn = true,
        D2sUp = true, Rot = true, UseAttn = false, FeaRecLossType = "mse", FeaRecLossWeight = 1.0, DistillDepth = 3,
    };

    /// <summary>configs/vq/VQ_SB256.yaml ("ReTok-S-B", 232M with distill_mlp).</summary>
    public static TokenizerConfig VQ_SB256 => VQ_SS256 with { DecoderSize = "base" };

    public static TokenizerConfig Preset(string name) => name.ToUpperInvariant() switch
    {
        "VQ_SS256" or "SS" or "RETOK-S-S" => VQ_SS256,
        "VQ_SB256" or "SB" or "RETOK-S-B" => VQ_SB256,
        _ => throw new ArgumentException($"unknown tokenizer preset '{name}' (VQ_SS256, VQ_SB256)"),
    };

    /// <summary>Throws with the offending key when the config asks for something this port does not build.</summary>
    public TokenizerConfig Validate()
    {
        void Need(bool ok, string msg) { if (!ok) throw new ArgumentException("tokenizer config: " + msg); }
        Need(EncoderChMult.Length >= 1 && ImageSize > 0 && ImageSize % PatchSize == 0 && int.IsPow2(GridSize),
            $"image_size {ImageSize} over patch {PatchSize} (2^(levels of encoder_ch_mult - 1)) must give a power-of-two grid");
        // the multi-level queries pool the grid into 1 + 1 + 2 + ... + N/2 = N cells, and the padding copies queries 32..N-1
        Need(NumLatentTokens == GridSize * GridSize && NumLatentTokens > 32,
            $"num_latent_tokens must be the grid's {GridSize}x{GridSize} = {GridSize * GridSize} cells and above 32 (the reference hard-codes 32 and N - 32 padding queries; 256 at 256 px, patch 16), got {NumLatentTokens}");
        Need(DecoderChMult.Length == EncoderChMult.Length, "decoder_ch_mult must have as many levels as encoder_ch_mult");
        Need(ModelSize == null || (EncoderSize == null && DecoderSize == null),
            "model_size must be null when encoder_size or decoder_size is given (reference assert)");
        Need(MultiLevelQueryInit, "multi_level_query_init must be True (the other query inits are dead paths, tokenizer.md §11)");
        Need(!LastLevel2dQueryInit, "last_level_2d_query_init is not ported (deprecated)");
        Need(AdaptiveGn && D2sUp, "adaptive_gn and d2s_up must be True (the plain decoder variants are not ported)");
        Need(!UseAttn, "use_attn must be False (AttnBlock is not ported)");
        Need(Rot, "rot must be True (the plain straight-through quantizer is not ported)");
        Need(CodebookL2Norm, "codebook_l2_norm must be True");
        Need(DropoutP == 0, $"dropout_p must be 0.0 (dropout is not ported), got {DropoutP}");
        Need(FeaRecLossType is "mse" or "cosine", $"fea_rec_loss_type must be 'mse' or 'cosine', got '{FeaRecLossType}'");
        Need(Ch % 32 == 0, $"ch must be a multiple of 32 (GroupNorm with 32 groups), got {Ch}");
        Need(ZChannels > 0 && CodebookSize > 0 && CodebookEmbedDim > 0 && NumResBlocks > 0, "sizes must be positive");
        foreach (var (name, v) in new[] { ("encoder", EncoderVit), ("decoder", DecoderVit) })
            Need(v.Width % v.Heads == 0, $"{name} width {v.Width} is not divisible by {v.Heads} heads");
        Need(DistillDepth == null || (DistillDepth >= 1 && DistillDepth <= DecoderVit.Layers),
            $"distill_depth {DistillDepth} outside 1..{DecoderVit.Layers}");
        return this;
    }

    public override string ToString() =>
        $"TokenizerConfig({ImageSize} px, N {NumLatentTokens} + M {NumPaddingTokens}, enc {EncoderVit}, dec {DecoderVit}, ch {Ch}x[{string.Join(",", EncoderChMult)}], z {ZChannels}, " +
        $"codebook {CodebookSize}x{CodebookEmbedDim}, distill_depth {DistillDepth?.ToString() ?? "null"}, out_inner_dim {OutInnerDim})";

    public bool SameArchitecture(TokenizerConfig o) =>
        ImageSize == o.ImageSize && NumLatentTokens == o.NumLatentTokens && EncoderVit == o.EncoderVit && DecoderVit == o.DecoderVit && Ch == o.Ch && NumResBlocks == o.NumResBlocks &&
        EncoderChMult.SequenceEqual(o.EncoderChMult) && DecoderChMult.SequenceEqual(o.DecoderChMult) && ZChannels == o.ZChannels &&
        CodebookSize == o.CodebookSize && CodebookEmbedDim == o.CodebookEmbedDim && (DistillDepth != null) == (o.DistillDepth != null) &&
        (DistillDepth == null || OutInnerDim == o.OutInnerDim);

    /// <summary>Name of the preset with this architecture, or null.</summary>
    [JsonIgnore] public string? PresetName => SameArchitecture(VQ_SS256) ? "VQ_SS256" : SameArchitecture(VQ_SB256) ? "VQ_SB256" : null;

    // ---------------------------------------------------------------- YAML

    /// <summary>Loads `model:` of a reference-style YAML (configs/vq/VQ_SB256.yaml) into a validated config.</summary>
    public static TokenizerConfig Load(string path) => LoadFile(path).Model;

    public static TokenizerYaml LoadFile(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer config {path} does not exist", path);
        try { return Parse(ConfigYaml.Parse(File.ReadAllText(path), "tokenizer config")); }
        catch (ArgumentException e) { throw new InvalidDataException($"{path}: {e.Message}", e); }
    }

    /// <summary>The file around init_args. init_args binds onto <see cref="TokenizerConfig"/> once its dead keys are checked;
    /// trainer and loss stay raw for the training code (only trainer.distill_loss/distill_model matter here).</summary>
    internal sealed record TokenizerFile(ModelSection Model, JsonObject? Trainer = null, JsonObject? Loss = null);
    internal sealed record ModelSection(string? ModelCls = null, JsonObject? InitArgs = null, CausalSettings? CausalSettings = null);
    /// <summary>dynamic_level_range and min_level are read only by the dead GigaTok length sampler.</summary>
    internal sealed record CausalSettings(string? CausalType = null, bool DynamicLengthTrain = false, JsonNode? DynamicLevelRange = null, JsonNode? MinLevel = null);

    /// <summary>A job's params section (bound JSON) read exactly as the same YAML file would be.</summary>
    public static TokenizerYaml Parse(JsonNode root) => Parse(ConfigYaml.FromJson(root));

    public static TokenizerYaml Parse(YamlNode? root)
    {
        var file = ConfigBinder.Bind<TokenizerFile>(root, "");
        if (file.Model.ModelCls != "VQVitModelPlus") throw new ArgumentException($"model.model_cls is '{file.Model.ModelCls}', this port builds only VQVitModelPlus");
        if (file.Model.CausalSettings is { } cs)
        {
            if (cs.CausalType is not (null or ""))
                throw new ArgumentException($"model.causal_settings.causal_type must be null (the dead GigaTok length sampler), got '{cs.CausalType}'");
            if (cs.DynamicLengthTrain) throw new ArgumentException("model.causal_settings.dynamic_length_train must be False");
        }
        var args = (JsonObject?)file.Model.InitArgs?.DeepClone() ?? new JsonObject();
        foreach (var (k, off) in DeadOffValues)
            if (args.TryGetPropertyValue(k, out var v) && args.Remove(k))
            {
                var s = v is null ? "null" : v.ToString().ToLowerInvariant();
                if (off != "*" && s != off && !(off == "null" && s is "~" or ""))
                    throw new ArgumentException($"'model.init_args.{k}: {v}' selects a reference feature this port does not implement (only {off} is accepted)");
            }
        var cfg = ConfigBinder.Bind<TokenizerConfig>(args, "model.init_args");
        var trainer = file.Trainer ?? new JsonObject();
        // utils/model_init.py L23-35: with distill_loss, out_inner_dim comes from the teacher's width
        if (!args.ContainsKey("out_inner_dim") && trainer["distill_loss"] is { } dl && ConfigBinder.Bind<bool>(dl, "trainer.distill_loss"))
        {
            var teacher = trainer["distill_model"] is { } dm ? ConfigBinder.Bind<string>(dm, "trainer.distill_model") : "dinov2-vit-b";
            cfg = cfg with
            {
                OutInnerDim = teacher switch
                {
                    "dinov2-vit-l" => 1024, "dinov2-vit-b" => 768, "dinov2-vit-s" => 384, "siglip-sovit-400m" => 1152,
                    "clip_dfn-vit-l/14" => 1024, _ => throw new ArgumentException($"trainer.distill_model '{teacher}' has no known width"),
                }
            };
        }
        return new TokenizerYaml(cfg.Validate(), trainer, file.Loss ?? new JsonObject());
    }

    /// <summary>Reference keys for features this port leaves out; accepted only at the value that switches them off.</summary>
    static readonly Dictionary<string, string> DeadOffValues = new()
    {
        ["use_lfq"] = "false", ["bernoulli_sample"] = "false", ["eval_deterministic"] = "false", ["simvq"] = "false",
        ["codebook_transform"] = "null", ["freeze_codebook"] = "false", ["use_rope"] = "false", ["use_qk_norm"] = "false",
        ["use_flash_attn"] = "false", ["learnable_1d_query_init"] = "false", ["rope_1d"] = "false",
        ["learnable_2d_query_init"] = "false", ["res_up_down_sample"] = "false", ["downsample_match_channel"] = "false",
        ["upsample_match_channel"] = "false", ["res_codebook_updown_sample"] = "false", ["downsample_improve"] = "false",
        ["rope_2d"] = "false", ["stochastic"] = "false", ["stochastic_temperature"] = "*", ["encoder_2d_distill"] = "false",
        ["with_prior_model"] = "false", ["prior_model_config"] = "null",
    };

    // ---------------------------------------------------------------- guess from a state dict

    /// <summary>Reconstructs the architecture from state-dict shapes (for `inspect` and wrong-architecture errors).</summary>
    public static TokenizerConfig Guess(IReadOnlyDictionary<string, torch.Tensor> sd)
    {
        long[] Shape(string k) => sd.TryGetValue(k, out var t) ? t.shape
            : throw new InvalidDataException($"not a ReTok tokenizer state dict: key '{k}' is missing");
        int Count(string prefix) => sd.Keys.Where(k => k.StartsWith(prefix)).Select(k => k[prefix.Length..].Split('.')[0])
            .Where(s => int.TryParse(s, out _)).Select(int.Parse).DefaultIfEmpty(-1).Max() + 1;
        int Heads(int width) => Sizes.Values.Where(s => s.Width == width).Select(s => s.Heads).DefaultIfEmpty(Math.Max(1, width / 64)).First();
        string? Named(int w, int l) => Sizes.Where(s => s.Value.Width == w && s.Value.Layers == l).Select(s => s.Key).FirstOrDefault();

        int ch = (int)Shape("encoder.conv_in.weight")[0];
        int levels = Count("encoder.conv_blocks.");
        var encMult = Enumerable.Range(0, levels).Select(i => (int)Shape($"encoder.conv_blocks.{i}.res.0.conv1.weight")[0] / ch).ToArray();
        var decMult = Enumerable.Range(0, levels).Select(j => (int)Shape($"decoder.conv_blocks.{j}.res.0.conv1.weight")[0] / ch).Reverse().ToArray();
        int ew = (int)Shape("s2to1encoder.positional_embedding")[2], el = Count("s2to1encoder.transformer.");
        int grid = (int)Math.Round(Math.Sqrt(Shape("s2to1encoder.positional_embedding")[0]));
        int dw = (int)Shape("s1to2decoder.positional_embedding")[2], dl = Count("s1to2decoder.transformer.");
        var emb = Shape("quantize.embedding.weight");
        bool distill = sd.ContainsKey("s1to2decoder.distill_mlp.4.weight");
        string? es = Named(ew, el), ds = Named(dw, dl);
        return new TokenizerConfig
        {
            CodebookSize = (int)emb[0], CodebookEmbedDim = (int)emb[1], EncoderChMult = encMult, DecoderChMult = decMult,
            ModelSize = null, EncoderSize = es, DecoderSize = ds,
            EncoderWidth = es == null ? ew : null, EncoderLayers = es == null ? el : null, EncoderHeads = es == null ? Heads(ew) : null,
            DecoderWidth = ds == null ? dw : null, DecoderLayers = ds == null ? dl : null, DecoderHeads = ds == null ? Heads(dw) : null,
            ImageSize = grid << (levels - 1), NumLatentTokens = (int)Shape("s2to1encoder.latent_token_positional_embedding")[0],
            ZChannels = (int)Shape("encoder.conv_out.weight")[0], Ch = ch, NumResBlocks = Count("encoder.conv_blocks.0.res."),
            MultiLevelQueryInit = true, AdaptiveGn = true, D2sUp = true, Rot = true, UseAttn = false, FeaRecLossType = "mse",
            DistillDepth = distill ? 3 : null,   // the depth is not visible in shapes; 3 is both configs' value
            OutInnerDim = distill ? (int)Shape("s1to2decoder.distill_mlp.4.weight")[0] : 768,
        };
    }
}

/// <summary>A whole tokenizer YAML: the model config plus the raw trainer/loss sections for the training code.</summary>
public sealed record TokenizerYaml(TokenizerConfig Model, JsonObject Trainer, JsonObject Loss);

// Port of the class-conditional 1D GPT of ReTok (autoregressive/models/gpt_1d.py @ ffaa8a7, itself LlamaGen's gpt.py):
// the released path only: learned absolute positions, no RoPE, no adaLN, no QK-norm, 1 class token.
// Parameter names equal the reference state dict (generator.md 1.6), so GPT_XL256_e300_VQ_SB.pt loads 1:1.
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using ReTok.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Models.Generation;

/// <summary>ModelArgs of gpt_1d.py (the c2i fields). Use <see cref="Preset"/> for GPT-B/L/XL/...; any other size is allowed (tests use tiny ones).</summary>
public sealed record GptConfig(
    int Dim, int NLayer, int NHead,
    int VocabSize = 16384, int BlockSize = 256, int NumClasses = 1000,
    double ClassDropoutProb = 0.1, double TokenDropoutP = 0.1, double ResidDropoutP = 0.1, double FfnDropoutP = 0.1,
    double AttnDropoutP = 0.0, int MultipleOf = 256, double? FfnDimMultiplier = null, double NormEps = 1e-5,
    double InitializerRange = 0.02)
{
    /// <summary>gpt_1d.py asserts cls_token_num == 1.</summary>
    public const int ClsTokenNum = 1;

    [JsonIgnore] public int HeadDim => Dim / NHead;

    /// <summary>SwiGLU width: find_multiple(int(2*4*dim/3) [* ffn_dim_multiplier], multiple_of) (gpt_1d.py:176-181).</summary>
    [JsonIgnore] public int FfnHidden
    {
        get
        {
            int h = (int)(2.0 * (4 * Dim) / 3);
            if (FfnDimMultiplier is double m) h = (int)(m * h);
            return h % MultipleOf == 0 ? h : h + MultipleOf - h % MultipleOf;
        }
    }

    /// <summary>The class table has a null row (index NumClasses) only when class dropout is on, as LabelEmbedder.</summary>
    [JsonIgnore] public int ClassTableRows => NumClasses + (ClassDropoutProb > 0 ? 1 : 0);

    /// <summary>Parameter count (learned positional embedding, untied head), as the comments in gpt_1d.py.</summary>
    [JsonIgnore] public long ParameterCount =>
        (long)(ClsTokenNum + BlockSize) * Dim + (long)ClassTableRows * Dim + (long)VocabSize * Dim
        + NLayer * (4L * Dim * Dim + 3L * Dim * FfnHidden + 2L * Dim) + Dim + (long)VocabSize * Dim;

    public GptConfig Validate()
    {
        if (Dim <= 0 || NLayer <= 0 || NHead <= 0) throw new ArgumentException($"GptConfig: dim={Dim}, n_layer={NLayer}, n_head={NHead} must be positive");
        if (Dim % NHead != 0) throw new ArgumentException($"GptConfig: dim={Dim} is not divisible by n_head={NHead}");
        if (VocabSize <= 0 || BlockSize <= 0 || NumClasses <= 0) throw new ArgumentException($"GptConfig: vocab_size={VocabSize}, block_size={BlockSize}, num_classes={NumClasses} must be positive");
        if (MultipleOf <= 0) throw new ArgumentException($"GptConfig: multiple_of={MultipleOf} must be positive");
        return this;
    }

    /// <summary>The GPT_models table of gpt_1d.py:619-648 (n_layer, n_head, dim).</summary>
    public static readonly IReadOnlyDictionary<string, (int NLayer, int NHead, int Dim)> Presets =
        new Dictionary<string, (int, int, int)>(StringComparer.OrdinalIgnoreCase)
        {
            ["GPT-B"] = (12, 12, 768), ["GPT-L"] = (24, 16, 1024), ["GPT-XL"] = (36, 20, 1280),
            ["GPT-XXL"] = (48, 24, 1536), ["GPT-XXXL"] = (48, 40, 2560),
            ["GPT-1B"] = (22, 32, 2048), ["GPT-3B"] = (24, 32, 3200), ["GPT-7B"] = (32, 32, 4096),
        };

    /// <summary>A named preset with the ModelArgs defaults (vocab 16384, block 256, 1000 classes) unless overridden.</summary>
    public static GptConfig Preset(string name, int vocabSize = 16384, int blockSize = 256, int numClasses = 1000)
    {
        if (!Presets.TryGetValue(name.Trim(), out var p))
            throw new ArgumentException($"unknown GPT preset '{name}': expected one of {string.Join(", ", Presets.Keys)}");
        return new GptConfig(p.Dim, p.NLayer, p.NHead, VocabSize: vocabSize, BlockSize: blockSize, NumClasses: numClasses);
    }

    public static GptConfig B => Preset("GPT-B");
    public static GptConfig L => Preset("GPT-L");
    public static GptConfig XL => Preset("GPT-XL");

    /// <summary>
    /// Reads a JSON object with ModelArgs field names (dim, n_layer, n_head, vocab_size, block_size, num_classes,
    /// class_dropout_prob, token_dropout_p, resid_dropout_p, ffn_dropout_p, attn_dropout_p, multiple_of,
    /// ffn_dim_multiplier, norm_eps, initializer_range), optionally starting from "gpt_model": "GPT-B" etc. Paths this
    /// port does not implement (rope, adaLN, QK-norm, t2i) are refused by name. Errors name <paramref name="source"/>.
    /// </summary>
    public static GptConfig FromJson(string json, string source)
    {
        JsonNode? node;
        try { node = JsonNode.Parse(json); }
        catch (System.Text.Json.JsonException e) { throw new ArgumentException($"{source}: invalid JSON: {e.Message}", e); }
        return FromJson(node, source);
    }

    /// <summary>As <see cref="FromJson(string, string)"/>, from YAML text (generator.yaml).</summary>
    public static GptConfig FromYaml(string yaml, string source) => FromJson(ConfigYaml.ToJson(ConfigYaml.Parse(yaml, source)), source);

    public static GptConfig FromJson(JsonNode? node, string source)
    {
        try
        {
            if (node is not JsonObject given) throw new ArgumentException("expected a mapping of ModelArgs fields (dim, n_layer, n_head, ...)");
            var o = (JsonObject)given.DeepClone();
            // a preset fills the sizes; keys given next to it override them
            if (o.TryGetPropertyValue("gpt_model", out var gm) && o.Remove("gpt_model"))
            {
                var p = Preset(ConfigBinder.Bind<string>(gm, "gpt_model"));
                foreach (var (k, v) in new[] { ("dim", p.Dim), ("n_layer", p.NLayer), ("n_head", p.NHead) })
                    if (!o.ContainsKey(k)) o[k] = v;
            }
            var reference = new List<(string Key, JsonNode? Value)>();
            foreach (var k in ReferenceOnly.Keys)
                if (o.TryGetPropertyValue(k, out var v) && o.Remove(k)) reference.Add((k, v));
            var c = ConfigBinder.Bind<GptConfig>(o, "");
            foreach (var (k, v) in reference)
                if (!ReferenceOnly[k](v, c)) throw new ArgumentException($"'{k}' = {v?.ToJsonString() ?? "null"} is not supported by this port (released path: c2i, learned positions, no RoPE/adaLN/QK-norm)");
            return c.Validate();
        }
        catch (ArgumentException e) { throw new ArgumentException($"{source}: {e.Message}", e); }
    }

    /// <summary>ModelArgs keys of paths this port leaves out, each accepted only at the value that keeps the released path.</summary>
    static readonly Dictionary<string, Func<JsonNode?, GptConfig, bool>> ReferenceOnly = new()
    {
        ["n_kv_head"] = (v, c) => v is null || ConfigBinder.Bind<int>(v, "n_kv_head") == c.NHead,
        ["cls_token_num"] = (v, _) => v is not null && ConfigBinder.Bind<int>(v, "cls_token_num") == ClsTokenNum,
        ["model_type"] = (v, _) => v is not null && ConfigBinder.Bind<string>(v, "model_type") == "c2i",
        ["drop_path_rate"] = (v, _) => v is not null && ConfigBinder.Bind<double>(v, "drop_path_rate") == 0,
        ["rope"] = Off("rope"), ["use_qk_norm"] = Off("use_qk_norm"), ["use_adaLN"] = Off("use_adaLN"), ["use_simple_adaLN"] = Off("use_simple_adaLN"),
        ["use_flash_attn"] = (_, _) => true,   // only picks the SDPA backend
    };

    static Func<JsonNode?, GptConfig, bool> Off(string key) => (v, _) => v is null || !ConfigBinder.Bind<bool>(v, key);

    /// <summary>Inference config: all dropouts off (as val_loss_cal.py); class table keeps its null row.</summary>
    public GptConfig WithoutDropout() => this with { TokenDropoutP = 0, ResidDropoutP = 0, FfnDropoutP = 0, AttnDropoutP = 0 };
}

/// <summary>
/// Mixed precision by explicit casts (TorchSharp has no autocast): when <see cref="Dtype"/> is set, every Linear runs
/// in that dtype against an on-the-fly cast of its fp32 weight, so gradients still land on fp32 master weights.
/// Everything else (embeddings, residual adds, RMSNorm, logits, loss) stays fp32, as under torch.autocast.
/// </summary>
public sealed class Autocast
{
    public ScalarType? Dtype { get; set; }

    public Tensor Linear(Linear l, Tensor x) =>
        Dtype is ScalarType dt && l.weight!.dtype != dt ? F.linear(x.to_type(dt), l.weight.to_type(dt)) : l.forward(x);
}

/// <summary>RMSNorm (gpt_1d.py:159-170): normalise in fp32, cast back, then scale.</summary>
public sealed class RMSNorm : nn.Module<Tensor, Tensor>
{
    public readonly Parameter weight;
    private readonly double eps;

    public RMSNorm(int dim, double eps = 1e-5, Device? device = null) : base(nameof(RMSNorm))
    {
        this.eps = eps;
        weight = new Parameter(ones(dim, device: device));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var xf = x.to_type(float32);
        var y = (xf * rsqrt((xf * xf).mean(new long[] { -1 }, keepdim: true) + eps)).to_type(x.dtype);
        return y * weight;
    }
}

/// <summary>SwiGLU FFN (gpt_1d.py:173-189).</summary>
public sealed class FeedForward : nn.Module<Tensor, Tensor>
{
    public readonly Linear w1, w3, w2;
    public readonly Dropout ffn_dropout;
    private readonly Autocast ac;

    public FeedForward(GptConfig c, Autocast ac, Device? device = null) : base(nameof(FeedForward))
    {
        this.ac = ac;
        w1 = nn.Linear(c.Dim, c.FfnHidden, hasBias: false, device: device);
        w3 = nn.Linear(c.Dim, c.FfnHidden, hasBias: false, device: device);
        w2 = nn.Linear(c.FfnHidden, c.Dim, hasBias: false, device: device);
        ffn_dropout = nn.Dropout(c.FfnDropoutP);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => ffn_dropout.forward(ac.Linear(w2, F.silu(ac.Linear(w1, x)) * ac.Linear(w3, x)));
}

/// <summary>Per-layer K/V storage for incremental decoding (gpt_1d.py KVCache). Not a module: it never enters the state dict.</summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor[] k, v;
    public long Batch { get; }
    public long Capacity { get; }

    public KvCache(int layers, long batch, int heads, long capacity, int headDim, ScalarType dtype, Device device)
    {
        Batch = batch;
        Capacity = capacity;
        k = new Tensor[layers];
        v = new Tensor[layers];
        for (int i = 0; i < layers; i++)
        {
            k[i] = zeros(new[] { batch, heads, capacity, headDim }, dtype, device);
            v[i] = zeros(new[] { batch, heads, capacity, headDim }, dtype, device);
        }
    }

    /// <summary>Writes k/v (B,H,S,hd) at positions start..start+S-1 and returns the filled prefix 0..start+S-1.</summary>
    public (Tensor K, Tensor V) Update(int layer, Tensor kNew, Tensor vNew, long start)
    {
        long s = kNew.shape[2];
        if (kNew.shape[0] != Batch) throw new ArgumentException($"KV cache holds {Batch} rows but the step has {kNew.shape[0]}");
        if (start + s > Capacity) throw new ArgumentException($"KV cache capacity {Capacity} exceeded at position {start + s - 1}");
        k[layer].narrow(2, start, s).copy_(kNew);
        v[layer].narrow(2, start, s).copy_(vNew);
        return (k[layer].narrow(2, 0, start + s), v[layer].narrow(2, 0, start + s));
    }

    public void Dispose()
    {
        foreach (var t in k) t.Dispose();
        foreach (var t in v) t.Dispose();
    }
}

/// <summary>Multi-head causal self-attention with a fused qkv projection (gpt_1d.py:210-295; n_kv_head = n_head).</summary>
public sealed class Attention : nn.Module
{
    public readonly Linear wqkv, wo;
    public readonly Dropout resid_dropout;
    private readonly int dim, nHead, headDim;
    private readonly double attnDropoutP;
    private readonly Autocast ac;

    public Attention(GptConfig c, Autocast ac, Device? device = null) : base(nameof(Attention))
    {
        this.ac = ac;
        (dim, nHead, headDim, attnDropoutP) = (c.Dim, c.NHead, c.HeadDim, c.AttnDropoutP);
        wqkv = nn.Linear(c.Dim, 3 * c.Dim, hasBias: false, device: device);
        wo = nn.Linear(c.Dim, c.Dim, hasBias: false, device: device);
        resid_dropout = nn.Dropout(c.ResidDropoutP);
        RegisterComponents();
    }

    /// <summary>x (B,S,D). Without a cache: causal over the S positions. With one: x holds positions start..start+S-1.</summary>
    public Tensor forward(Tensor x, KvCache? cache = null, int layer = 0, long start = 0)
    {
        long b = x.shape[0], s = x.shape[1];
        var qkv = ac.Linear(wqkv, x).split(new long[] { dim, dim, dim }, -1);
        var q = qkv[0].view(b, s, nHead, headDim).transpose(1, 2);
        var k = qkv[1].view(b, s, nHead, headDim).transpose(1, 2);
        var v = qkv[2].view(b, s, nHead, headDim).transpose(1, 2);
        double p = training ? attnDropoutP : 0.0;
        Tensor y;
        if (cache is null)
            y = F.scaled_dot_product_attention(q, k, v, p: p, is_casual: true);
        else
        {
            (k, v) = cache.Update(layer, k, v, start);
            // One query attends to the whole filled prefix; a chunk needs the causal mask shifted by start.
            var mask = s == 1 ? null : arange(start, start + s, device: x.device).unsqueeze(1) >= arange(start + s, device: x.device).unsqueeze(0);
            y = F.scaled_dot_product_attention(q, k, v, attn_mask: mask, p: p);
        }
        y = y.transpose(1, 2).contiguous().view(b, s, dim);
        return resid_dropout.forward(ac.Linear(wo, y));
    }
}

/// <summary>Pre-norm block (gpt_1d.py:298-348, no adaLN, drop_path 0).</summary>
public sealed class TransformerBlock : nn.Module
{
    public readonly Attention attention;
    public readonly FeedForward feed_forward;
    public readonly RMSNorm attention_norm, ffn_norm;

    public TransformerBlock(GptConfig c, Autocast ac, Device? device = null) : base(nameof(TransformerBlock))
    {
        attention = new Attention(c, ac, device);
        feed_forward = new FeedForward(c, ac, device);
        attention_norm = new RMSNorm(c.Dim, c.NormEps, device);
        ffn_norm = new RMSNorm(c.Dim, c.NormEps, device);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, KvCache? cache = null, int layer = 0, long start = 0)
    {
        var h = x + attention.forward(attention_norm.forward(x), cache, layer, start);
        return h + feed_forward.forward(ffn_norm.forward(h));
    }
}

/// <summary>Class embedding with the null (unconditional) row and label dropout for CFG training (gpt_1d.py:78-105).</summary>
public sealed class LabelEmbedder : nn.Module
{
    public readonly Embedding embedding_table;
    private readonly int numClasses;
    private readonly double dropoutProb;

    public LabelEmbedder(int numClasses, int hidden, double dropoutProb, Device? device = null) : base(nameof(LabelEmbedder))
    {
        (this.numClasses, this.dropoutProb) = (numClasses, dropoutProb);
        embedding_table = nn.Embedding(numClasses + (dropoutProb > 0 ? 1 : 0), hidden, device: device);
        RegisterComponents();
    }

    /// <summary>
    /// labels (B,) -> (B,1,D). In training each label becomes the null class with probability p: one rand(B) draw on the
    /// labels' device, from <paramref name="gen"/> (the default generator when null, as the reference).
    /// </summary>
    public Tensor forward(Tensor labels, bool train, Generator? gen = null)
    {
        if (train && dropoutProb > 0)
            labels = where(SeededRandom.Rand(new[] { labels.shape[0] }, gen, labels.device) < dropoutProb, full_like(labels, numClasses), labels);
        return embedding_table.forward(labels).unsqueeze(1);
    }
}

/// <summary>The c2i Transformer of gpt_1d.py (class named Gpt here). Sequence position 0 is the class token, image token j sits at j+1.</summary>
public sealed class Gpt : nn.Module
{
    public readonly Parameter positional_embedding;
    public readonly LabelEmbedder cls_embedding;
    public readonly Embedding tok_embeddings;
    public readonly Dropout tok_dropout;
    public readonly ModuleList<TransformerBlock> layers;
    public readonly RMSNorm norm;
    public readonly Linear output;

    private readonly GptConfig config;
    private readonly Autocast ac = new();

    public GptConfig Config => config;

    /// <summary>Explicit-cast mixed precision for training (null = fp32). See <see cref="Autocast"/>.</summary>
    public ScalarType? AutocastDtype { get => ac.Dtype; set => ac.Dtype = value; }

    /// <summary>Recompute each block in backward instead of keeping its activations (training with grad only; see
    /// <see cref="ReTok.Models.Training.ActivationCheckpoint"/>). Same gradients, about one block's activations at a time.</summary>
    public bool ActivationCheckpointing { get; set; }

    /// <summary>Generator for the class-dropout draw in training (null = the default generator, as the reference).</summary>
    public Generator? ClassDropGenerator { get; set; }

    /// <summary>Builds the model directly on <paramref name="device"/> ("meta" builds the shapes without memory).</summary>
    public Gpt(GptConfig config, Generator? initGenerator = null, Device? device = null) : base(nameof(Gpt))
    {
        this.config = config.Validate();
        positional_embedding = new Parameter(zeros(GptConfig.ClsTokenNum + config.BlockSize, config.Dim, device: device));
        cls_embedding = new LabelEmbedder(config.NumClasses, config.Dim, config.ClassDropoutProb, device);
        tok_embeddings = nn.Embedding(config.VocabSize, config.Dim, device: device);
        tok_dropout = nn.Dropout(config.TokenDropoutP);
        layers = new ModuleList<TransformerBlock>(Enumerable.Range(0, config.NLayer).Select(_ => new TransformerBlock(config, ac, device)).ToArray());
        norm = new RMSNorm(config.Dim, config.NormEps, device);
        output = nn.Linear(config.Dim, config.VocabSize, hasBias: false, device: device);
        RegisterComponents();
        if (device?.type != DeviceType.META) InitializeWeights(initGenerator);
    }

    /// <summary>gpt_1d.py:423-453: Linear/Embedding ~ N(0, initializer_range), output zeroed, positions D^-0.5*N(0,1), norms 1.</summary>
    public void InitializeWeights(Generator? g = null)
    {
        using var _ = no_grad();
        double std = config.InitializerRange;
        foreach (var (name, p) in named_parameters())
        {
            // SeededRandom: a TorchSharp generator is a CPU generator; parameters may already live on a GPU
            if (name == "positional_embedding") SeededRandom.Normal_(p, 0, Math.Pow(config.Dim, -0.5), g);
            else if (name.EndsWith("norm.weight")) p.fill_(1);
            else if (name == "output.weight") p.zero_();
            else SeededRandom.Normal_(p, 0, std, g);
        }
    }

    private Tensor Head(Tensor h) => output.forward(norm.forward(h)).to_type(float32);

    /// <summary>
    /// Teacher-forced forward (gpt_1d.py:484-494, 548-561): idx (B,T-1) image codes, cond (B,) labels ->
    /// logits (B,T,V) fp32 where logits[:,p] predicts code p; loss = mean cross-entropy against targets (B,T) if given.
    /// In training mode applies class dropout, token (embedding) dropout and the residual/FFN dropouts.
    /// </summary>
    public (Tensor Logits, Tensor? Loss) forward(Tensor idx, Tensor cond, Tensor? targets = null)
    {
        long t = idx.shape[1] + GptConfig.ClsTokenNum;
        if (t > positional_embedding.shape[0])
            throw new ArgumentException($"sequence of {idx.shape[1]} codes + 1 class token exceeds block_size+1 = {positional_embedding.shape[0]} positions");
        var x = cat(new[] { cls_embedding.forward(cond, training, ClassDropGenerator), tok_embeddings.forward(idx) }, 1);
        x = x + positional_embedding.narrow(0, 0, t).to_type(x.dtype);
        var h = tok_dropout.forward(x);
        bool ckpt = ActivationCheckpointing && training && is_grad_enabled();
        foreach (var layer in layers)
            h = ckpt ? Layers.ActivationCheckpoint.Apply(x => layer.forward(x), h, layer.parameters().ToArray()) : layer.forward(h);
        var logits = Head(h);
        Tensor? loss = targets is null ? null : F.cross_entropy(logits.view(-1, logits.shape[^1]), targets.reshape(-1));
        return (logits, loss);
    }

    /// <summary>Fresh cache for `batch` rows and `capacity` positions (1 class + generated tokens), in the embedding dtype.</summary>
    public KvCache NewCache(long batch, long capacity) =>
        new(config.NLayer, batch, config.NHead, capacity, config.HeadDim,
            AutocastDtype ?? tok_embeddings.weight!.dtype, tok_embeddings.weight!.device);

    /// <summary>Prefill (gpt_1d.py:496-501): class embedding at position 0, no class dropout. Returns (B,1,V) logits predicting code 0.</summary>
    public Tensor Prefill(Tensor cond, KvCache cache)
    {
        var x = cls_embedding.forward(cond, train: false) + positional_embedding.narrow(0, 0, 1).to_type(tok_embeddings.weight!.dtype);
        return Run(tok_dropout.forward(x), cache, 0);
    }

    /// <summary>Decode step (gpt_1d.py:502-514): idx (B,S) codes placed at sequence positions pos..pos+S-1. Returns (B,S,V).</summary>
    public Tensor Decode(Tensor idx, long pos, KvCache cache)
    {
        if (pos < 1 || pos + idx.shape[1] > positional_embedding.shape[0])
            throw new ArgumentException($"decode positions {pos}..{pos + idx.shape[1] - 1} are outside 1..{positional_embedding.shape[0] - 1}");
        var x = tok_embeddings.forward(idx);
        x = x + positional_embedding.narrow(0, pos, idx.shape[1]).to_type(x.dtype);
        return Run(tok_dropout.forward(x), cache, pos);
    }

    private Tensor Run(Tensor h, KvCache cache, long start)
    {
        for (int i = 0; i < layers.Count; i++) h = layers[i].forward(h, cache, i, start);
        return Head(h);
    }
}

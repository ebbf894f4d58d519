using ReTok.Models.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Models.Dinov2;

/// <summary>
/// DINOv2 ViT (facebookresearch/dinov2 models/vision_transformer.py, layers/*). Defaults = hub entry dinov2_vitb14:
/// img 518 (37x37 grid), patch 14, dim 768, depth 12, 12 heads, MLP ratio 4, LayerScale init 1.0, no registers,
/// LayerNorm eps 1e-6, exact GELU, interpolate_offset 0.1, no antialias. <c>ImgSize</c> only sizes pos_embed.
/// </summary>
public sealed record Dinov2Config(
    int ImgSize = 518,
    int PatchSize = 14,
    int EmbedDim = 768,
    int Depth = 12,
    int NumHeads = 12,
    double MlpRatio = 4.0,
    double? LayerScaleInit = 1.0,
    int NumRegisterTokens = 0,
    double InterpolateOffset = 0.1,
    bool InterpolateAntialias = false)
{
    public static Dinov2Config VitB14 => new();
    public int GridSize => ImgSize / PatchSize;
}

public sealed record Dinov2Features(Tensor ClsToken, Tensor PatchTokens, Tensor PreNorm);

internal sealed class PatchEmbed : Module<Tensor, Tensor>
{
    private readonly Conv2d proj;

    public PatchEmbed(int patch, int dim) : base(nameof(PatchEmbed))
    {
        proj = Conv2d(3, dim, patch, stride: patch);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => proj.forward(x).flatten(2).transpose(1, 2); // B HW C
}

internal sealed class LayerScale : Module<Tensor, Tensor>
{
    private readonly Parameter gamma;

    public LayerScale(int dim, double init) : base(nameof(LayerScale))
    {
        gamma = Parameter(full(dim, init));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x * gamma;
}

internal sealed class Attention : Module<Tensor, Tensor>
{
    private readonly Linear qkv, proj;
    private readonly int heads;

    public Attention(int dim, int heads) : base(nameof(Attention))
    {
        this.heads = heads;
        qkv = Linear(dim, dim * 3);
        proj = Linear(dim, dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        var parts = qkv.forward(x).reshape(b, n, 3, heads, c / heads).permute(2, 0, 3, 1, 4); // 3 B H N d
        var y = F.scaled_dot_product_attention(parts[0], parts[1], parts[2]);                  // scale 1/sqrt(d)
        return proj.forward(y.transpose(1, 2).reshape(b, n, c));
    }
}

internal sealed class Mlp : Module<Tensor, Tensor>
{
    private readonly Linear fc1, fc2;

    public Mlp(int dim, int hidden) : base(nameof(Mlp))
    {
        fc1 = Linear(dim, hidden);
        fc2 = Linear(hidden, dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => fc2.forward(F.gelu(fc1.forward(x)));
}

internal sealed class Block : Module<Tensor, Tensor>
{
    private readonly LayerNorm norm1, norm2;
    private readonly Attention attn;
    private readonly Mlp mlp;
    private readonly Module<Tensor, Tensor> ls1, ls2;

    public Block(Dinov2Config c) : base(nameof(Block))
    {
        norm1 = LayerNorm(c.EmbedDim, eps: 1e-6);
        attn = new Attention(c.EmbedDim, c.NumHeads);
        ls1 = c.LayerScaleInit is double v1 && v1 != 0 ? new LayerScale(c.EmbedDim, v1) : Identity();
        norm2 = LayerNorm(c.EmbedDim, eps: 1e-6);
        mlp = new Mlp(c.EmbedDim, (int)(c.EmbedDim * c.MlpRatio));
        ls2 = c.LayerScaleInit is double v2 && v2 != 0 ? new LayerScale(c.EmbedDim, v2) : Identity();
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        x = x + ls1.forward(attn.forward(norm1.forward(x)));
        return x + ls2.forward(mlp.forward(norm2.forward(x)));
    }
}

/// <summary>DinoVisionTransformer (inference only: no masks, no drop path). State-dict names as dinov2_vitb14_pretrain.pth.</summary>
public sealed class DinoVisionTransformer : Module<Tensor, Tensor>
{
    public Dinov2Config Config { get; }
    private readonly PatchEmbed patch_embed;
    private readonly Parameter cls_token, pos_embed, mask_token;
    private readonly Parameter? register_tokens;
    private readonly ModuleList<Block> blocks;
    private readonly LayerNorm norm;

    public DinoVisionTransformer(Dinov2Config? config = null) : base(nameof(DinoVisionTransformer))
    {
        var c = Config = config ?? new Dinov2Config();
        patch_embed = new PatchEmbed(c.PatchSize, c.EmbedDim);
        cls_token = Parameter(zeros(1, 1, c.EmbedDim));
        pos_embed = Parameter(zeros(1, c.GridSize * c.GridSize + 1, c.EmbedDim));
        register_tokens = c.NumRegisterTokens > 0 ? Parameter(zeros(1, c.NumRegisterTokens, c.EmbedDim)) : null;
        blocks = new ModuleList<Block>(Enumerable.Range(0, c.Depth).Select(_ => new Block(c)).ToArray());
        norm = LayerNorm(c.EmbedDim, eps: 1e-6);
        mask_token = Parameter(zeros(1, c.EmbedDim));
        RegisterComponents();
    }

    public Tensor PosEmbed => pos_embed;

    /// <summary>Replace pos_embed by its resampling to a gh x gw grid (timm resample_abs_pos_embed, as GigaTok's
    /// load_encoders does once at load: 37x37 -> 16x16).</summary>
    public void ResamplePosEmbed(int gh, int gw)
    {
        using var _ = no_grad();
        var r = Dinov2Weights.ResampleAbsPosEmbed(pos_embed, gh, gw);
        if (r.shape.SequenceEqual(pos_embed.shape)) { pos_embed.copy_(r); return; }
        pos_embed.set_(r.detach().clone());
    }

    /// <summary>interpolate_pos_encoding: stored table when the token count matches and the input is square, else a
    /// bicubic resampling of the patch grid by scale factor ((g + offset)/M) (dinov2's historical kludge).</summary>
    public Tensor InterpolatePosEncoding(Tensor x, long h, long w)
    {
        var c = Config;
        long npatch = x.shape[1] - 1, n = pos_embed.shape[1] - 1;
        if (npatch == n && h == w) return pos_embed;
        var pos = pos_embed.to(float32);
        var cls = pos[TensorIndex.Colon, 0];
        var patch = pos[TensorIndex.Colon, TensorIndex.Slice(1)];
        long dim = x.shape[^1], h0 = h / c.PatchSize, w0 = w / c.PatchSize;
        long m = (long)Math.Sqrt(n);
        if (m * m != n) throw new InvalidOperationException($"pos_embed has {n} patch positions, not a square grid");
        var grid = patch.reshape(1, m, m, dim).permute(0, 3, 1, 2);
        Tensor res = c.InterpolateOffset != 0
            ? F.interpolate(grid, scale_factor: new[] { (h0 + c.InterpolateOffset) / m, (w0 + c.InterpolateOffset) / m },
                mode: InterpolationMode.Bicubic, antialias: c.InterpolateAntialias)
            : F.interpolate(grid, size: new[] { h0, w0 }, mode: InterpolationMode.Bicubic, antialias: c.InterpolateAntialias);
        if (res.shape[2] != h0 || res.shape[3] != w0)
            throw new InvalidOperationException($"pos_embed interpolation gave {res.shape[2]}x{res.shape[3]}, expected {h0}x{w0}");
        res = res.permute(0, 2, 3, 1).reshape(1, -1, dim);
        return cat(new[] { cls.unsqueeze(0), res }, 1).to(x.dtype);
    }

    public Dinov2Features ForwardFeatures(Tensor x)
    {
        long h = x.shape[2], w = x.shape[3];
        var t = patch_embed.forward(x);
        t = cat(new[] { cls_token.to(t.dtype).expand(t.shape[0], -1, -1), t }, 1);
        t = t + InterpolatePosEncoding(t, h, w).to(t.dtype);
        if (register_tokens is not null)
            t = cat(new[] { t[.., ..1], register_tokens.to(t.dtype).expand(t.shape[0], -1, -1), t[.., 1..] }, 1);
        foreach (var blk in blocks) t = blk.forward(t);
        var xn = norm.forward(t);
        int r = Config.NumRegisterTokens;
        return new Dinov2Features(xn[.., 0], xn[.., (1 + r)..], t);
    }

    /// <summary>The normed patch tokens (the semantic-loss target).</summary>
    public override Tensor forward(Tensor x) => ForwardFeatures(x).PatchTokens;
}

/// <summary>Weight files for the teacher.</summary>
public static class Dinov2Weights
{
    /// <summary>timm.layers.resample_abs_pos_embed (timm 1.0.9 defaults: 1 prefix token kept, bicubic, antialias).</summary>
    public static Tensor ResampleAbsPosEmbed(Tensor posemb, int gh, int gw, int numPrefixTokens = 1)
    {
        long tokens = posemb.shape[1];
        if (gh * gw + numPrefixTokens == tokens && gh == gw) return posemb;
        long hw = (long)Math.Sqrt(tokens - numPrefixTokens);
        if (hw * hw != tokens - numPrefixTokens) throw new ArgumentException($"pos_embed with {tokens} tokens is not 1 + a square grid");
        var prefix = posemb[.., ..numPrefixTokens];
        var grid = posemb[.., numPrefixTokens..];
        long dim = grid.shape[^1];
        var g = grid.to(float32).reshape(1, hw, hw, dim).permute(0, 3, 1, 2);
        g = F.interpolate(g, size: new long[] { gh, gw }, mode: InterpolationMode.Bicubic, antialias: true);
        g = g.permute(0, 2, 3, 1).reshape(1, -1, dim).to(posemb.dtype);
        return cat(new[] { prefix, g }, 1);
    }

    /// <summary>Copy a state dict into the model by name (StateDictFile.LoadInto, strict). pos_embed of a different grid
    /// (the 37x37 table of the 518-px checkpoint) is resampled to the model's grid first; the checkpoint's classifier
    /// head (head.weight/bias) is not part of the backbone and is ignored.</summary>
    public static void Load(DinoVisionTransformer model, IReadOnlyDictionary<string, Tensor> sd, string source)
    {
        using var _ = no_grad();
        if (sd.TryGetValue("pos_embed", out var pos) && model.state_dict().TryGetValue("pos_embed", out var own) && !pos.shape.SequenceEqual(own.shape))
            sd = new Dictionary<string, Tensor>(sd) { ["pos_embed"] = ResampleAbsPosEmbed(pos, model.Config.GridSize, model.Config.GridSize) };
        StateDictFile.LoadInto(model, sd, source, mayBeUnexpected: k => k is "head.weight" or "head.bias");
    }
}

/// <summary>A frozen network giving per-image token features for the semantic loss.</summary>
public interface ISemanticTeacher
{
    /// <summary>images in [-1, 1], [B, 3, H, W] -> [B, T, D] float32 features, no grad.</summary>
    Tensor Features(Tensor images);
}

/// <summary>
/// GigaTok's semantic teacher: DINOv2 ViT-B/14 (no registers) with pos_embed resampled once to 16x16, fed
/// (x+1)/2 -> ImageNet Normalize -> bicubic 224 (align_corners False, no antialias), returning x_norm_patchtokens
/// [B, 256, 768] (final LayerNorm, CLS excluded). Frozen, eval, no_grad. The reference runs it under fp16 autocast;
/// here it runs in <c>computeType</c> (float32 default; bf16/fp16 casts the weights once).
/// </summary>
public sealed class Dinov2Teacher : ISemanticTeacher, IDisposable
{
    public DinoVisionTransformer Model { get; }
    public int InputSize { get; }
    private readonly ScalarType computeType;
    private static readonly float[] Mean = { 0.485f, 0.456f, 0.406f }, Std = { 0.229f, 0.224f, 0.225f };

    public Dinov2Teacher(DinoVisionTransformer model, int grid = 16, ScalarType computeType = ScalarType.Float32)
    {
        Model = model;
        InputSize = grid * model.Config.PatchSize;
        this.computeType = computeType;
        if (model.PosEmbed.shape[1] != grid * grid + 1) model.ResamplePosEmbed(grid, grid);
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
        if (computeType != ScalarType.Float32) model.to(computeType);
    }

    /// <summary>Load dinov2_vitb14_pretrain.pth (or a .safetensors export of it) and build the 16x16-grid teacher.</summary>
    public static Dinov2Teacher Load(string path, Device? device = null, Dinov2Config? config = null, int grid = 16,
        ScalarType computeType = ScalarType.Float32)
    {
        var c = (config ?? Dinov2Config.VitB14) with { ImgSize = grid * (config ?? Dinov2Config.VitB14).PatchSize };
        var model = new DinoVisionTransformer(c);
        Dinov2Weights.Load(model, StateDictFile.Read(path, prefer: "model"), path);
        if (device is not null) model.to(device);
        return new Dinov2Teacher(model, grid, computeType);
    }

    public Tensor Preprocess(Tensor images)
    {
        var dev = images.device;
        var x = (images.to(float32) + 1) / 2.0f;
        x = (x - tensor(Mean, device: dev).view(1, 3, 1, 1)) / tensor(Std, device: dev).view(1, 3, 1, 1);
        return F.interpolate(x, size: new long[] { InputSize, InputSize }, mode: InterpolationMode.Bicubic, align_corners: false);
    }

    public Tensor Features(Tensor images)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var x = Preprocess(images);
        if (computeType != ScalarType.Float32) x = x.to(computeType);
        return Model.ForwardFeatures(x).PatchTokens.to(float32).MoveToOuterDisposeScope();
    }

    public void Dispose() => Model.Dispose();
}

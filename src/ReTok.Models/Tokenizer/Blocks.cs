using ReTok.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Models.Tokenizer;

// CNN pieces of the tokenizer (LlamaGen/GigaTok blocks.py L213-344, L1779-2022). Field names are the state-dict names.

public static class Ops
{
    /// <summary>swish as the reference writes it (x·sigmoid(x)), not F.silu, to keep the same rounding.</summary>
    public static Tensor Swish(Tensor x) => x * torch.sigmoid(x);

    /// <summary>GroupNorm(32, C, eps 1e-6, affine). TorchSharp leaves the affine weights uninitialised: set 1/0.</summary>
    public static GroupNorm Norm(long c)
    {
        var gn = nn.GroupNorm(32, c, 1e-6, affine: true);
        using (torch.no_grad()) { gn.weight!.fill_(1); gn.bias!.zero_(); }
        return gn;
    }

    /// <summary>Depth-to-space in DCR order (blocks.py L218-250): out[b,c,2h+i,2w+j] = in[b,(2i+j)·C+c,h,w]. Not pixel_shuffle.</summary>
    public static Tensor DepthToSpace(Tensor x, int block)
    {
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3], s = block * block;
        return x.view(b, block, block, c / s, h, w).permute(0, 3, 4, 1, 5, 2).contiguous().view(b, c / s, h * block, w * block);
    }
}

public sealed class ResnetBlock : nn.Module<Tensor, Tensor>
{
    readonly GroupNorm norm1, norm2;
    readonly Conv2d conv1, conv2;
    readonly Conv2d? nin_shortcut;

    public ResnetBlock(long cin, long cout) : base(nameof(ResnetBlock))
    {
        norm1 = Ops.Norm(cin);
        conv1 = nn.Conv2d(cin, cout, 3, padding: 1);
        norm2 = Ops.Norm(cout);
        conv2 = nn.Conv2d(cout, cout, 3, padding: 1);
        if (cin != cout) nin_shortcut = nn.Conv2d(cin, cout, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        // Amp: convs in the compute dtype, GroupNorm in fp32 (as torch.autocast); plain calls outside a scope
        var h = Amp.Conv(conv1, Ops.Swish(norm1.call(Amp.F32(x))));
        h = Amp.Conv(conv2, Ops.Swish(norm2.call(Amp.F32(h))));
        return (nin_shortcut is null ? x : Amp.Conv(nin_shortcut, x)) + h;
    }
}

/// <summary>Zero-pad right/bottom by one, then a 3x3 stride-2 valid conv (blocks.py L280-295).</summary>
public sealed class Downsample : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv;
    public Downsample(long c) : base(nameof(Downsample)) { conv = nn.Conv2d(c, c, 3, stride: 2); RegisterComponents(); }
    public override Tensor forward(Tensor x) => Amp.Conv(conv, F.pad(x, new long[] { 0, 1, 0, 1 }));
}

/// <summary>3x3 conv to 4C channels, then DCR depth-to-space (blocks.py L298-314).</summary>
public sealed class D2SUpsampler : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv1;
    public D2SUpsampler(long c) : base(nameof(D2SUpsampler)) { conv1 = nn.Conv2d(c, 4 * c, 3, padding: 1); RegisterComponents(); }
    public override Tensor forward(Tensor x) => Ops.DepthToSpace(Amp.Conv(conv1, x), 2);
}

/// <summary>
/// GroupNorm without affine, modulated by the 16x16 style map's per-channel std (unbiased, +eps, sqrt) through
/// `gamma` and its mean through `beta` (blocks.py L318-344; the reference comment "not unbias" is wrong).
/// </summary>
public sealed class AdaptiveGroupNorm : nn.Module<Tensor, Tensor, Tensor>
{
    readonly Linear gamma, beta;
    public AdaptiveGroupNorm(long zChannels, long c) : base(nameof(AdaptiveGroupNorm))
    {
        gamma = nn.Linear(zChannels, c);
        beta = nn.Linear(zChannels, c);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor style)
    {
        long b = x.shape[0], c = x.shape[1];
        var s = Amp.F32(style).reshape(style.shape[0], style.shape[1], -1);
        var scale = Amp.Linear(gamma, (s.var(-1, unbiased: true) + 1e-6).sqrt()).view(b, c, 1, 1);
        var bias = Amp.Linear(beta, s.mean(new long[] { -1 })).view(b, c, 1, 1);
        return scale * F.group_norm(Amp.F32(x), 32, eps: 1e-6) + bias;
    }
}

/// <summary>`conv_blocks.{i}` of the encoder: a bare container of `res` and `downsample`.</summary>
public sealed class EncoderLevel : nn.Module
{
    public readonly ModuleList<ResnetBlock> res = new();
    public readonly Downsample? downsample;
    public EncoderLevel(long cin, long cout, int numRes, bool down) : base(nameof(EncoderLevel))
    {
        for (int i = 0; i < numRes; i++) res.Add(new ResnetBlock(i == 0 ? cin : cout, cout));
        if (down) downsample = new Downsample(cout);
        RegisterComponents();
    }
}

/// <summary>CNN encoder, 256x256 → z_channels x 16x16 (blocks.py L1779-1862, use_attn False).</summary>
public sealed class CnnEncoder : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv_in, conv_out;
    readonly ModuleList<EncoderLevel> conv_blocks = new();
    readonly ModuleList<ResnetBlock> mid = new();
    readonly GroupNorm norm_out;

    public CnnEncoder(TokenizerConfig c) : base(nameof(CnnEncoder))
    {
        conv_in = nn.Conv2d(3, c.Ch, 3, padding: 1);
        long prev = c.Ch;
        for (int i = 0; i < c.EncoderChMult.Length; i++)
        {
            long cout = c.Ch * c.EncoderChMult[i];
            conv_blocks.Add(new EncoderLevel(prev, cout, c.NumResBlocks, i != c.EncoderChMult.Length - 1));
            prev = cout;
        }
        mid.Add(new ResnetBlock(prev, prev));
        mid.Add(new ResnetBlock(prev, prev));
        norm_out = Ops.Norm(prev);
        conv_out = nn.Conv2d(prev, c.ZChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var h = Amp.Conv(conv_in, x);
        foreach (var level in conv_blocks)
        {
            foreach (var r in level.res) h = r.call(h);
            if (level.downsample != null) h = level.downsample.call(h);
        }
        foreach (var r in mid) h = r.call(h);
        return Amp.Conv(conv_out, Ops.Swish(norm_out.call(Amp.F32(h))));
    }
}

/// <summary>`conv_blocks.{j}` of the decoder: `res` (num_res_blocks + 1 blocks) and an optional `upsample`.</summary>
public sealed class DecoderLevel : nn.Module
{
    public readonly ModuleList<ResnetBlock> res = new();
    public readonly D2SUpsampler? upsample;
    public DecoderLevel(long cin, long cout, int numRes, bool up) : base(nameof(DecoderLevel))
    {
        for (int i = 0; i <= numRes; i++) res.Add(new ResnetBlock(i == 0 ? cin : cout, cout));
        if (up) upsample = new D2SUpsampler(cout);
        RegisterComponents();
    }
}

/// <summary>
/// Pixel decoder, z_channels x 16x16 → 3x256x256 (blocks.py L1866-1984, adaptive_gn + d2s_up). Each level starts
/// with an AdaptiveGroupNorm driven by the decoder input itself (the "style").
/// </summary>
public sealed class CnnDecoder : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv_in;
    readonly SafeConv2d conv_out;   // 3 output channels: libtorch CPU gets this conv's input gradient wrong (SafeConv2d)
    readonly ModuleList<ResnetBlock> mid = new();
    readonly ModuleList<DecoderLevel> conv_blocks = new();
    readonly ModuleList<AdaptiveGroupNorm> adaptive = new();
    readonly GroupNorm norm_out;

    public CnnDecoder(TokenizerConfig c) : base(nameof(CnnDecoder))
    {
        var mult = c.DecoderChMult;
        long prev = c.Ch * mult[^1];
        conv_in = nn.Conv2d(c.ZChannels, prev, 3, padding: 1);
        mid.Add(new ResnetBlock(prev, prev));
        mid.Add(new ResnetBlock(prev, prev));
        for (int level = mult.Length - 1; level >= 0; level--)
        {
            long cout = c.Ch * mult[level];
            adaptive.Add(new AdaptiveGroupNorm(c.ZChannels, prev));
            conv_blocks.Add(new DecoderLevel(prev, cout, c.NumResBlocks, level != 0));
            prev = cout;
        }
        norm_out = Ops.Norm(prev);
        conv_out = new SafeConv2d(prev, 3, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor z)
    {
        var h = Amp.Conv(conv_in, z);
        foreach (var r in mid) h = r.call(h);
        for (int j = 0; j < conv_blocks.Count; j++)
        {
            h = adaptive[j].call(h, z);
            foreach (var r in conv_blocks[j].res) h = r.call(h);
            if (conv_blocks[j].upsample is { } up) h = up.call(h);
        }
        return conv_out.call(Ops.Swish(norm_out.call(Amp.F32(h))));
    }
}

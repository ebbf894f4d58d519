using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Models;

/// <summary>
/// Explicit automatic mixed precision for modules that call through here (TorchSharp has no torch.autocast). Inside
/// <see cref="Enable"/> with bf16/fp16, the ops that torch.autocast runs in low precision (linear, conv, bmm, matmul)
/// cast their inputs and the (fp32 master) weights to the compute dtype, so gradients flow back to fp32 parameters
/// through the casts; the ops autocast keeps in fp32 (layer_norm, group_norm, softmax, losses) get fp32 inputs via
/// <see cref="F32"/>. Everything else follows ordinary type promotion (bf16 + fp32 = fp32), as under autocast.
/// Outside a scope (or with fp32) every helper is the plain module call, bit-identical to before. The scope is
/// per thread: a training step runs synchronously on one thread.
/// </summary>
public static class Amp
{
    [ThreadStatic] private static ScalarType? current;

    /// <summary>The low-precision compute dtype in force on this thread, null for fp32.</summary>
    public static ScalarType? Dtype => current;

    /// <summary>Run the enclosed forward with <paramref name="dtype"/> compute (null or Float32 = fp32); restores the previous setting.</summary>
    public static IDisposable Enable(ScalarType? dtype)
    {
        var prev = current;
        current = dtype is ScalarType.Float32 ? null : dtype;
        return new Restore(prev);
    }

    private sealed class Restore(ScalarType? prev) : IDisposable
    {
        public void Dispose() => current = prev;
    }

    static Tensor Low(Tensor t, ScalarType d) => t.dtype == d || !t.is_floating_point() ? t : t.to(d);

    /// <summary>Cast to float32 inside a scope (inputs of norms, softmax, losses, the quantizer); identity outside.</summary>
    public static Tensor F32(Tensor x) => current is null || x.dtype == ScalarType.Float32 || !x.is_floating_point() ? x : x.to(ScalarType.Float32);

    public static Tensor Linear(Linear l, Tensor x) =>
        current is ScalarType d ? F.linear(Low(x, d), Low(l.weight!, d), l.bias is null ? null : Low(l.bias, d)) : l.call(x);

    /// <summary>F.linear with explicit weights (packed projections).</summary>
    public static Tensor Linear(Tensor x, Tensor w, Tensor? b) =>
        current is ScalarType d ? F.linear(Low(x, d), Low(w, d), b is null ? null : Low(b, d)) : F.linear(x, w, b);

    public static Tensor Conv(Conv2d c, Tensor x)
    {
        if (current is not ScalarType d) return c.call(x);
        if (c.padding_mode != PaddingModes.Zeros || c.padding is null)
            throw new NotSupportedException("Amp.Conv: only zero padding with explicit sizes is supported");
        return F.conv2d(Low(x, d), Low(c.weight, d), c.bias is null ? null : Low(c.bias, d), c.stride, c.padding, c.dilation, c.groups);
    }

    /// <summary>conv2d with explicit weights (modules that build their own weights, e.g. SafeConv2d).</summary>
    public static Tensor Conv(Tensor x, Tensor w, Tensor? b, long[] stride, long[] padding) =>
        current is ScalarType d
            ? F.conv2d(Low(x, d), Low(w, d), b is null ? null : Low(b, d), strides: stride, padding: padding)
            : F.conv2d(x, w, b, strides: stride, padding: padding);

    public static Tensor Bmm(Tensor a, Tensor b) => current is ScalarType d ? torch.bmm(Low(a, d), Low(b, d)) : torch.bmm(a, b);

    /// <summary>Sequential of Linear / activation layers (e.g. distill_mlp).</summary>
    public static Tensor Sequential(Sequential s, Tensor x)
    {
        if (current is null) return s.call(x);
        foreach (var m in s.children())
            x = m switch
            {
                Linear l => Linear(l, x),
                Conv2d c => Conv(c, x),
                _ => ((nn.Module<Tensor, Tensor>)m).call(x),
            };
        return x;
    }
}

using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Models.Layers;

/// <summary>
/// Conv2d (same parameters, names and default init as nn.Conv2d) that works around a libtorch 2.10 CPU bug seen on
/// this machine (oneDNN AVX2/AVX-512 kernels): for float32 convolutions with stride 1 and kernel > 1 whose number of
/// output channels is not a multiple of 16, the gradient with respect to the INPUT is wrong (relative error ~1, or
/// NaN); forward values and weight gradients are correct. Reproduced by ConvBugTests; DNNL_MAX_CPU_ISA=SSE41 also
/// avoids it at half the conv speed. On CPU the weight is zero-padded to a multiple of 16 output channels and the
/// output sliced back, which takes the correct kernel path; gradients of the real weight are unchanged. On CUDA the
/// plain convolution runs. Needed wherever a trained conv has few output channels: the PatchGAN's 512->1 logit conv
/// and the tokenizer's 128->3 conv_out.
/// </summary>
public sealed class SafeConv2d : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly Parameter? bias;
    private readonly long[] stride, padding;

    public SafeConv2d(long inChannels, long outChannels, long kernelSize, long stride = 1, long padding = 0, bool bias = true)
        : base(nameof(SafeConv2d))
    {
        this.stride = new[] { stride, stride };
        this.padding = new[] { padding, padding };
        weight = nn.Parameter(empty(outChannels, inChannels, kernelSize, kernelSize));
        this.bias = bias ? nn.Parameter(empty(outChannels)) : null;
        RegisterComponents();
        using var _ = no_grad();
        // nn.Conv2d.reset_parameters: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)); bias U(+-1/sqrt(fan_in))
        double bound = 1 / Math.Sqrt(inChannels * kernelSize * kernelSize);
        nn.init.uniform_(weight, -bound, bound);
        if (this.bias is not null) nn.init.uniform_(this.bias, -bound, bound);
    }

    public Parameter Weight => weight;
    public Parameter? Bias => bias;

    public override Tensor forward(Tensor x)
    {
        long cout = weight.shape[0];
        if (x.device_type != DeviceType.CPU || cout % 16 == 0)
            return Amp.Conv(x, weight, bias, stride, padding);
        long extra = (cout + 15) / 16 * 16 - cout;
        var w = F.pad(weight, new long[] { 0, 0, 0, 0, 0, 0, 0, extra });
        var b = bias is null ? null : F.pad(bias, new long[] { 0, extra });
        // narrow, not a Range indexer: TorchSharp Range indexers produced NaN gradients elsewhere (docs/tokenizer.md)
        return Amp.Conv(x, w, b, stride, padding).narrow(1, 0, cout);
    }
}

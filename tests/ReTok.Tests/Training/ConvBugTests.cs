using ReTok.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Tests.Training;

/// <summary>libtorch 2.10 CPU returns a wrong input gradient for stride-1 float32 convs whose output-channel count is
/// not a multiple of 16 (see SafeConv2d). SafeConv2d must give the float64 gradients.</summary>
public class ConvBugTests
{
    [Theory]
    [InlineData(64, 1, 9, 4, 1)]   // PatchGAN logit conv (512->1 in the real config)
    [InlineData(32, 3, 12, 3, 1)]  // tokenizer conv_out shape class (128->3)
    [InlineData(16, 5, 8, 3, 2)]
    public void SafeConv2dGradientsMatchFloat64(int cin, int cout, int hw, int k, int stride)
    {
        var g = new torch.Generator(17);
        var x = randn(new long[] { 2, cin, hw, hw }, generator: g);
        var conv = new SafeConv2d(cin, cout, k, stride, 1);
        var go = randn(conv.forward(x).shape, generator: g);
        var x32 = x.clone().requires_grad_(true);
        (conv.forward(x32) * go).sum().backward();
        var x64 = x.to(float64).requires_grad_(true);
        var w64 = conv.Weight.detach().to(float64).requires_grad_(true);
        var b64 = conv.Bias!.detach().to(float64).requires_grad_(true);
        (F.conv2d(x64, w64, b64, strides: new long[] { stride, stride }, padding: new long[] { 1, 1 }) * go.to(float64)).sum().backward();
        double Rel(Tensor a, Tensor r) => TrainingFixtures.MaxDiff(a, r) / TrainingFixtures.MaxAbs(r);
        Assert.InRange(Rel(x32.grad!, x64.grad!), 0, 1e-5);
        Assert.InRange(Rel(conv.Weight.grad!, w64.grad!), 0, 1e-5);
        Assert.InRange(Rel(conv.Bias.grad!, b64.grad!), 0, 1e-5);
        Assert.Equal(new long[] { cout, cin, k, k }, conv.state_dict()["weight"].shape);
    }
}

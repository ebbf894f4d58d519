using ReTok.Models.Layers;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace ReTok.Models.Training;

/// <summary>GigaTok's PatchGAN as the ReTok configs select it: disc_dim 64, 3 layers, kernel 4, BatchNorm, no blur.</summary>
public sealed record DiscriminatorConfig(int InChannels = 3, int Ndf = 64, int NLayers = 3, int KernelSize = 4);

/// <summary>
/// NLayerDiscriminator (tokenizer/tokenizer_image/discriminator_patchgan.py, taming-transformers / pix2pix).
/// One Sequential named <c>main</c>, so state-dict keys are <c>main.{i}.*</c> exactly as the reference checkpoint's
/// "discriminator" entry. 256x256 input gives 30x30 logits. BatchNorm stays in train mode during training in both the
/// G step and the D step (reference behaviour), so running statistics move three times per iteration.
/// </summary>
public sealed class PatchGanDiscriminator : Module<Tensor, Tensor>
{
    public DiscriminatorConfig Config { get; }
    private readonly Sequential main;

    public PatchGanDiscriminator(DiscriminatorConfig? config = null) : base(nameof(PatchGanDiscriminator))
    {
        var c = Config = config ?? new DiscriminatorConfig();
        int kw = c.KernelSize, ndf = c.Ndf;
        var layers = new List<Module<Tensor, Tensor>>
        {
            Conv2d(c.InChannels, ndf, kw, stride: 2, padding: 1),
            LeakyReLU(0.2, inplace: true),
        };
        int mult = 1;
        for (int n = 1; n < c.NLayers; n++)
        {
            int prev = mult;
            mult = Math.Min(1 << n, 8);
            layers.Add(Conv2d(ndf * prev, ndf * mult, kw, stride: 2, padding: 1, bias: false)); // BN follows: no bias
            layers.Add(BatchNorm2d(ndf * mult));
            layers.Add(LeakyReLU(0.2, inplace: true));
        }
        int last = mult;
        mult = Math.Min(1 << c.NLayers, 8);
        layers.Add(Conv2d(ndf * last, ndf * mult, kw, stride: 1, padding: 1, bias: false));
        layers.Add(BatchNorm2d(ndf * mult));
        layers.Add(LeakyReLU(0.2, inplace: true));
        layers.Add(new SafeConv2d(ndf * mult, 1, kw, stride: 1, padding: 1)); // 1 output channel: see SafeConv2d
        main = Sequential(layers);
        RegisterComponents();
        InitWeights();
    }

    /// <summary>Reference _init_weights: conv weight ~ N(0, 0.02), BN weight ~ N(1, 0.02), BN bias 0; conv biases keep
    /// the framework's default uniform(+-1/sqrt(fan_in)) init (the reference does not touch them). Uses the global RNG.</summary>
    private void InitWeights()
    {
        using var _ = no_grad();
        foreach (var m in main.children())
        {
            if (m is Conv2d conv) init.normal_(conv.weight, 0.0, 0.02);
            else if (m is SafeConv2d safe) init.normal_(safe.Weight, 0.0, 0.02);
            else if (m is BatchNorm2d bn)
            {
                init.normal_(bn.weight, 1.0, 0.02);
                bn.bias!.zero_();
            }
        }
    }

    /// <summary>Logits [B, 1, h, w], float32. Under an <see cref="Amp"/> scope the convs run in the compute dtype and
    /// BatchNorm in fp32 (its running statistics stay fp32).</summary>
    public override Tensor forward(Tensor input)
    {
        if (Amp.Dtype is null) return main.forward(input);
        var x = input;
        foreach (var m in main.children())
            x = m switch
            {
                Conv2d conv => Amp.Conv(conv, x),
                BatchNorm2d bn => bn.call(Amp.F32(x)),
                _ => ((Module<Tensor, Tensor>)m).call(x),
            };
        return Amp.F32(x);
    }
}

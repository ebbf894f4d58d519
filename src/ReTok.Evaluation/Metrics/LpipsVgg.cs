using ReTok.Models;
using ReTok.Models.IO;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace ReTok.Evaluation.Metrics;

/// <summary>
/// LPIPS v0.1 with the VGG16 backbone, as ReTok's tokenizer/tokenizer_image/lpips.py (taming-transformers' copy):
/// ScalingLayer -> torchvision VGG16 <c>features</c> tapped at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 -> unit-normalise
/// channels (eps 1e-10 added to the norm) -> squared difference -> 1x1 conv without bias (lin0..lin4) -> spatial mean -> sum.
/// Inputs are NCHW in [-1, 1] (ReTok passes the GT and the raw, unclamped decoder output). Parameter names:
/// <c>net.features.N.*</c> from torchvision's vgg16-397923af.pth (<c>features.N.*</c>) and <c>linK.model.1.weight</c> from vgg.pth.
/// </summary>
public sealed class LpipsVgg : Module<Tensor, Tensor, Tensor>
{
    static readonly int[] Taps = { 3, 8, 15, 22, 29 }; // indices of relu1_2 .. relu5_3 in vgg16.features
    static readonly long[] Channels = { 64, 128, 256, 512, 512 };

    private readonly Vgg16Features net;
    private readonly LinLayer lin0, lin1, lin2, lin3, lin4;

    public LpipsVgg() : base("LpipsVgg")
    {
        net = new Vgg16Features();
        lin0 = new LinLayer(Channels[0]); lin1 = new LinLayer(Channels[1]); lin2 = new LinLayer(Channels[2]);
        lin3 = new LinLayer(Channels[3]); lin4 = new LinLayer(Channels[4]);
        RegisterComponents();
    }

    /// <summary>Loads torchvision's VGG16 (features.* ; classifier.* ignored) and the LPIPS linear heads (lin0..lin4).</summary>
    public static LpipsVgg Load(string vgg16Path, string linPath)
    {
        var m = new LpipsVgg();
        m.LoadBackbone(vgg16Path);
        m.LoadLinHeads(linPath);
        m.eval();
        return m;
    }

    public void LoadBackbone(string vgg16Path)
    {
        var vgg = StateDictFile.Read(vgg16Path);
        try
        {
            StateDictFile.LoadInto(net, vgg, vgg16Path, mayBeMissing: StateDictFile.IsBatchNormCounter,
                mayBeUnexpected: k => StateDictFile.IsBatchNormCounter(k) || k.StartsWith("classifier."));
        }
        finally { foreach (var t in vgg.Values) t.Dispose(); }
    }

    public void LoadLinHeads(string linPath)
    {
        var lin = StateDictFile.Read(linPath);
        try
        {
            var heads = new[] { lin0, lin1, lin2, lin3, lin4 };
            for (int k = 0; k < heads.Length; k++)
            {
                var key = $"lin{k}.model.1.weight";
                if (!lin.TryGetValue(key, out var w)) throw new InvalidDataException($"{linPath}: missing '{key}' (expected the LPIPS v0.1 vgg.pth heads lin0..lin4)");
                StateDictFile.LoadInto(heads[k], new Dictionary<string, Tensor> { ["model.1.weight"] = w }, linPath);
            }
        }
        finally { foreach (var t in lin.Values) t.Dispose(); }
    }

    /// <summary>Per-image LPIPS distance [N] (ReTok reports the mean of per-batch means of this).</summary>
    public override Tensor forward(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        // ScalingLayer constants (not parameters: vgg.pth does not carry them)
        var shift = tensor(new[] { -.030f, -.088f, -.188f }, device: a.device).view(1, 3, 1, 1);
        var scale = tensor(new[] { .458f, .448f, .450f }, device: a.device).view(1, 3, 1, 1);
        var fa = net.Taps((a - shift) / scale, Taps);
        var fb = net.Taps((b - shift) / scale, Taps);
        var lins = new[] { lin0, lin1, lin2, lin3, lin4 };
        Tensor? val = null;
        for (int k = 0; k < Taps.Length; k++)
        {
            var d = (Normalize(fa[k]) - Normalize(fb[k])).pow(2);
            var r = Amp.F32(lins[k].call(d)).mean(new long[] { 2, 3 }, keepdim: true);
            val = val is null ? r : val + r;
        }
        return val!.view(-1).MoveToOuterDisposeScope();
    }

    /// <summary>normalize_tensor; in fp32 under an <see cref="Amp"/> scope, as autocast runs LPIPS' pow in fp32.</summary>
    static Tensor Normalize(Tensor x) { x = Amp.F32(x); return x / ((x * x).sum(1, keepdim: true).sqrt() + 1e-10); }

    internal sealed class Vgg16Features : Module<Tensor, Tensor>
    {
        private readonly Sequential features;

        public Vgg16Features() : base("Vgg16Features")
        {
            var cfg = new object[] { 64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M" };
            var layers = new List<(string, Module<Tensor, Tensor>)>();
            long cin = 3;
            foreach (var c in cfg)
            {
                if (c is string) { layers.Add((layers.Count.ToString(), MaxPool2d(2, 2))); continue; }
                long cout = (int)c;
                layers.Add((layers.Count.ToString(), Conv2d(cin, cout, 3, padding: 1)));
                layers.Add((layers.Count.ToString(), ReLU()));
                cin = cout;
            }
            features = Sequential(layers);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => features.call(x);

        public List<Tensor> Taps(Tensor x, int[] taps)
        {
            var outs = new List<Tensor>();
            int last = taps[^1], i = 0;
            foreach (var layer in features.children())
            {
                if (i > last) break;
                // Amp: VGG convs in the compute dtype under a scope (the reference runs LPIPS inside the trainer's autocast)
                x = layer is Conv2d conv ? Amp.Conv(conv, x) : ((Module<Tensor, Tensor>)layer).call(x);
                if (taps.Contains(i)) outs.Add(x);
                i++;
            }
            return outs;
        }
    }

    internal sealed class LinLayer : Module<Tensor, Tensor>
    {
        private readonly Sequential model;

        public LinLayer(long cin) : base("NetLinLayer")
        {
            model = Sequential(("0", Dropout()), ("1", Conv2d(cin, 1, 1, bias: false)));
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => Amp.Sequential(model, x);
    }
}

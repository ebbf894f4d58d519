using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Evaluation.Inception;

/// <summary>
/// The "FID Inception" (TF graph inception-2015-12-05) as ported by pytorch-fid's <c>fid_inception_v3</c>: torchvision's
/// Inception-v3 layout and parameter names (so pt_inception-2015-12-05-6726825d.pth loads 1:1), BN eps 1e-3, 1008-way fc,
/// and the TF quirks: avg-pool branches ignore padding (count_include_pad=False) and Mixed_7c pools with max instead of avg.
/// Input handling follows the ADM evaluator's graph, not pytorch-fid: uint8 NHWC in, TF1 legacy bilinear resize to 299 on
/// floats 0..255, then (x - 128) / 128.
/// </summary>
public sealed class FidInceptionV3 : Module<Tensor, InceptionFeatures>
{
    public const int PoolDim = 2048, SpatialDim = 17 * 17 * 7, LogitDim = 1008;

    private readonly BasicConv2d Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3;
    private readonly InceptionA Mixed_5b, Mixed_5c, Mixed_5d;
    private readonly InceptionB Mixed_6a;
    private readonly InceptionC Mixed_6b, Mixed_6c, Mixed_6d, Mixed_6e;
    private readonly InceptionD Mixed_7a;
    private readonly InceptionE Mixed_7b, Mixed_7c;
    private readonly Linear fc;

    public FidInceptionV3() : base("FidInceptionV3")
    {
        Conv2d_1a_3x3 = new BasicConv2d(3, 32, 3, stride: 2);
        Conv2d_2a_3x3 = new BasicConv2d(32, 32, 3);
        Conv2d_2b_3x3 = new BasicConv2d(32, 64, 3, padding: 1);
        Conv2d_3b_1x1 = new BasicConv2d(64, 80, 1);
        Conv2d_4a_3x3 = new BasicConv2d(80, 192, 3);
        Mixed_5b = new InceptionA(192, 32);
        Mixed_5c = new InceptionA(256, 64);
        Mixed_5d = new InceptionA(288, 64);
        Mixed_6a = new InceptionB(288);
        Mixed_6b = new InceptionC(768, 128);
        Mixed_6c = new InceptionC(768, 160);
        Mixed_6d = new InceptionC(768, 160);
        Mixed_6e = new InceptionC(768, 192);
        Mixed_7a = new InceptionD(768);
        Mixed_7b = new InceptionE(1280, maxPool: false);
        Mixed_7c = new InceptionE(2048, maxPool: true);
        fc = Linear(2048, LogitDim);
        RegisterComponents();
    }

    /// <summary>uint8 (or float 0..255) NHWC images of any size -> pool_3, mixed_6/conv[..., :7] (NHWC-flattened), unbiased logits.</summary>
    public override InceptionFeatures forward(Tensor images)
    {
        using var scope = NewDisposeScope();
        if (images.dim() != 4 || images.shape[3] != 3) throw new ArgumentException($"expected NHWC images [N,H,W,3], got [{string.Join(",", images.shape)}]");
        var x = Tf1Resize.Bilinear(images.to(ScalarType.Float32), 299, 299);
        x = ((x - 128f) * 0.0078125f).permute(0, 3, 1, 2).contiguous();
        x = Conv2d_1a_3x3.call(x);
        x = Conv2d_2a_3x3.call(x);
        x = Conv2d_2b_3x3.call(x);
        x = F.max_pool2d(x, 3, 2);
        x = Conv2d_3b_1x1.call(x);
        x = Conv2d_4a_3x3.call(x);
        x = F.max_pool2d(x, 3, 2);
        x = Mixed_5c.call(Mixed_5b.call(x));
        x = Mixed_6a.call(Mixed_5d.call(x));
        x = Mixed_6c.call(Mixed_6b.call(x));
        // TF "mixed_6/conv" = Mixed_6d.branch1x1 after its ReLU; the evaluator keeps channels [:7] in NHWC order.
        var (x6d, spatial) = Mixed_6d.ForwardWithBranch1x1(x);
        x = Mixed_6e.call(x6d);
        x = Mixed_7c.call(Mixed_7b.call(Mixed_7a.call(x)));
        var pool = x.mean(new long[] { 2, 3 });
        var logits = pool.matmul(fc.weight!.t()); // softmax/logits/MatMul without the bias, as the evaluator's IS graph
        var sp = spatial.narrow(1, 0, 7).permute(0, 2, 3, 1).reshape(spatial.shape[0], -1);
        return new InceptionFeatures(pool.MoveToOuterDisposeScope(), sp.MoveToOuterDisposeScope(), logits.MoveToOuterDisposeScope());
    }

    internal sealed class BasicConv2d : Module<Tensor, Tensor>
    {
        private readonly Conv2d conv;
        private readonly BatchNorm2d bn;

        public BasicConv2d(long cin, long cout, long k, long stride = 1, long padding = 0) : this(cin, cout, (k, k), (stride, stride), (padding, padding)) { }

        public BasicConv2d(long cin, long cout, (long, long) k, (long, long) stride, (long, long) padding) : base("BasicConv2d")
        {
            conv = Conv2d(cin, cout, k, stride: stride, padding: padding, bias: false);
            bn = BatchNorm2d(cout, eps: 0.001);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => F.relu(bn.call(conv.call(x)));
    }

    static Tensor AvgPoolNoPad(Tensor x) => F.avg_pool2d(x, 3, 1, 1, count_include_pad: false);

    internal sealed class InceptionA : Module<Tensor, Tensor>
    {
        private readonly BasicConv2d branch1x1, branch5x5_1, branch5x5_2, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3, branch_pool;

        public InceptionA(long cin, long poolFeatures) : base("InceptionA")
        {
            branch1x1 = new BasicConv2d(cin, 64, 1);
            branch5x5_1 = new BasicConv2d(cin, 48, 1);
            branch5x5_2 = new BasicConv2d(48, 64, 5, padding: 2);
            branch3x3dbl_1 = new BasicConv2d(cin, 64, 1);
            branch3x3dbl_2 = new BasicConv2d(64, 96, 3, padding: 1);
            branch3x3dbl_3 = new BasicConv2d(96, 96, 3, padding: 1);
            branch_pool = new BasicConv2d(cin, poolFeatures, 1);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => cat(new[]
        {
            branch1x1.call(x),
            branch5x5_2.call(branch5x5_1.call(x)),
            branch3x3dbl_3.call(branch3x3dbl_2.call(branch3x3dbl_1.call(x))),
            branch_pool.call(AvgPoolNoPad(x)),
        }, 1);
    }

    internal sealed class InceptionB : Module<Tensor, Tensor>
    {
        private readonly BasicConv2d branch3x3, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3;

        public InceptionB(long cin) : base("InceptionB")
        {
            branch3x3 = new BasicConv2d(cin, 384, 3, stride: 2);
            branch3x3dbl_1 = new BasicConv2d(cin, 64, 1);
            branch3x3dbl_2 = new BasicConv2d(64, 96, 3, padding: 1);
            branch3x3dbl_3 = new BasicConv2d(96, 96, 3, stride: 2);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => cat(new[]
        {
            branch3x3.call(x),
            branch3x3dbl_3.call(branch3x3dbl_2.call(branch3x3dbl_1.call(x))),
            F.max_pool2d(x, 3, 2),
        }, 1);
    }

    internal sealed class InceptionC : Module<Tensor, Tensor>
    {
        private readonly BasicConv2d branch1x1, branch7x7_1, branch7x7_2, branch7x7_3,
            branch7x7dbl_1, branch7x7dbl_2, branch7x7dbl_3, branch7x7dbl_4, branch7x7dbl_5, branch_pool;

        public InceptionC(long cin, long c7) : base("InceptionC")
        {
            branch1x1 = new BasicConv2d(cin, 192, 1);
            branch7x7_1 = new BasicConv2d(cin, c7, 1);
            branch7x7_2 = new BasicConv2d(c7, c7, (1, 7), (1, 1), (0, 3));
            branch7x7_3 = new BasicConv2d(c7, 192, (7, 1), (1, 1), (3, 0));
            branch7x7dbl_1 = new BasicConv2d(cin, c7, 1);
            branch7x7dbl_2 = new BasicConv2d(c7, c7, (7, 1), (1, 1), (3, 0));
            branch7x7dbl_3 = new BasicConv2d(c7, c7, (1, 7), (1, 1), (0, 3));
            branch7x7dbl_4 = new BasicConv2d(c7, c7, (7, 1), (1, 1), (3, 0));
            branch7x7dbl_5 = new BasicConv2d(c7, 192, (1, 7), (1, 1), (0, 3));
            branch_pool = new BasicConv2d(cin, 192, 1);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => ForwardWithBranch1x1(x).Output;

        public (Tensor Output, Tensor Branch1x1) ForwardWithBranch1x1(Tensor x)
        {
            var b1 = branch1x1.call(x);
            var b7 = branch7x7_3.call(branch7x7_2.call(branch7x7_1.call(x)));
            var bd = branch7x7dbl_1.call(x);
            bd = branch7x7dbl_5.call(branch7x7dbl_4.call(branch7x7dbl_3.call(branch7x7dbl_2.call(bd))));
            var bp = branch_pool.call(AvgPoolNoPad(x));
            return (cat(new[] { b1, b7, bd, bp }, 1), b1);
        }
    }

    internal sealed class InceptionD : Module<Tensor, Tensor>
    {
        private readonly BasicConv2d branch3x3_1, branch3x3_2, branch7x7x3_1, branch7x7x3_2, branch7x7x3_3, branch7x7x3_4;

        public InceptionD(long cin) : base("InceptionD")
        {
            branch3x3_1 = new BasicConv2d(cin, 192, 1);
            branch3x3_2 = new BasicConv2d(192, 320, 3, stride: 2);
            branch7x7x3_1 = new BasicConv2d(cin, 192, 1);
            branch7x7x3_2 = new BasicConv2d(192, 192, (1, 7), (1, 1), (0, 3));
            branch7x7x3_3 = new BasicConv2d(192, 192, (7, 1), (1, 1), (3, 0));
            branch7x7x3_4 = new BasicConv2d(192, 192, 3, stride: 2);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => cat(new[]
        {
            branch3x3_2.call(branch3x3_1.call(x)),
            branch7x7x3_4.call(branch7x7x3_3.call(branch7x7x3_2.call(branch7x7x3_1.call(x)))),
            F.max_pool2d(x, 3, 2),
        }, 1);
    }

    internal sealed class InceptionE : Module<Tensor, Tensor>
    {
        private readonly BasicConv2d branch1x1, branch3x3_1, branch3x3_2a, branch3x3_2b,
            branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3a, branch3x3dbl_3b, branch_pool;
        private readonly bool _maxPool;

        public InceptionE(long cin, bool maxPool) : base("InceptionE")
        {
            _maxPool = maxPool;
            branch1x1 = new BasicConv2d(cin, 320, 1);
            branch3x3_1 = new BasicConv2d(cin, 384, 1);
            branch3x3_2a = new BasicConv2d(384, 384, (1, 3), (1, 1), (0, 1));
            branch3x3_2b = new BasicConv2d(384, 384, (3, 1), (1, 1), (1, 0));
            branch3x3dbl_1 = new BasicConv2d(cin, 448, 1);
            branch3x3dbl_2 = new BasicConv2d(448, 384, 3, padding: 1);
            branch3x3dbl_3a = new BasicConv2d(384, 384, (1, 3), (1, 1), (0, 1));
            branch3x3dbl_3b = new BasicConv2d(384, 384, (3, 1), (1, 1), (1, 0));
            branch_pool = new BasicConv2d(cin, 192, 1);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            var b3 = branch3x3_1.call(x);
            b3 = cat(new[] { branch3x3_2a.call(b3), branch3x3_2b.call(b3) }, 1);
            var bd = branch3x3dbl_2.call(branch3x3dbl_1.call(x));
            bd = cat(new[] { branch3x3dbl_3a.call(bd), branch3x3dbl_3b.call(bd) }, 1);
            // TF's mixed_10 (Mixed_7c) pools with max: a quirk of the 2015 graph that pytorch-fid keeps.
            var bp = branch_pool.call(_maxPool ? F.max_pool2d(x, 3, 1, 1) : AvgPoolNoPad(x));
            return cat(new[] { branch1x1.call(x), b3, bd, bp }, 1);
        }
    }
}

/// <summary>Per-image Inception outputs: pool_3 [N,2048], sFID spatial [N,2023], unbiased logits [N,1008] (float32).</summary>
public sealed record InceptionFeatures(Tensor Pool, Tensor Spatial, Tensor Logits) : IDisposable
{
    public void Dispose() { Pool.Dispose(); Spatial.Dispose(); Logits.Dispose(); }
}

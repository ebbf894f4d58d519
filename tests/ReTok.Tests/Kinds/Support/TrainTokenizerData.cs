using ReTok.Models.Dinov2;
using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Tests.Kinds.Support;

/// <summary>Fixture paths and the deterministic stand-ins shared with tests/fixtures/gen/jobs_train.py.</summary>
internal static class TrainTokenizerData
{
    public static string Fixture(string area, string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", area, name);

    /// <summary>LPIPS stand-in: per-image mean |tanh(1.5x) - tanh(1.5y)| (FixedPerceptual in the generator).</summary>
    public static Tensor FixedPerceptual(Tensor x, Tensor y) =>
        (tanh(1.5 * x) - tanh(1.5 * y)).abs().mean(new long[] { 1, 2, 3 }, keepdim: true);

    /// <summary>DINOv2 stand-in: tanh(avg_pool2d(x, 16) as [B, 256, 3] @ W), W[c, j] = sin(0.37 (dim c + j) + 1).</summary>
    public sealed class FixedTeacher(int dim) : ISemanticTeacher
    {
        private readonly Tensor w = sin(0.37 * (dim * arange(3, dtype: float64).view(3, 1) + arange(dim, dtype: float64).view(1, dim)) + 1.0).to(float32);

        public Tensor Features(Tensor images)
        {
            using var _ = no_grad();
            var p = F.avg_pool2d(images, 16);
            return tanh(p.flatten(2).transpose(1, 2).matmul(w.to(images.dtype)));
        }
    }

    public static TokenizerConfig TinyConfig() => TokenizerConfig.Load(Fixture("tokenizer", "tiny.yaml"));

    public static ReTokTokenizer TinyTokenizer() => ReTokTokenizer.FromCheckpoint(TinyConfig(), Fixture("tokenizer", "tiny.safetensors"));

    public static Tensor TinyImagesUint8() => Npz.LoadKey(Fixture("tokenizer", "images.npz"), "arr_0").ToTensor();
}

using ReTok.Evaluation.Metrics;
using ReTok.Evaluation.Weights;
using ReTok.Jobs.Kinds.EvalReconstruction;
using ReTok.Models.Tokenizer;
using TorchSharp;
using static ReTok.Tests.Kinds.Support.EvalJobSupport;

namespace ReTok.Tests.Kinds.EvalReconstruction;

/// <summary>eval-reconstruction's per-batch scoring against the evaluation component's ReconstructionEvaluator (parity-tested with ReTok).</summary>
public class ReconstructionUnitTests
{
    [Fact]
    public void ReconstructBatchScoresLikeTheReconstructionEvaluatorIncludingLpips()
    {
        var yaml = Path.Combine(Directory.CreateTempSubdirectory("recon-unit").FullName, "tiny.yaml");
        File.WriteAllText(yaml, TinyYaml);
        torch.manual_seed(1);
        using var model = new ReTokTokenizer(TokenizerConfig.Load(yaml));
        model.eval();
        using var lpips = new LpipsVgg();
        StateDict.ApplyFormula(lpips, (n, shape) => (0.05, n.StartsWith("lin") ? 0.05 : 0.0)); // positive heads
        lpips.eval();
        using var gt = torch.randint(0, 256, new long[] { 1, 256, 256, 3 }, torch.uint8);

        var (codes, width, perK) = ReconstructionCore.ReconstructBatch(model, lpips, torch.CPU, gt, [8, 256]);
        Assert.Equal(480, width);
        Assert.All(codes, c => Assert.InRange(c, 0, 63));
        using var _ = torch.no_grad();
        using var codeT = torch.tensor(codes).view(1, 480);
        foreach (var k in new[] { 8, 256 })
        {
            using var raw = model.Decode(codeT, k);
            using var u8 = ReconstructionEvaluator.ToUint8(raw);
            Assert.Equal(u8.bytes.ToArray(), perK[k].Recon);
            using var ev = new ReconstructionEvaluator(lpips);
            ev.AddBatch(gt, u8, raw);
            var want = ev.Result();
            Assert.Equal(want.Psnr, perK[k].Psnr.Single(), 12);
            Assert.Equal(want.Ssim, perK[k].Ssim.Single(), 12);
            Assert.NotNull(want.LpipsBatchMean);
            Assert.Equal(want.LpipsBatchMean!.Value, perK[k].Lpips!.Single(), 10);
            Assert.True(want.LpipsBatchMean > 0, $"LPIPS {want.LpipsBatchMean}");
        }
    }
}

using ReTok.Models.Tokenizer;
using ReTok.Models.Training;
using ReTok.Tests.Kinds.Support;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Tests.Training;

/// <summary>
/// use_direct_rec_loss: the model's shortcut decode dir_dec = decoder(S_cnn) (vq_vit_model.py L478-482) and the trainer
/// wiring (the loss terms themselves are checked against the reference in <see cref="DiscriminatorAndLossTests"/>).
/// </summary>
public class DirectReconstructionTests
{
    [Fact]
    public void TheDirectDecodeSkipsTheBottleneck_AndLeavesTheMainPathUnchanged()
    {
        using var model = TrainTokenizerData.TinyTokenizer();
        model.train();
        var images = ReTokTokenizer.ImagesFromUint8(TrainTokenizerData.TinyImagesUint8()).narrow(0, 0, 2);
        var k = tensor(new long[] { 7, 300 });
        var (recon0, losses0, _, _, none) = model.Forward(images, 300, k, true, false, Array.Empty<Tensor>());
        var (recon, losses, _, _, direct) = model.Forward(images, 300, k, true, false, Array.Empty<Tensor>(), direct: true);
        Assert.Null(none);
        // Forward decodes [S_vit; S_cnn] in one pixel-decoder pass: each half must equal its own pass up to float order
        // (the batch of 4 reorders the conv sums: 3.0e-5 measured on the main path; 1e-4 is TokenizerParityTests' bound),
        // while a swapped or shifted half is another image's decode, O(0.1) away
        Assert.True(TrainingFixtures.MaxDiff(recon0, recon) < 1e-4, $"main path moved by {TrainingFixtures.MaxDiff(recon0, recon)}");
        Assert.Equal(0, TrainingFixtures.MaxDiff(losses0.FeatureRec!, losses.FeatureRec!));
        Assert.Equal(images.shape, direct!.shape);
        nn.Module<Tensor, Tensor> Child(string name) => (nn.Module<Tensor, Tensor>)model.named_children().Single(c => c.name == name).module;
        using (no_grad())
        {
            var alone = Child("decoder").call(Child("encoder").call(images));
            Assert.True(TrainingFixtures.MaxDiff(alone, direct) < 1e-4, $"dir_dec vs decoder(encoder(x)) alone: {TrainingFixtures.MaxDiff(alone, direct)}");
            Assert.True(TrainingFixtures.MaxDiff(recon, direct) > 1e-2, "dir_dec equals the bottleneck decode");
        }

        F.mse_loss(direct, images).backward();
        var reached = model.named_parameters().Where(p => p.parameter.grad is { } g && g.abs().sum().item<float>() > 0)
            .Select(p => p.name.Split('.')[0]).ToHashSet();
        // the CNN encoder and the pixel decoder learn from it; the ViT encoder, quantizer and ViT decoder do not
        Assert.Equal(new[] { "decoder", "encoder" }, reached.Order());
    }

    [Fact]
    public void TheTrainerAddsTheDirectTermsUntilAuxLossEnd()
    {
        var cfg = TrainerTests.Small(4) with { Loss = new LossConfig(DiscStart: 1, AuxLossEnd: 3, UseDirectRecLoss: true) };
        using var t = TrainerTests.MakeTrainer(cfg);
        var steps = Enumerable.Range(0, 4).Select(_ => t.TrainStep()).ToList();
        foreach (var r in steps)
        {
            bool on = r.Step < 3;   // s = 1, 2: s < aux_loss_end
            foreach (var key in new[] { "direct_rec", "direct_perceptual", "direct_gen_adv", "logits_direct_fake" })
                Assert.True(on == r.Scalars.ContainsKey(key), $"step {r.Step}: {key} {(on ? "missing" : "logged after aux_loss_end")}");
            if (on) Assert.True(r.Scalars["direct_rec"] > 0);
        }

        // off (the ReTok configs): no direct decode is requested, no direct key is logged
        using var plain = TrainerTests.MakeTrainer(TrainerTests.Small(1) with { Loss = new LossConfig(DiscStart: 1) });
        Assert.DoesNotContain(plain.TrainStep().Scalars.Keys, key => key.Contains("direct"));
    }
}

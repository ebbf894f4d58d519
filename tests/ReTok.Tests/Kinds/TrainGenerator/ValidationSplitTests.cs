using ReTok.Engine;
using ReTok.Jobs.Kinds.TrainGenerator;
using ReTok.Models.IO;
using ReTok.Tests.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using static TorchSharp.torch;

namespace ReTok.Tests.Kinds.TrainGenerator;

/// <summary>train-generator val_images: whole images (every view) held out, evenly spaced over the dataset order;
/// val_loss at each checkpoint and at the end beside the training codes' unigram entropy.</summary>
public sealed class ValidationSplitTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    [Fact]
    public async Task HeldOutImagesGiveAValidationLossBelowTheUnigramEntropy()
    {
        var o = TestEngine.Training(db.ConnectionString, "retok-valsplit");
        var root = Path.GetDirectoryName(o.Artifacts)!;
        await using var client = new JobClient(o);
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        // 8 images of 4 classes (2 each), 2 views each; a class's codes follow its own pattern (code = 4 c + position mod 4, one
        // view shifted by one), so a context-aware model beats the unigram entropy (log 16 on the training codes) by far
        const int images = 8, views = 2, width = 12;
        var image = arange(images, dtype: ScalarType.Int64).repeat_interleave(views);
        var labels = image.div(2, rounding_mode: RoundingMode.floor);   // class-ordered, as an ImageNet folder
        var pos = arange(width, dtype: ScalarType.Int64).view(1, width);
        var shift = (arange(images * views, dtype: ScalarType.Int64) % views).view(-1, 1);
        var codes = 4 * labels.view(-1, 1) + (pos + shift) % 4;
        var npz = Path.Combine(root, "codes.npz");
        Npz.Save(npz, new Dictionary<string, NpyArray>
        {
            ["codes"] = NpyArray.FromTensor(codes), ["labels"] = NpyArray.FromTensor(labels), ["image_index"] = NpyArray.FromTensor(image),
        });
        var src = await t.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        await t.SaveArtifactFileAsync(src.Id, "codes.npz", npz);

        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = ["gpu"], Name = "valsplit-test" }, log: _ => { });
        await worker.StartAsync();
        async Task<Run> Train(int valImages)
        {
            var p = new TrainGeneratorParams
            {
                GptModel = null, Dim = 32, NLayer = 2, NHead = 2, NumClasses = 4, VocabSize = 16, MaxSteps = 60, WarmupSteps = 5,
                GlobalBatchSize = 4, CheckpointEvery = 30, Lr = 3e-3, ClassDropoutProb = 0, TokenDropoutP = 0, DropoutP = 0, ValImages = valImages,
            };
            var rid = await client.SubmitAsync("train-generator", p, inputs: new Dictionary<string, string> { ["codes"] = $"run:{src.Id}/codes.npz" });
            var deadline = DateTime.UtcNow.AddSeconds(240);
            Run x;
            while (!(x = (await t.Runs.GetAsync(rid))!).Status.IsTerminal() && DateTime.UtcNow < deadline) await Task.Delay(200);
            return x;
        }

        var r = await Train(2);
        Assert.True(r.Status == RunStatus.Succeeded, $"{r.Status}: {r.FailureReason}");
        var val = await t.GetMetricsAsync(r.Id, "val_loss");
        Assert.Equal(new long[] { 30, 60 }, val.Select(m => m.Step).Order());
        var unigram = (await t.GetMetricsAsync(r.Id, "unigram_entropy")).Select(m => m.Value).Distinct().Single();
        // the held-out images are 3 and 7 (evenly spaced: classes 1 and 3, each also seen in training through 2 and 6)
        var train = codes[image.ne(3).logical_and(image.ne(7))];
        var pr = bincount(train.flatten(), minlength: 16).to(ScalarType.Float64) / train.numel();
        double want = -(pr * pr.clamp_min(1e-300).log()).sum().item<double>();
        Assert.Equal(want, unigram, 9);
        double last = val.OrderBy(m => m.Step).Last().Value;
        Assert.True(last < 0.5 * unigram, $"val_loss {last:F4} is not clearly below the unigram entropy {unigram:F4}");

        var all = await Train(images);
        Assert.Equal(RunStatus.Failed, all.Status);
        Assert.Contains("val_images: 8 leaves no images to train on", all.FailureReason);
    }
}

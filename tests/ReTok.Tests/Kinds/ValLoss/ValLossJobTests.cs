using ReTok.Engine;
using ReTok.Jobs.Kinds.TrainGenerator;
using ReTok.Jobs.Kinds.ValLoss;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using ReTok.Tests.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using static TorchSharp.torch;

namespace ReTok.Tests.Kinds.ValLoss;

/// <summary>Issue 18.3: val-loss (val_loss_cal.py) on any saved checkpoint of a generator run, over held-out codes.</summary>
public sealed class ValLossJobTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    [Fact]
    public async Task Val_loss_of_a_milestone_and_of_the_final_weights_matches_the_training_runs_own_validation()
    {
        var root = Directory.CreateTempSubdirectory("retok-valloss").FullName;
        var o = TestEngine.Options(db.ConnectionString, "retok-valloss") with { LeaseTtl = TimeSpan.FromSeconds(30), InvisibilityTimeout = TimeSpan.FromSeconds(60) };
        await using var client = new JobClient(o);
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        // 10 images of 5 classes, one view each; a class's codes follow its own pattern
        const int images = 10, width = 8;
        var image = arange(images, dtype: ScalarType.Int64);
        var labels = image.div(2, rounding_mode: RoundingMode.floor);
        var codes = 3 * labels.view(-1, 1) + (arange(width, dtype: ScalarType.Int64).view(1, width) + image.view(-1, 1) % 2) % 3;
        var all = Save(root, "codes.npz", codes, labels, image);
        // train-generator holds out images 3, 6 and 9 (val_images 3, evenly spaced); the same rows as their own codes file
        var held = image.eq(3).logical_or(image.eq(6)).logical_or(image.eq(9));
        var heldNpz = Save(root, "held.npz", codes[held], labels[held], image[held]);
        var src = await t.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        await t.SaveArtifactFileAsync(src.Id, "codes.npz", all);
        await t.SaveArtifactFileAsync(src.Id, "held.npz", heldNpz);

        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = ["gpu"], Name = "valloss-test" }, log: _ => { });
        await worker.StartAsync();
        async Task<Run> Wait(long id)
        {
            var deadline = DateTime.UtcNow.AddSeconds(240);
            Run x;
            while (!(x = (await t.Runs.GetAsync(id))!).Status.IsTerminal() && DateTime.UtcNow < deadline) await Task.Delay(200);
            Assert.True(x.Status == RunStatus.Succeeded, $"run {id} {x.Status}: {x.FailureReason}");
            return x;
        }
        var gen = await Wait(await client.SubmitAsync("train-generator", new TrainGeneratorParams
        {
            GptModel = null, Dim = 32, NLayer = 2, NHead = 2, NumClasses = 5, VocabSize = 15, MaxSteps = 20, WarmupSteps = 2,
            GlobalBatchSize = 4, CheckpointEvery = 10, MilestoneEvery = 10, Lr = 3e-3, ClassDropoutProb = 0, TokenDropoutP = 0, DropoutP = 0, ValImages = 3,
        }, inputs: new Dictionary<string, string> { ["codes"] = $"run:{src.Id}/codes.npz" }));
        var trainVal = (await t.GetMetricsAsync(gen.Id, "val_loss")).ToDictionary(m => m.Step, m => m.Value);

        async Task<(double Loss, long Step)> ValLoss(string generator, int batch)
        {
            var r = await Wait(await client.SubmitAsync("val-loss", new ValLossParams { BatchSize = batch }, inputs: new Dictionary<string, string>
            {
                ["generator"] = $"run:{gen.Id}/{generator}", ["generator_config"] = $"run:{gen.Id}/generator.yaml", ["codes"] = $"run:{src.Id}/held.npz",
            }));
            var m = Assert.Single(await t.GetMetricsAsync(r.Id, "val_loss"));
            Assert.Equal(Math.Exp(m.Value), Assert.Single(await t.GetMetricsAsync(r.Id, "val_ppl")).Value, 9);
            return (m.Value, m.Step);
        }
        // one batch holds all three rows: the same teacher-forced loss the training run logged, at the same step
        var final = await ValLoss("generator.safetensors", 8);
        Assert.Equal(20, final.Step);
        Assert.Equal(trainVal[20], final.Loss, 6);
        var milestone = await ValLoss("checkpoints/step-0000000010", 8);
        Assert.Equal(10, milestone.Step);
        Assert.Equal(trainVal[10], milestone.Loss, 6);
        Assert.NotEqual(milestone.Loss, final.Loss);

        // batches of 2 over the seeded order (DistributedSampler's randperm): the mean of the batch means, as the
        // reference averages, so the last batch of one row weighs as much as the full one
        var uneven = await ValLoss("generator.safetensors", 2);
        async Task<string> Fetch(string name)
        {
            var path = Path.Combine(root, "fetched-" + name);
            await t.DownloadArtifactAsync((await t.GetArtifactAsync(gen.Id, name))!, path);
            return path;
        }
        var cfg = GeneratorYaml.Read(await Fetch("generator.yaml"));
        using var gpt = GptCheckpoint.Load(cfg, await Fetch("generator.safetensors"));
        var order = randperm(3, generator: new Generator(0));
        var (hc, hl) = (codes[held].index_select(0, order), labels[held].index_select(0, order));
        double want = (GptTrainer.EvalLoss(gpt, hc.narrow(0, 0, 2), hl.narrow(0, 0, 2)) + GptTrainer.EvalLoss(gpt, hc.narrow(0, 2, 1), hl.narrow(0, 2, 1))) / 2;
        Assert.Equal(want, uneven.Loss, 6);
        Assert.True(Math.Abs(uneven.Loss - final.Loss) > 1e-4, $"batch-mean average {uneven.Loss} equals the row mean {final.Loss}: the test cannot tell them apart");
    }

    static string Save(string root, string name, Tensor codes, Tensor labels, Tensor image)
    {
        var path = Path.Combine(root, name);
        Npz.Save(path, new Dictionary<string, NpyArray>
        {
            ["codes"] = NpyArray.FromTensor(codes.contiguous()), ["labels"] = NpyArray.FromTensor(labels.contiguous()), ["image_index"] = NpyArray.FromTensor(image.contiguous()),
        });
        return path;
    }
}

using System.Formats.Tar;
using ReTok.Engine;
using ReTok.Jobs.Kinds.TrainGenerator;
using ReTok.Models.IO;
using ReTok.Tests.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using TorchSharp;

namespace ReTok.Tests.Kinds.TrainGenerator;

/// <summary>train-generator milestone checkpoints: every milestone_every steps a checkpoints/step-N that later saves do
/// not overwrite, the newest keep_milestones keep their content, older ones are released (empty).</summary>
public sealed class MilestoneCheckpointTests : IClassFixture<TestDatabase>
{
    readonly TestDatabase _db;
    public MilestoneCheckpointTests(TestDatabase db) => _db = db;

    [Fact]
    public async Task MilestonesAreKeptAndOldOnesReleased()
    {
        var o = TestEngine.Training(_db.ConnectionString, "retok-milestones");
        var root = Path.GetDirectoryName(o.Artifacts)!;
        await using var client = new JobClient(o);
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        var codes = torch.randint(0, 64, new long[] { 4, 8 }, torch.ScalarType.Int64, generator: new torch.Generator(1));
        var npz = Path.Combine(root, "codes.npz");
        Npz.Save(npz, new Dictionary<string, NpyArray> { ["codes"] = NpyArray.FromTensor(codes), ["labels"] = NpyArray.FromTensor(torch.tensor(new long[] { 0, 1, 2, 3 })) });
        var src = await t.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        await t.SaveArtifactFileAsync(src.Id, "codes.npz", npz);

        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = ["gpu"], Name = "milestone-test" }, log: _ => { });
        await worker.StartAsync();
        var p = new TrainGeneratorParams
        {
            GptModel = null, Dim = 32, NLayer = 1, NHead = 2, NumClasses = 4, VocabSize = 64, MaxSteps = 8, WarmupSteps = 2,
            GlobalBatchSize = 2, CheckpointEvery = 2, MilestoneEvery = 2, KeepMilestones = 2, Lr = 1e-3,
        };
        async Task<Run> Train(string? resume)
        {
            var inputs = new Dictionary<string, string> { ["codes"] = $"run:{src.Id}/codes.npz" };
            if (resume is not null) inputs["resume"] = resume;
            var rid = await client.SubmitAsync("train-generator", p, inputs: inputs);
            var deadline = DateTime.UtcNow.AddSeconds(240);
            Run x;
            while (!(x = (await t.Runs.GetAsync(rid))!).Status.IsTerminal() && DateTime.UtcNow < deadline) await Task.Delay(200);
            return x;
        }
        var r = await Train(null);
        var id = r.Id;
        Assert.True(r.Status == RunStatus.Succeeded, $"{r.Status}: {r.FailureReason}");

        // checkpoints at steps 2, 4, 6 (the final step writes outputs, not a checkpoint); keep 2 -> step 2 released
        var arts = (await t.ListArtifactsAsync(id)).Where(a => a.Name.StartsWith(RunCheckpoints.MilestonePrefix)).ToDictionary(a => a.Name);
        Assert.Equal(new[] { RunCheckpoints.MilestoneName(2), RunCheckpoints.MilestoneName(4), RunCheckpoints.MilestoneName(6) }, arts.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(0, arts[RunCheckpoints.MilestoneName(2)].SizeBytes);
        Assert.Contains("\"released\": true", arts[RunCheckpoints.MilestoneName(2)].Metadata);
        var latest = (await t.GetArtifactAsync(id, RunCheckpoints.Latest))!;
        Assert.Equal(latest.Sha256, arts[RunCheckpoints.MilestoneName(6)].Sha256); // the newest milestone is the latest checkpoint

        // a kept milestone is a complete checkpoint of its step, distinct from the later one
        async Task<Dictionary<string, torch.Tensor>> Model(string name)
        {
            var tar = Path.Combine(root, name.Replace('/', '_') + ".tar");
            await t.DownloadArtifactAsync(arts[name], tar);
            var dir = Directory.CreateDirectory(tar + ".d").FullName;
            await TarFile.ExtractToDirectoryAsync(tar, dir, overwriteFiles: true);
            Assert.Contains("\"step\":" + name[^1], File.ReadAllText(Path.Combine(dir, "state.json")));
            return ReTok.Models.IO.StateDictFile.Read(Path.Combine(dir, "model.safetensors"));
        }
        var m4 = await Model(RunCheckpoints.MilestoneName(4));
        var m6 = await Model(RunCheckpoints.MilestoneName(6));
        Assert.True((m4["output.weight"] - m6["output.weight"]).abs().max().item<float>() > 0, "step 4 and step 6 weights differ");

        // a milestone as a resume point: a new run from step 4 ends bit-identical to the uninterrupted run (CPU, same params)
        var resumed = await Train($"run:{id}/{RunCheckpoints.MilestoneName(4)}");
        Assert.True(resumed.Status == RunStatus.Succeeded, $"{resumed.Status}: {resumed.FailureReason}");
        Assert.Equal((await t.GetArtifactAsync(id, "generator.safetensors"))!.Sha256, (await t.GetArtifactAsync(resumed.Id, "generator.safetensors"))!.Sha256);
        Assert.Equal(Enumerable.Range(5, 4).Select(i => (long)i), (await t.GetMetricsAsync(resumed.Id, "loss")).Select(m => m.Step));
        Assert.Equal((await t.GetMetricsAsync(id, "loss")).Skip(4).Select(m => m.Value), (await t.GetMetricsAsync(resumed.Id, "loss")).Select(m => m.Value));

        // a released milestone is refused with the reason
        var gone = await Train($"run:{id}/{RunCheckpoints.MilestoneName(2)}");
        Assert.Equal(RunStatus.Failed, gone.Status);
        Assert.Contains("released by the retention policy", gone.FailureReason);
    }
}

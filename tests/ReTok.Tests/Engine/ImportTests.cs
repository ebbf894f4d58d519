using System.Security.Cryptography;
using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>
/// Issue 18: files made elsewhere (the authors' released checkpoints, an ADM reference batch) become a run's artifacts
/// (`retok artifacts import`), so a spec takes them as `run:ID/NAME` inputs and the lineage carries their sha256.
/// </summary>
public sealed class ImportTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    [Fact]
    public async Task Imported_files_are_a_succeeded_runs_artifacts_that_a_job_reads_as_inputs()
    {
        var queue = "imp-" + Guid.NewGuid().ToString("N")[..6];
        var o = TestEngine.Options(db.ConnectionString, "import");
        await using var client = new JobClient(o);
        await client.EnsureSchemaAsync();
        var dir = Directory.CreateTempSubdirectory("import-").FullName;
        var json = Path.Combine(dir, "released.json");
        await File.WriteAllTextAsync(json, """{"total": 10}""");
        var yaml = Path.Combine(dir, "tokenizer.yaml");
        await File.WriteAllTextAsync(yaml, "model: {}\n");

        var id = await client.ImportAsync([("result.json", json), ("configs/tokenizer.yaml", yaml)], "released-files", "imports");
        var run = (await client.Tracker.Runs.GetAsync(id))!;
        Assert.Equal((JobClient.ImportKind, RunStatus.Succeeded, "released-files", 1), (run.Kind, run.Status, run.Name, run.Attempt));
        Assert.Null(run.HangfireJobId);
        var files = JsonNode.Parse(run.Parameters)!["files"]!.AsArray();
        Assert.Equal([Path.GetFullPath(json), Path.GetFullPath(yaml)], files.Select(f => f!["source"]!.GetValue<string>()));
        var art = (await client.Tracker.GetArtifactAsync(id, "result.json"))!;
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(await File.ReadAllBytesAsync(json))), art.Sha256);
        Assert.Equal("yaml", (await client.Tracker.GetArtifactAsync(id, "configs/tokenizer.yaml"))!.Kind);
        Assert.Null(await client.RetryAsync(id));   // nothing would run it: an import is redone by importing again

        // a spec naming an artifact the import lacks is refused at submit; one naming an imported file runs on it
        var bad = await Assert.ThrowsAsync<SpecValidationException>(() => client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nqueue: {queue}\ninputs: {{data: run:{id}/missing.json}}\n")));
        Assert.Contains($"inputs.data: run {id} has no artifact 'missing.json'", bad.Errors);
        var consumer = (await client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nqueue: {queue}\ninputs: {{data: run:{id}/result.json}}\nparams: {{n: 3, step_ms: 0}}\n"))).Runs[0].RunId;
        await using (var worker = new WorkerHost(o, new WorkerOptions { Queues = [queue], CpuWorkers = 1, Name = queue }, log: _ => { }))
        {
            await worker.StartAsync();
            var deadline = DateTime.UtcNow.AddSeconds(90);
            Run? r;
            while (!(r = await client.Tracker.Runs.GetAsync(consumer))!.Status.IsTerminal() && DateTime.UtcNow < deadline) await Task.Delay(100);
            Assert.True(r.Status == RunStatus.Succeeded, $"consumer: {r.Status} {r.FailureReason}");
        }
        var out_ = Path.Combine(dir, "out.json");
        await client.Tracker.DownloadArtifactAsync((await client.Tracker.GetArtifactAsync(consumer, "result.json"))!, out_);
        Assert.Equal(16, JsonNode.Parse(await File.ReadAllTextAsync(out_))!["total"]!.GetValue<double>());   // the imported 10 + 1 + 2 + 3
        Assert.Contains(await client.Tracker.GetInputsAsync(consumer), e => e.Use.Role == "data" && e.Artifact.Sha256 == art.Sha256);
        Directory.Delete(dir, true);
    }

    [Fact]
    public async Task A_missing_file_or_a_repeated_name_is_refused_before_a_run_exists()
    {
        await using var client = new JobClient(TestEngine.Options(db.ConnectionString, "import-bad"));
        await client.EnsureSchemaAsync();
        var before = (await client.Tracker.Runs.ListAsync(new RunFilter(Kind: JobClient.ImportKind, Limit: 1000))).Count;
        var missing = await Assert.ThrowsAsync<ArgumentException>(() => client.ImportAsync([("a.pt", "/nonexistent/VQ_SB256.pt")]));
        Assert.Contains("/nonexistent/VQ_SB256.pt: no such file", missing.Message);
        var f = Path.GetTempFileName();
        var twice = await Assert.ThrowsAsync<ArgumentException>(() => client.ImportAsync([("x.npz", f), ("x.npz", f)]));
        Assert.Contains("artifact name 'x.npz' given 2 times", twice.Message);
        File.Delete(f);
        Assert.Equal(before, (await client.Tracker.Runs.ListAsync(new RunFilter(Kind: JobClient.ImportKind, Limit: 1000))).Count);
    }
}

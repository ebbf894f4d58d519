using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>
/// Issue 16.5: one fan-out shape. Shards get their parent's inputs and their own engine-owned state (not parameters),
/// and a spec cannot set that state.
/// </summary>
public sealed class FanOutTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    [Theory]
    [InlineData("sample-gfid", "shard_start: 5")]
    [InlineData("sample-gfid", "shard_count: 5")]
    [InlineData("sample-gfid", "input_refs: {generator: run:1/gpt.safetensors}")]
    [InlineData("sample-gfid", "cfg_start: 1.5")]
    [InlineData("sample-gfid", "cfg_history: []")]
    public void Internal_fan_out_state_is_an_unknown_key_in_a_spec(string kind, string param)
    {
        var key = param.Split(':')[0];
        var ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse($"kind: {kind}\nparams:\n  {param}\n"));
        Assert.Contains(ex.Errors, e => e.StartsWith($"params.{key}: unknown key"));
    }

    [Fact]
    public void A_fan_out_kind_registers_its_aggregator_and_plain_kinds_do_not()
    {
        var agg = JobKindRegistry.Default.Get("selftest-aggregate");
        Assert.Equal(("selftest", "selftest"), (agg.AggregateOf, agg.ShardKind));
        Assert.Equal(JobKindRegistry.Default.Get("selftest").ParamsType, agg.ParamsType);
        Assert.True(JobKindRegistry.Default.TryGet("eval-reconstruction-aggregate", out _));
        Assert.False(JobKindRegistry.Default.TryGet("eval-reconstruction-shard", out _));   // shards run as the kind itself
        Assert.False(JobKindRegistry.Default.TryGet("noop-aggregate", out _));
    }

    [Fact]
    public async Task Shards_see_their_parents_inputs_and_their_own_state()
    {
        var queue = "fan-" + Guid.NewGuid().ToString("N")[..6];
        var o = TestEngine.Options(db.ConnectionString, "fanout");
        await using var client = new JobClient(o);   // its tracker reads the worker's artifact store
        await client.EnsureSchemaAsync();
        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = [queue], CpuWorkers = 2, Name = queue }, log: _ => { });
        await worker.StartAsync();
        async Task<Run> Done(long id)
        {
            var deadline = DateTime.UtcNow.AddSeconds(90);
            Run? r;
            while ((r = await client.Tracker.Runs.GetAsync(id))!.Status is var s && !s.IsTerminal() && DateTime.UtcNow < deadline) await Task.Delay(100);
            Assert.True(r.Status == RunStatus.Succeeded, $"run {id} ({r.Kind}): {r.Status} {r.FailureReason}");
            return r;
        }
        async Task<double> Total(long id)
        {
            var path = Path.Combine(o.Scratch, $"r{id}.json");
            await client.Tracker.DownloadArtifactAsync((await client.Tracker.GetArtifactAsync(id, "result.json"))!, path);
            return JsonNode.Parse(await File.ReadAllTextAsync(path))!["total"]!.GetValue<double>();
        }

        var producer = (await client.SubmitAsync(JobSpecs.Parse($"kind: selftest\nqueue: {queue}\nparams: {{n: 3, step_ms: 0}}\n"))).Runs[0].RunId;
        Assert.Equal(6, await Total((await Done(producer)).Id));   // 1 + 2 + 3
        var parent = (await client.SubmitAsync(JobSpecs.Parse(
            $"kind: selftest\nqueue: {queue}\ninputs: {{data: run:{producer}/result.json}}\nparams: {{n: 3, step_ms: 0, shards: 2}}\n"))).Runs[0].RunId;
        var parentRun = await Done(parent);
        var agg = await Done(parentRun.ContinuedByRunId!.Value);
        Assert.Equal("selftest-aggregate", agg.Kind);
        // shard i counts with scale i + 1 on top of the parent's input: (6 + 6) + (12 + 6)
        Assert.Equal(30, await Total(agg.Id));
        await using var d = client.Tracker.CreateDb();
        var shards = d.Runs.Where(r => r.FanInRunId == agg.Id).OrderBy(r => r.ShardIndex).ToList();
        Assert.Equal(2, shards.Count);
        foreach (var s in shards)
        {
            Assert.Equal("selftest", s.Kind);
            Assert.Equal($"run:{producer}/result.json", JsonNode.Parse(s.Inputs)!["data"]!.GetValue<string>());
            Assert.Equal(s.ShardIndex!.Value + 1.0, JsonNode.Parse(s.FanOutState!)!["scale"]!.GetValue<double>());
            Assert.Equal(parentRun.Parameters, s.Parameters);   // the state is not a parameter: every shard runs the parent's
            Assert.Contains(await client.Tracker.GetInputsAsync(s.Id), u => u.Use.Role == "data");
        }
    }
}

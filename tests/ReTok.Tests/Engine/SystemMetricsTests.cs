using ReTok.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>Issue 19.3: sys/* metrics per run (only the GPUs it holds) and per worker, from NVML / nvidia-smi / a fake source.</summary>
public sealed class SystemMetricsTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    static readonly FakeGpuSource Fake = new(new Dictionary<int, GpuReading>
    {
        [0] = new(0, 87, 40_000, 81_559, 61, 312.5),
        [1] = new(1, 3, 500, 81_559, 35, 70),
    });

    [Fact]
    public void Nvidia_smi_lines_parse_with_missing_fields_as_null()
    {
        var r = NvidiaSmiSource.Parse("0, 87, 40536, 81559, 61, 312.45\n1, 0, 3, 81559, 34, [N/A]\nnot a line\n").ToList();
        Assert.Equal(2, r.Count);
        Assert.Equal(new GpuReading(0, 87, 40536, 81559, 61, 312.45), r[0]);
        Assert.Null(r[1].PowerW);
    }

    [Fact]
    public void A_sample_reads_only_the_gpus_given_and_always_the_process_and_host()
    {
        var s = new SystemSampler(Fake).Sample(["cuda:1"]).ToDictionary(x => x.Key, x => x.Value);
        Assert.Equal(3, s["sys/gpu1/util_pct"]);
        Assert.Equal(81_559, s["sys/gpu1/mem_total_mib"]);
        Assert.DoesNotContain(s.Keys, k => k.StartsWith("sys/gpu0/"));
        Assert.True(s["sys/rss_mib"] > 10);
        Assert.True(s["sys/host_mem_total_mib"] >= s["sys/host_mem_used_mib"]);
        Assert.Contains("sys/cpu_pct", s.Keys);
        var cpuOnly = new SystemSampler(null).Sample(["cpu"]);
        Assert.DoesNotContain(cpuOnly, x => x.Key.StartsWith("sys/gpu"));
    }

    [Fact]
    public async Task A_run_records_the_gpu_it_holds_and_the_worker_row_all_of_its_gpus()
    {
        var queue = "gpu-sys" + Guid.NewGuid().ToString("N")[..6];
        var o = TestEngine.Options(db.ConnectionString, "sysm") with
        {
            Heartbeat = TimeSpan.FromMilliseconds(200), SystemMetricsEvery = TimeSpan.FromMilliseconds(200), GpuMetrics = Fake,
        };
        await using var worker = new WorkerHost(o, new WorkerOptions { Queues = [queue], Gpus = [0, 1], Name = queue }, log: _ => { });
        await worker.StartAsync();
        var t = worker.Client.Tracker;
        var id = await worker.Client.SubmitAsync("selftest", new Jobs.Kinds.Selftest.SelftestParams { N = 12, StepMs = 150 }, queue: queue);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        Run r;
        while (!(r = (await t.Runs.GetAsync(id))!).Status.IsTerminal() && DateTime.UtcNow < deadline) await Task.Delay(100);
        Assert.Equal(RunStatus.Succeeded, r.Status);
        var held = SystemSampler.GpuIndices(r.Device!.Split(',')).Single();
        var util = await t.GetMetricsAsync(id, $"sys/gpu{held}/util_pct");
        Assert.NotEmpty(util);
        Assert.All(util, m => Assert.Equal(held == 0 ? 87 : 3, m.Value));
        Assert.Empty(await t.GetMetricsAsync(id, $"sys/gpu{1 - held}/util_pct"));   // the worker's other GPU is not this run's
        Assert.NotEmpty(await t.GetMetricsAsync(id, "sys/rss_mib"));

        var w = (await t.Runs.ListWorkersAsync()).Single(x => x.Id == queue);
        var sys = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, double>>(w.System)!;
        Assert.Equal(87, sys["sys/gpu0/util_pct"]);   // the worker row shows every GPU it has
        Assert.Equal(3, sys["sys/gpu1/util_pct"]);
    }
}

using System.Diagnostics;
using Hangfire;
using Npgsql;
using ReTok.Engine;
using ReTok.Jobs.Kinds.Noop;
using ReTok.Tracking;

namespace ReTok.Bench;

/// <summary>What `retok bench engine` measures with: <see cref="Db"/> names the server; the benchmark works in a temporary database on it.</summary>
public sealed record EngineBenchOptions(string? Db, int Samples, int Jobs, int Workers, int PollMs, bool LongPolling);

/// <summary>A benchmark run that did not finish (the CLI prints the message and exits 1).</summary>
public sealed class BenchFailedException(string message) : Exception(message);

/// <summary>`retok bench engine`: enqueue-to-start latency and trivial-job throughput on loopback PostgreSQL, ours vs plain Hangfire.</summary>
public static class EngineBench
{
    public static async Task RunAsync(EngineBenchOptions o, CancellationToken ct)
    {
        var server = new NpgsqlConnectionStringBuilder(RetokSettings.FromEnvironment(o.Db).Db);
        var dbName = $"retok_bench_{Guid.NewGuid():N}"[..24];
        var conn = new NpgsqlConnectionStringBuilder(server.ConnectionString) { Database = dbName }.ConnectionString;
        await TrackingDb.CheckReachableAsync(new NpgsqlConnectionStringBuilder(server.ConnectionString) { Database = "postgres" }.ConnectionString, ct);
        var scratch = Directory.CreateTempSubdirectory("retok-bench").FullName;
        var engine = new EngineOptions
        {
            Db = conn, Artifacts = Path.Combine(scratch, "artifacts"), Scratch = Path.Combine(scratch, "scratch"),
            QueuePollInterval = TimeSpan.FromMilliseconds(o.PollMs), LongPolling = o.LongPolling,
            Heartbeat = TimeSpan.FromSeconds(2), LeaseTtl = TimeSpan.FromSeconds(30), InvisibilityTimeout = TimeSpan.FromMinutes(2),
        };
        Console.WriteLine($"PostgreSQL {server.Host}:{server.Port} (temporary database {dbName}), {Environment.ProcessorCount} cores, {o.Workers} worker threads");
        Console.WriteLine(engine.Describe());
        try
        {
            await using var host = new WorkerHost(engine, new WorkerOptions { Queues = ["cpu"], CpuWorkers = o.Workers }, log: _ => { });
            await host.StartAsync(ct);
            var c = host.Client;
            await c.SubmitAsync("noop", new NoopParams(), ct: ct); // warm-up
            await Task.Delay(engine.QueuePollInterval * 2 + TimeSpan.FromSeconds(1), ct);

            // Latency: one job at a time on an idle queue; created_at (client clock) -> started_at (server clock, same host).
            var ours = new List<double>();
            for (var i = 0; i < o.Samples; i++)
            {
                var id = await c.SubmitAsync("noop", new NoopParams(), ct: ct);
                var r = await WaitAsync(c.Tracker, id, ct);
                ours.Add((r.StartedAt!.Value - r.CreatedAt).TotalMilliseconds);
            }
            // Plain Hangfire baseline: same storage, an empty method, timed in-process.
            var plain = new List<double>();
            var storage = c.Storage;
            using (var server2 = new BackgroundJobServer(new BackgroundJobServerOptions { Queues = ["plain"], WorkerCount = o.Workers, ServerName = $"bench-plain-{Environment.ProcessId}" }, storage))
            {
                var client = new BackgroundJobClient(storage);
                for (var i = 0; i < o.Samples; i++)
                {
                    var sw = Stopwatch.StartNew();
                    Probe.Started = new TaskCompletionSource();
                    client.Create(Hangfire.Common.Job.FromExpression(() => Probe.Touch(), "plain"), new Hangfire.States.EnqueuedState());
                    await Probe.Started.Task.WaitAsync(TimeSpan.FromSeconds(60), ct);
                    plain.Add(sw.Elapsed.TotalMilliseconds);
                }
            }
            Console.WriteLine($"enqueue-to-start latency, tracked run : p50 {Pct(ours, 50):F0} ms  p99 {Pct(ours, 99):F0} ms  (n={ours.Count})");
            Console.WriteLine($"enqueue-to-start latency, plain job   : p50 {Pct(plain, 50):F0} ms  p99 {Pct(plain, 99):F0} ms  (n={plain.Count}; reference: Hangfire alone)");
            Console.WriteLine($"latency ratio tracked/plain (p50)     : {Pct(ours, 50) / Math.Max(1e-3, Pct(plain, 50)):F2}");

            // Throughput: N no-op runs submitted back to back.
            var n = o.Jobs;
            var total = Stopwatch.StartNew();
            var ids = new List<long>();
            for (var i = 0; i < n; i++) ids.Add(await c.SubmitAsync("noop", new NoopParams(), ct: ct));
            var submitted = total.Elapsed;
            foreach (var id in ids) await WaitAsync(c.Tracker, id, ct);
            Console.WriteLine($"throughput: {n} no-op runs in {total.Elapsed.TotalSeconds:F1} s = {n / total.Elapsed.TotalSeconds:F1} runs/s " +
                              $"(submit {n / submitted.TotalSeconds:F0} runs/s; each run: lease, heartbeat scope, success transaction)");
            await host.StopAsync();
        }
        finally
        {
            NpgsqlConnection.ClearAllPools();
            await using var admin = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(server.ConnectionString) { Database = "postgres" }.ConnectionString);
            await admin.OpenAsync(CancellationToken.None);
            await using var drop = new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{dbName}\" WITH (FORCE)", admin);
            await drop.ExecuteNonQueryAsync(CancellationToken.None);
            Directory.Delete(scratch, true);
        }
    }

    static async Task<Run> WaitAsync(Tracker t, long id, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (DateTime.UtcNow < deadline)
        {
            var r = await t.Runs.GetAsync(id, ct);
            if (r is { Status: RunStatus.Succeeded }) return r;
            if (r is { Status: RunStatus.Failed or RunStatus.Cancelled }) throw new BenchFailedException($"bench run {id} {r.Status}: {r.FailureReason}");
            await Task.Delay(5, ct);
        }
        throw new BenchFailedException($"bench run {id} did not finish within 2 minutes");
    }

    static double Pct(List<double> xs, double p)
    {
        var s = xs.Order().ToList();
        return s.Count == 0 ? double.NaN : s[Math.Clamp((int)Math.Ceiling(p / 100 * s.Count) - 1, 0, s.Count - 1)];
    }
}

/// <summary>The plain-Hangfire job of the benchmark baseline.</summary>
public static class Probe
{
    public static TaskCompletionSource Started = new();
    public static void Touch() => Started.TrySetResult();
}

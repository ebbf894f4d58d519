using System.Collections.Concurrent;
using System.CommandLine;
using System.Diagnostics;
using Hangfire;
using Npgsql;
using ReTok.Engine;
using ReTok.Jobs.Kinds.Noop;
using ReTok.Tracking;

namespace ReTok.Cli;

/// <summary>`retok bench engine`: enqueue-to-start latency and trivial-job throughput on loopback PostgreSQL, ours vs plain Hangfire.</summary>
public static class BenchCommands
{
    public static Command Build()
    {
        var bench = new Command("bench", "benchmarks");
        bench.Subcommands.Add(Engine());
        return bench;
    }

    static Command Engine()
    {
        var samples = new Option<int>("--samples") { Description = "sequential jobs for the latency figure", DefaultValueFactory = _ => 40 };
        var jobs = new Option<int>("--jobs") { Description = "jobs submitted at once for the throughput figure", DefaultValueFactory = _ => 200 };
        var workers = new Option<int>("--workers") { Description = "worker threads", DefaultValueFactory = _ => 4 };
        var pollMs = new Option<int>("--poll-ms") { Description = "QueuePollInterval", DefaultValueFactory = _ => 1000 };
        var longPoll = new Option<bool>("--long-polling") { Description = "EnableLongPolling (LISTEN/NOTIFY)" };
        var cmd = new Command("engine", "enqueue-to-start latency p50/p99 and no-op throughput; tracked runs vs plain Hangfire jobs, same storage settings")
            { samples, jobs, workers, pollMs, longPoll };
        cmd.Options.Add(DbCommands.DbOption);
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            var server = new NpgsqlConnectionStringBuilder(RetokSettings.FromEnvironment(pr.GetValue(DbCommands.DbOption)).Db);
            var dbName = $"retok_bench_{Guid.NewGuid():N}"[..24];
            var conn = new NpgsqlConnectionStringBuilder(server.ConnectionString) { Database = dbName }.ConnectionString;
            await TrackingDb.CheckReachableAsync(new NpgsqlConnectionStringBuilder(server.ConnectionString) { Database = "postgres" }.ConnectionString, ct);
            var scratch = Directory.CreateTempSubdirectory("retok-bench").FullName;
            var o = new EngineOptions
            {
                Db = conn, Artifacts = Path.Combine(scratch, "artifacts"), Scratch = Path.Combine(scratch, "scratch"),
                QueuePollInterval = TimeSpan.FromMilliseconds(pr.GetValue(pollMs)), LongPolling = pr.GetValue(longPoll),
                Heartbeat = TimeSpan.FromSeconds(2), LeaseTtl = TimeSpan.FromSeconds(30), InvisibilityTimeout = TimeSpan.FromMinutes(2),
            };
            Console.WriteLine($"PostgreSQL {server.Host}:{server.Port} (temporary database {dbName}), {Environment.ProcessorCount} cores, {pr.GetValue(workers)} worker threads");
            Console.WriteLine(o.Describe());
            try
            {
                await using var host = new WorkerHost(o, new WorkerOptions { Queues = ["cpu"], CpuWorkers = pr.GetValue(workers) }, log: _ => { });
                await host.StartAsync(ct);
                var c = host.Client;
                await c.SubmitAsync("noop", new NoopParams(), ct: ct); // warm-up
                await Task.Delay(o.QueuePollInterval * 2 + TimeSpan.FromSeconds(1), ct);

                // Latency: one job at a time on an idle queue; created_at (client clock) -> started_at (server clock, same host).
                var ours = new List<double>();
                for (var i = 0; i < pr.GetValue(samples); i++)
                {
                    var id = await c.SubmitAsync("noop", new NoopParams(), ct: ct);
                    var r = await WaitAsync(c.Tracker, id, ct);
                    ours.Add((r.StartedAt!.Value - r.CreatedAt).TotalMilliseconds);
                }
                // Plain Hangfire baseline: same storage, an empty method, timed in-process.
                var plain = new List<double>();
                var storage = c.Storage;
                using (var server2 = new BackgroundJobServer(new BackgroundJobServerOptions { Queues = ["plain"], WorkerCount = pr.GetValue(workers), ServerName = $"bench-plain-{Environment.ProcessId}" }, storage))
                {
                    var client = new BackgroundJobClient(storage);
                    for (var i = 0; i < pr.GetValue(samples); i++)
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
                var n = pr.GetValue(jobs);
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
            return 0;
        }));
        return cmd;
    }

    static async Task<Run> WaitAsync(Tracker t, long id, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (DateTime.UtcNow < deadline)
        {
            var r = await t.Runs.GetAsync(id, ct);
            if (r is { Status: RunStatus.Succeeded }) return r;
            if (r is { Status: RunStatus.Failed or RunStatus.Cancelled }) throw new CliError($"bench run {id} {r.Status}: {r.FailureReason}");
            await Task.Delay(5, ct);
        }
        throw new CliError($"bench run {id} did not finish within 2 minutes");
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

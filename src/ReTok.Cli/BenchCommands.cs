using System.CommandLine;
using ReTok.Bench;

namespace ReTok.Cli;

/// <summary>`retok bench engine`; the benchmark itself is bench/ReTok.Bench (<see cref="EngineBench"/>).</summary>
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
            var o = new EngineBenchOptions(pr.GetValue(DbCommands.DbOption), pr.GetValue(samples), pr.GetValue(jobs), pr.GetValue(workers),
                pr.GetValue(pollMs), pr.GetValue(longPoll));
            try { await EngineBench.RunAsync(o, ct); }
            catch (BenchFailedException e) { throw new CliError(e.Message); }
            return 0;
        }));
        return cmd;
    }
}

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
        bench.Subcommands.Add(AllReduce());
        return bench;
    }

    static Command AllReduce()
    {
        var preset = new Option<string>("--preset") { Description = "GPT preset", DefaultValueFactory = _ => "GPT-B" };
        var batch = new Option<int>("--batch") { Description = "sequences per step", DefaultValueFactory = _ => 8 };
        var tokens = new Option<int>("--tokens") { Description = "tokens per sequence (block size)", DefaultValueFactory = _ => 256 };
        var backend = new Option<string>("--backend") { Description = "communicator: nccl (GPU) or cpu", DefaultValueFactory = _ => "nccl" };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cuda" };
        var steps = new Option<int>("--steps") { Description = "timed steps per mode after one warm-up", DefaultValueFactory = _ => 10 };
        var cmd = new Command("allreduce", "GPT training step with and without the gradient all-reduce through a one-rank communicator (NCCL overhead, issue 20)")
            { preset, batch, tokens, backend, device, steps };
        cmd.SetAction((pr, ct) => CliSupport.Guard(() =>
        {
            try
            {
                return Task.FromResult(AllReduceBench.Run(pr.GetValue(preset)!, pr.GetValue(batch), pr.GetValue(tokens),
                    pr.GetValue(backend)!, pr.GetValue(device)!, Math.Max(1, pr.GetValue(steps)), Console.Out));
            }
            // no libnccl, no CUDA device, an unknown backend or preset: one line, not a stack trace
            catch (Exception e) when (e is DllNotFoundException or InvalidOperationException or ArgumentException) { throw new CliError(e.Message); }
        }));
        return cmd;
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

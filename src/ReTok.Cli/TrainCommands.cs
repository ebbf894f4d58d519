using System.CommandLine;
using ReTok.Bench;
using TorchSharp;

namespace ReTok.Cli;

/// <summary>`retok train bench`; the benchmark itself is bench/ReTok.Bench (<see cref="TrainBench"/>).</summary>
public static class TrainCommands
{
    public static Command Build()
    {
        var train = new Command("train", "tokenizer training utilities (the training itself is the train-tokenizer job)");
        train.Subcommands.Add(Bench());
        return train;
    }

    static Command Bench()
    {
        var spec = new Option<string[]>("--spec") { Description = "train-tokenizer job specs to time (default jobs/retok-tiny.yaml jobs/retok-s-s.yaml)", AllowMultipleArgumentsPerToken = true };
        var batch = new Option<int>("--batch") { Description = "images per step (0: 2 for specs with global_batch_size <= 8, else 1)" };
        var steps = new Option<int>("--steps") { Description = "timed steps after one warm-up (best is reported)", DefaultValueFactory = _ => 2 };
        var threads = new Option<int>("--threads") { Description = "torch threads for both sides (0: default)" };
        var python = new Option<string>("--python") { Description = "python with torch for the reference", DefaultValueFactory = _ => "/usr/bin/python3" };
        var noRef = new Option<bool>("--no-reference") { Description = "skip the reference run" };
        var cmd = new Command("bench", "ms per training iteration, ours vs the reference loop (RETOK_REF_RETOK), and FLOP utilisation of this CPU")
            { spec, batch, steps, threads, python, noRef };
        cmd.SetAction((pr, ct) => CliSupport.Guard(() =>
        {
            if (pr.GetValue(threads) is int n && n > 0) torch.set_num_threads(n);
            var specs = pr.GetValue(spec) is { Length: > 0 } s ? s : new[] { "jobs/retok-tiny.yaml", "jobs/retok-s-s.yaml" };
            TrainBench.Run(specs, pr.GetValue(batch), Math.Max(1, pr.GetValue(steps)), pr.GetValue(python)!, !pr.GetValue(noRef));
            return Task.FromResult(0);
        }));
        return cmd;
    }
}

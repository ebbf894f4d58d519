using System.Diagnostics;
using ReTok.Models.Generation;
using static TorchSharp.torch;

namespace ReTok.Bench;

/// <summary>
/// `retok generator train-memory`: peak CPU memory (RSS high-water mark, Linux) of one training forward+backward of a
/// GPT micro-batch, plain vs activation checkpointing (the CLI registers the command).
/// </summary>
public static class TrainMemoryBench
{
    /// <summary>Writes one line per mode to <paramref name="log"/>; returns the exit code.</summary>
    public static int Run(string preset, int batch, int tokens, TextWriter log)
    {
        var cfg = GptConfig.Preset(preset, blockSize: tokens) with { ClassDropoutProb = 0.1 };
        using var model = new Gpt(cfg, new Generator(0));
        using (no_grad()) model.output.weight!.normal_(0, 0.02); // nonzero head, so backward reaches every block
        model.train();
        var z = randint(cfg.VocabSize, new long[] { batch, cfg.BlockSize }, dtype: int64, generator: new Generator(1));
        var y = randint(cfg.NumClasses, new long[] { batch }, dtype: int64, generator: new Generator(2));
        log.WriteLine($"{preset} ({cfg.ParameterCount / 1e6:F0}M params, fp32 weights {cfg.ParameterCount * 4 / 1e6:F0} MB), micro-batch {batch} x {cfg.BlockSize} tokens, CPU, {get_num_threads()} threads");
        foreach (var ckpt in new[] { false, true })
        {
            model.ActivationCheckpointing = ckpt;
            var (before, peak, secs) = PeakRss.Measure(() =>
            {
                using var scope = NewDisposeScope();
                var (_, loss) = model.forward(z.narrow(1, 0, cfg.BlockSize - 1), y, targets: z);
                loss!.backward();
            });
            foreach (var p in model.parameters()) { p.grad?.Dispose(); p.grad = null; }
            log.WriteLine($"  {(ckpt ? "activation checkpointing" : "plain                   ")}: peak RSS +{(peak - before) / 1e6:F0} MB over the {before / 1e6:F0} MB before " +
                $"(activations + {cfg.ParameterCount * 4 / 1e6:F0} MB of gradients), fwd+bwd {secs:F1} s");
        }
        return 0;
    }
}

/// <summary>Process peak RSS around an action: /proc/self/clear_refs "5" resets VmHWM (Linux >= 4.0), VmHWM is read after.</summary>
public static class PeakRss
{
    public static (long BeforeBytes, long PeakBytes, double Seconds) Measure(Action a)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("peak RSS needs Linux /proc");
        GC.Collect();
        GC.WaitForPendingFinalizers();
        File.WriteAllText("/proc/self/clear_refs", "5");
        long before = Read("VmRSS");
        var sw = Stopwatch.StartNew();
        a();
        return (before, Read("VmHWM"), sw.Elapsed.TotalSeconds);
    }

    static long Read(string key) =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith(key + ":")).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
}

using System.Diagnostics;
using ReTok.Models;
using ReTok.Models.Distributed;
using ReTok.Models.Generation;
using static TorchSharp.torch;

namespace ReTok.Bench;

/// <summary>
/// `retok bench allreduce`: one GPT training step (forward + backward) with and without the data-parallel gradient
/// all-reduce through a one-rank communicator (NCCL on a GPU: issue 20's "NCCL with one rank" run), alternating, median
/// of each. The difference is what a DDP step pays for its reduction before any second GPU adds transfer time.
/// </summary>
public static class AllReduceBench
{
    public static int Run(string preset, int batch, int tokens, string backend, string device, int steps, TextWriter log)
    {
        var dev = Devices.Resolve(device);
        var cfg = GptConfig.Preset(preset, blockSize: tokens);
        using var model = new Gpt(cfg, new Generator(0), dev);
        model.train();
        var z = randint(cfg.VocabSize, new long[] { batch, cfg.BlockSize }, dtype: int64, generator: new Generator(1)).to(dev);
        var y = randint(cfg.NumClasses, new long[] { batch }, dtype: int64, generator: new Generator(2)).to(dev);
        var ps = model.parameters().ToList();
        var comms = DataParallel.CreateGroup(new DataParallelConfig(1, backend));
        try
        {
            void Sync() { if (dev.type == TorchSharp.DeviceType.CUDA) cuda.synchronize(dev); }
            double Step(bool reduce)
            {
                Sync();
                var sw = Stopwatch.StartNew();
                using (var scope = NewDisposeScope())
                {
                    var (_, loss) = model.forward(z.narrow(1, 0, cfg.BlockSize - 1), y, targets: z);
                    loss!.backward();
                    if (reduce) DataParallel.AverageGradients(ps, comms[0], evenAlone: true);
                }
                Sync();
                double ms = sw.Elapsed.TotalMilliseconds;
                foreach (var p in ps) { p.grad?.Dispose(); p.grad = null; }
                return ms;
            }
            Step(false); Step(true);   // warm-up: kernels, allocator, the communicator's first launch
            var plain = new List<double>();
            var reduced = new List<double>();
            for (int i = 0; i < steps; i++) { plain.Add(Step(false)); reduced.Add(Step(true)); }
            double a = Median(plain), b = Median(reduced);
            log.WriteLine($"{preset} ({cfg.ParameterCount / 1e6:F0}M params), batch {batch} x {cfg.BlockSize} tokens, fp32, {Devices.Describe(dev)}, " +
                $"backend {comms[0].Backend}, 1 rank, {steps} steps each");
            log.WriteLine($"step without all-reduce: {a:F1} ms (median)");
            log.WriteLine($"step with all-reduce:    {b:F1} ms (median)");
            log.WriteLine($"all-reduce overhead: {100 * (b - a) / a:F1} %");
            return 0;
        }
        finally { foreach (var c in comms) c.Dispose(); }
    }

    static double Median(List<double> xs)
    {
        var s = xs.Order().ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }
}

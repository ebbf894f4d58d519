using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using ReTok.Bench;
using ReTok.Models;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Cli;

/// <summary>`retok generator ...`: inspect GPT checkpoints, sample class-conditional token codes, benchmark KV-cache sampling.</summary>
public static class GeneratorCommands
{
    private static readonly Option<string?> PresetOpt = new("--preset") { Description = "GPT-B, GPT-L, GPT-XL, ... (gpt_1d.py GPT_models)" };
    private static readonly Option<string?> ConfigOpt = new("--config") { Description = "JSON with ModelArgs fields (dim, n_layer, n_head, vocab_size, block_size, num_classes, ...)" };
    private static readonly Option<string> DeviceOpt = new("--device") { Description = "auto, cpu, cuda, cuda:N", DefaultValueFactory = _ => "auto" };

    public static Command Build()
    {
        var g = new Command("generator", "class-conditional AR generator (LlamaGen-style 1D GPT)");
        g.Subcommands.Add(Inspect());
        g.Subcommands.Add(Sample());
        g.Subcommands.Add(Bench());
        g.Subcommands.Add(TrainMemory());
        return g;
    }

    private static GptConfig ResolveConfig(ParseResult pr, IReadOnlyDictionary<string, Tensor>? sd, string? source)
    {
        var preset = pr.GetValue(PresetOpt);
        var config = pr.GetValue(ConfigOpt);
        if (preset is not null && config is not null) throw new ArgumentException("give either --preset or --config, not both");
        if (config is not null) return GptConfig.FromJson(File.ReadAllText(config), config);
        if (preset is not null)
        {
            var c = GptConfig.Preset(preset);
            if (sd is null) return c;
            // vocab / block / classes follow the checkpoint; depth and width must agree with the preset
            var inferred = GptCheckpoint.InferConfig(sd, c.NHead, source!);
            if (inferred.Dim != c.Dim || inferred.NLayer != c.NLayer)
                throw new ArgumentException($"{source} has dim {inferred.Dim} and {inferred.NLayer} layers, but {preset} has dim {c.Dim} and {c.NLayer} layers");
            return inferred;
        }
        if (sd is null) throw new ArgumentException("give --preset or --config");
        var match = GptConfig.Presets.FirstOrDefault(p => p.Value.Dim == (int)sd["positional_embedding"].shape[1]);
        if (match.Key is null) throw new ArgumentException($"{source}: no preset has dim {sd["positional_embedding"].shape[1]}; give --preset or --config (n_head is not stored)");
        return GptCheckpoint.InferConfig(sd, match.Value.NHead, source!);
    }

    private static Command Inspect()
    {
        var ckpt = new Argument<string>("checkpoint") { Description = ".safetensors or .pt GPT checkpoint" };
        var cmd = new Command("inspect", "print the state dict summary and the config it implies");
        cmd.Arguments.Add(ckpt);
        cmd.Options.Add(PresetOpt);
        cmd.Options.Add(ConfigOpt);
        cmd.SetAction((pr, ct) =>
        {
            var path = pr.GetValue(ckpt)!;
            var sd = GptCheckpoint.StripPrefixes(GptCheckpoint.Read(path));
            long total = sd.Values.Sum(t => t.numel());
            Console.WriteLine($"{path}: {sd.Count} tensors, {total:N0} parameters, dtypes {string.Join(", ", sd.Values.GroupBy(t => t.dtype).Select(x => $"{x.Key} x{x.Count()}"))}");
            foreach (var k in new[] { "positional_embedding", "cls_embedding.embedding_table.weight", "tok_embeddings.weight", "layers.0.attention.wqkv.weight", "layers.0.feed_forward.w1.weight", "output.weight" })
                Console.WriteLine($"  {k,-40} {(sd.TryGetValue(k, out var t) ? "[" + string.Join(", ", t.shape) + "]" : "MISSING")}");
            var odd = sd.Keys.Where(k => k.Contains("adaLN") || k.Contains("ada_gss") || k.Contains("q_norm") || k.Contains("k_norm")).ToList();
            if (odd.Count > 0) Console.WriteLine($"  non-release keys (adaLN / QK-norm; not supported): {string.Join(", ", odd.Take(6))}{(odd.Count > 6 ? ", ..." : "")}");
            var cfg = ResolveConfig(pr, sd, path);
            var name = GptConfig.Presets.FirstOrDefault(p => p.Value == (cfg.NLayer, cfg.NHead, cfg.Dim)).Key ?? "custom";
            Console.WriteLine($"config ({name}): dim {cfg.Dim}, layers {cfg.NLayer}, heads {cfg.NHead}, ffn {cfg.FfnHidden}, vocab {cfg.VocabSize}, block {cfg.BlockSize}, classes {cfg.NumClasses}; expected parameters {cfg.ParameterCount:N0}");
            using var model = new Gpt(cfg, device: META);
            GptCheckpoint.LoadStrictShapes(model, sd, path);
            Console.WriteLine("strict load: OK (names and shapes match)");
            return Task.FromResult(0);
        });
        return cmd;
    }

    private static Command Sample()
    {
        var ckpt = new Option<string?>("--checkpoint") { Description = "GPT weights (.safetensors or .pt)" };
        var randomInit = new Option<bool>("--random-init") { Description = "no checkpoint: reference init from --seed (smoke tests, benchmarks)" };
        var classes = new Option<string>("--classes") { Description = "comma-separated class ids, e.g. 1,2,3 (or 'random:N' for N i.i.d. uniform labels)", Required = true };
        var perClass = new Option<int>("--n-per-class") { DefaultValueFactory = _ => 1 };
        var tokens = new Option<int>("--tokens") { Description = "codes per image K (1..block_size; the reference only uses 256)", DefaultValueFactory = _ => 256 };
        var cfgScale = new Option<double>("--cfg-scale") { DefaultValueFactory = _ => 1.5 };
        var schedule = new Option<string>("--cfg-schedule") { Description = string.Join(", ", CfgSchedules.Names), DefaultValueFactory = _ => "step" };
        var windowStart = new Option<double?>("--window-start", "--step-start-ratio") { Description = "step/rectangular window start (defaults 0.18 / 0.05)" };
        var windowEnd = new Option<double>("--window-end") { DefaultValueFactory = _ => 1.0 };
        var interval = new Option<int>("--cfg-interval") { DefaultValueFactory = _ => -1 };
        var temperature = new Option<double>("--temperature") { DefaultValueFactory = _ => 1.0 };
        var topK = new Option<int>("--top-k") { DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 0 };
        var batch = new Option<int>("--batch-size") { Description = "images per generate call (the RNG stream runs on across batches)", DefaultValueFactory = _ => 32 };
        var bf16 = new Option<bool>("--bf16") { Description = "cast the GPT to bfloat16 (--precision bf16); default fp32 as the README run" };
        var output = new Option<string>("--out") { Description = "codes.npy (+ codes.labels.npy) or codes.npz (keys codes, labels)", Required = true };
        var cmd = new Command("sample", "sample token codes int64 [N,K] for given classes (decode them with `retok tokenizer decode`)");
        foreach (var o in new Option[] { PresetOpt, ConfigOpt, ckpt, randomInit, classes, perClass, tokens, cfgScale, schedule, windowStart, windowEnd, interval, temperature, topK, topP, seed, batch, bf16, output, DeviceOpt })
            cmd.Options.Add(o);
        cmd.SetAction((pr, ct) =>
        {
            var device = Devices.Resolve(pr.GetValue(DeviceOpt));
            var path = pr.GetValue(ckpt);
            if (path is null && !pr.GetValue(randomInit)) throw new ArgumentException("give --checkpoint (or --random-init for a smoke run)");
            var sd = path is null ? null : GptCheckpoint.StripPrefixes(GptCheckpoint.Read(path));
            var cfg = ResolveConfig(pr, sd, path);
            var gen = Sampling.NewGenerator(pr.GetValue(seed));
            using var model = path is null ? new Gpt(cfg, new Generator((ulong)pr.GetValue(seed))).to(device) : new Gpt(cfg, device: device);
            if (sd is not null) GptCheckpoint.LoadStrict(model, sd, path!);
            if (pr.GetValue(bf16)) model.to(bfloat16);
            var labels = ParseLabels(pr.GetValue(classes)!, pr.GetValue(perClass), cfg.NumClasses, gen, device);
            var opts = new SamplingOptions(pr.GetValue(cfgScale), pr.GetValue(schedule)!, pr.GetValue(windowStart), pr.GetValue(windowEnd),
                pr.GetValue(interval), pr.GetValue(temperature), pr.GetValue(topK), pr.GetValue(topP)).Validate();
            int k = pr.GetValue(tokens), bs = Math.Max(1, pr.GetValue(batch));
            long n = labels.shape[0];
            var codes = new List<Tensor>();
            var sw = Stopwatch.StartNew();
            for (long i = 0; i < n; i += bs)
            {
                ct.ThrowIfCancellationRequested();
                var chunk = labels.narrow(0, i, Math.Min(bs, n - i));
                codes.Add(Sampling.Generate(model, chunk, k, opts, gen).cpu());
                Console.WriteLine($"  {Math.Min(i + bs, n)}/{n} images, {sw.Elapsed.TotalSeconds:F1} s");
            }
            var all = cat(codes, 0);
            WriteCodes(pr.GetValue(output)!, all, labels.cpu());
            Console.WriteLine($"wrote {n} x {k} codes to {pr.GetValue(output)} ({n * k / sw.Elapsed.TotalSeconds:F0} tokens/s on {Devices.Describe(device)})");
            return Task.FromResult(0);
        });
        return cmd;
    }

    public static Tensor ParseLabels(string spec, int perClass, int numClasses, Generator gen, Device device)
    {
        if (perClass < 1) throw new ArgumentException($"--n-per-class must be >= 1, got {perClass}");
        if (spec.StartsWith("random:", StringComparison.OrdinalIgnoreCase))
            return Sampling.RandomLabels(long.Parse(spec[7..], CultureInfo.InvariantCulture), numClasses, gen, device);
        var ids = spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s =>
            long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= 0 && v < numClasses ? v
                : throw new ArgumentException($"--classes: '{s}' is not a class id in 0..{numClasses - 1}")).ToArray();
        if (ids.Length == 0) throw new ArgumentException("--classes is empty");
        return tensor(ids.SelectMany(c => Enumerable.Repeat(c, perClass)).ToArray(), int64, device);
    }

    public static void WriteCodes(string path, Tensor codes, Tensor labels)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        if (path.EndsWith(".npz", StringComparison.OrdinalIgnoreCase))
            Npz.Save(path, new Dictionary<string, NpyArray> { ["codes"] = NpyArray.FromTensor(codes), ["labels"] = NpyArray.FromTensor(labels) });
        else
        {
            Npy.Save(path, codes);
            Npy.Save(LabelsPathFor(path), labels);
        }
    }

    /// <summary>codes.npy -> codes.labels.npy</summary>
    public static string LabelsPathFor(string codesNpy) => Path.ChangeExtension(codesNpy, null) + ".labels.npy";

    private static Command Bench()
    {
        var preset = new Option<string>("--gpt") { Description = "preset to time (random init)", DefaultValueFactory = _ => "GPT-B" };
        var batch = new Option<int>("--batch-size") { DefaultValueFactory = _ => 4 };
        var tokens = new Option<int>("--tokens") { DefaultValueFactory = _ => 256 };
        var cfgScale = new Option<double>("--cfg-scale") { DefaultValueFactory = _ => 1.5 };
        var threads = new Option<int>("--threads") { Description = "torch threads for both runs (0 = leave as is)", DefaultValueFactory = _ => 2 };
        var repeats = new Option<int>("--repeats") { DefaultValueFactory = _ => 2 };
        var reference = new Option<bool>("--reference") { Description = "also time the authors' generate.py with /usr/bin/python3 (needs RETOK_REF_RETOK; RETOK_OPENBLAS_DIR selects OpenBLAS)" };
        var cmd = new Command("bench", "tokens/s and samples/s of KV-cache sampling (CPU), optionally against the reference generate.py");
        foreach (var o in new Option[] { preset, batch, tokens, cfgScale, threads, repeats, reference }) cmd.Options.Add(o);
        cmd.SetAction(async (pr, ct) =>
        {
            int nThreads = pr.GetValue(threads);
            if (nThreads > 0) set_num_threads(nThreads);
            var cfg = GptConfig.Preset(pr.GetValue(preset)!);
            int b = pr.GetValue(batch), k = pr.GetValue(tokens), reps = Math.Max(1, pr.GetValue(repeats));
            var opts = new SamplingOptions(pr.GetValue(cfgScale), "step", 0.18);
            var r = GeneratorBench.Run(cfg, b, k, opts, reps);
            Console.WriteLine($"ours   {cfg.NLayer}L/{cfg.Dim}d batch {b} (x{(opts.CfgScale > 1 ? 2 : 1)} rows for CFG), {k} tokens, {get_num_threads()} threads: " +
                $"{r.Seconds:F2} s/batch ({r.CpuSeconds:F2} s CPU), {r.TokensPerSecond:F0} tokens/s, {r.SamplesPerSecond:F3} samples/s");
            Console.WriteLine($"       where CPU time goes: prefill {r.PrefillMs:F1} ms, decode step {r.DecodeStepMs:F1} ms " +
                $"(model forward {r.ForwardMs:F1} ms, CFG+sampling {r.SampleMs:F1} ms); weights {r.WeightBytes / 1e6:F0} MB streamed per step " +
                $"= {r.WeightBytes / 1e9 / (r.ForwardMs / 1e3):F1} GB/s, {r.StepFlops / 1e9 / (r.ForwardMs / 1e3):F1} GFLOP/s");
            if (pr.GetValue(reference))
            {
                var py = await GeneratorBench.RunReferenceAsync(pr.GetValue(preset)!, b, k, opts.CfgScale, nThreads, reps, ct);
                Console.WriteLine($"ref    generate.py on python3-torch {py.Torch} ({py.Blas}): {py.Seconds:F2} s/batch ({py.CpuSeconds:F2} s CPU), " +
                    $"{b * k / py.Seconds:F0} tokens/s, {b / py.Seconds:F3} samples/s; decode-step model forward {py.ForwardMs:F1} ms CPU");
                Console.WriteLine($"ratio  ours/reference throughput: {py.Seconds / r.Seconds:F2}x wall, {py.CpuSeconds / r.CpuSeconds:F2}x CPU time (use CPU time on a loaded machine)");
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>`retok generator train-memory`; the measurement itself is bench/ReTok.Bench (<see cref="TrainMemoryBench"/>).</summary>
    private static Command TrainMemory()
    {
        var preset = new Option<string>("--preset") { Description = "GPT preset", DefaultValueFactory = _ => "GPT-B" };
        var batch = new Option<int>("--micro-batch") { Description = "rows per micro-batch", DefaultValueFactory = _ => 2 };
        var tokens = new Option<int>("--tokens") { Description = "codes per image (block_size)", DefaultValueFactory = _ => 256 };
        var cmd = new Command("train-memory", "peak CPU memory (RSS high-water mark, Linux) of one training forward+backward of a micro-batch, plain vs activation checkpointing")
            { preset, batch, tokens };
        cmd.SetAction((pr, ct) => Task.FromResult(TrainMemoryBench.Run(pr.GetValue(preset)!, pr.GetValue(batch), pr.GetValue(tokens), Console.Out)));
        return cmd;
    }
}

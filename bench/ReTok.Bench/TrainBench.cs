using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Evaluation.Metrics;
using ReTok.Jobs.Kinds.TrainTokenizer;
using ReTok.Models.Dinov2;
using ReTok.Models.Tokenizer;
using ReTok.Models.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Bench;

/// <summary>
/// `retok train bench`: CPU time of one tokenizer training iteration (G + D step) for a train-tokenizer spec, ours vs
/// the reference loop on Debian's torch (bench/train_tokenizer_ref.py, RETOK_REF_RETOK), plus a FLOP-based utilisation:
/// forward FLOPs per network counted by torch.profiler on the reference, training FLOPs = 3 G + 3 LPIPS + 9 D + teacher
/// (G step: G, LPIPS and D on the fake batch forward + backward; D step: two D forwards + backward; teacher forward only),
/// against the fp32 matmul peak TorchSharp reaches on this CPU (2048x2048).
/// </summary>
public static class TrainBench
{
    /// <summary>Times each train-tokenizer spec (batch 0: 2 for specs with global_batch_size &lt;= 8, else 1), printing to the console.</summary>
    public static void Run(IReadOnlyList<string> specs, int batch, int steps, string python, bool reference)
    {
        double peak = PeakGflops();
        Console.WriteLine($"# retok train bench: {Environment.ProcessorCount} cores, torch threads {torch.get_num_threads()}, fp32 matmul peak {peak:F1} GFLOP/s (2048^2, TorchSharp)");
        foreach (var path in specs) RunOne(path, batch, steps, peak, python, reference);
    }

    static double PeakGflops()
    {
        using var a = randn(2048, 2048);
        using var b = randn(2048, 2048);
        a.matmul(b).Dispose();
        double best = double.MaxValue;
        for (int i = 0; i < 3; i++)
        {
            var sw = Stopwatch.StartNew();
            a.matmul(b).Dispose();
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return 2.0 * 2048 * 2048 * 2048 / best / 1e9;
    }

    static void RunOne(string specPath, int batchOpt, int steps, double peak, string python, bool reference)
    {
        var plan = JobSpecs.Load(specPath);
        var p = (TrainTokenizerParams)plan.Steps[0].Params;
        var cfg = p.TokenizerModel();
        int batch = batchOpt > 0 ? batchOpt : p.Trainer.GlobalBatchSize <= 8 ? 2 : 1;
        bool lpipsOn = p.Loss.Params.PerceptualWeight > 0, teacherOn = p.SemanticOn;
        Console.WriteLine($"\n## {specPath}: {cfg.PresetName ?? "custom"} {cfg}, batch {batch}, disc_dim {p.Loss.Params.DiscDim}, " +
                          $"LPIPS {(lpipsOn ? "on (random VGG weights)" : "off")}, teacher {(teacherOn ? "DINOv2 ViT-B/14 (random weights)" : "off")}");
        var released = Time(p, cfg, batch, steps, lpipsOn, teacherOn, nestedDropout: false);
        var retok = Time(p, cfg, batch, steps, lpipsOn, teacherOn, nestedDropout: true);
        Console.WriteLine($"ours  released loop (K = 256):        {released,9:F0} ms/step  ({batch / released * 1000:F2} img/s)");
        Console.WriteLine($"ours  ReTok (K ~ U{{1..480}} per image): {retok,9:F0} ms/step  ({batch / retok * 1000:F2} img/s)");
        if (!reference) return;
        var r = Reference(python, specPath, batch, steps, p.Loss.Params.DiscDim, lpipsOn, teacherOn);
        if (r is null) return;
        double refMs = r["ms_per_step"]!.GetValue<double>();
        var f = r["fwd_flops"]!;
        double g = f["generator"]!.GetValue<double>(), d = f["discriminator"]!.GetValue<double>(),
               l = f["lpips"]!.GetValue<double>(), t = f["teacher"]!.GetValue<double>();
        double flops = 3 * g + 3 * l + 9 * d + t;
        Console.WriteLine($"ref   released loop (K = 256):        {refMs,9:F0} ms/step  (Debian torch {r["torch"]}, {r["threads"]} threads; also computes GigaTok's unused shortcut decode)");
        Console.WriteLine($"ratio reference / ours (released):    {refMs / released,9:F2}x");
        Console.WriteLine($"FLOPs/step {flops / 1e9:F1} GFLOP (forward GFLOP: G {g / 1e9:F1}, D {d / 1e9:F2}, LPIPS {l / 1e9:F1}, teacher {t / 1e9:F1}; torch.profiler)");
        Console.WriteLine($"utilisation: ours {flops / (released / 1000) / 1e9:F1} GFLOP/s = {flops / (released / 1000) / 1e9 / peak:P0} of peak; " +
                          $"reference {flops / (refMs / 1000) / 1e9:F1} GFLOP/s = {flops / (refMs / 1000) / 1e9 / peak:P0}");
    }

    static double Time(TrainTokenizerParams p, TokenizerConfig cfg, int batch, int steps, bool lpipsOn, bool teacherOn, bool nestedDropout)
    {
        manual_seed(0);
        using var model = new ReTokTokenizer(cfg);
        using var disc = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: p.Loss.Params.DiscDim));
        LpipsVgg? lpips = null;
        if (lpipsOn)
        {
            lpips = new LpipsVgg();
            foreach (var w in lpips.parameters()) w.requires_grad = false;
            lpips.train();
        }
        Func<Tensor, Tensor, Tensor> perceptual = lpips is null ? (x, _) => zeros(x.shape[0]) : (x, y) => lpips.forward(x, y);
        ISemanticTeacher? teacher = teacherOn ? new Dinov2Teacher(new DinoVisionTransformer(Dinov2Config.VitB14 with { ImgSize = 224 })) : null;
        var images = randint(0, 256, new long[] { batch, 256, 256, 3 }).to(ScalarType.Byte);
        var data = new TrainingDataLoader(new TensorImageSource(images), new DataConfig(batch, Augmentation: Augmentation.None));
        var tp = p with { Trainer = p.Trainer with { GlobalBatchSize = batch }, Retok = p.Retok with { NestedDropout = nestedDropout } };
        using var trainer = new TokenizerTrainer(new ReTokTrainable(model), disc, perceptual, teacher, data,
            TrainTokenizerJob.TrainerConfigOf(tp, cfg) with { TotalSteps = 1000 });
        trainer.TrainStep();   // warm-up
        double best = double.MaxValue;
        for (int i = 0; i < steps; i++)
        {
            var sw = Stopwatch.StartNew();
            trainer.TrainStep();
            best = Math.Min(best, sw.Elapsed.TotalMilliseconds);
        }
        lpips?.Dispose();
        (teacher as IDisposable)?.Dispose();
        return best;
    }

    static JsonNode? Reference(string python, string specPath, int batch, int steps, int discDim, bool lpips, bool teacher)
    {
        var refDir = Environment.GetEnvironmentVariable("RETOK_REF_RETOK");
        if (refDir is null || !Directory.Exists(refDir)) { Console.WriteLine("# reference skipped: set RETOK_REF_RETOK to a checkout of zfu006/ReTok"); return null; }
        if (teacher && Environment.GetEnvironmentVariable("RETOK_REF_DINOV2") is null) { Console.WriteLine("# reference skipped: the spec's teacher needs RETOK_REF_DINOV2 (facebookresearch/dinov2)"); return null; }
        var script = Path.Combine(AppContext.BaseDirectory, "bench", "train_tokenizer_ref.py");
        if (!File.Exists(script)) script = Path.GetFullPath(Path.Combine("bench", "train_tokenizer_ref.py"));
        var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(script);
        foreach (var a in new object[] { Path.GetFullPath(specPath), batch, steps, torch.get_num_threads(), discDim, lpips ? 1 : 0, teacher ? 1 : 0 })
            psi.ArgumentList.Add(Convert.ToString(a, CultureInfo.InvariantCulture)!);
        using var proc = Process.Start(psi)!;
        var err = proc.StandardError.ReadToEndAsync();
        var output = proc.StandardOutput.ReadToEnd();
        proc.WaitForExit();
        var line = output.Split('\n').FirstOrDefault(l => l.StartsWith("RESULT "));
        if (proc.ExitCode != 0 || line is null)
        {
            Console.WriteLine($"# reference run failed: {err.Result.Trim().Split('\n').LastOrDefault()}");
            return null;
        }
        return JsonNode.Parse(line["RESULT ".Length..]);
    }
}

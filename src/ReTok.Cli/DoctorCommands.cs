using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using ReTok.Evaluation.Inception;
using ReTok.Evaluation.Metrics;
using ReTok.Evaluation.Weights;
using ReTok.Models;
using ReTok.Models.Dinov2;
using ReTok.Models.Generation;
using ReTok.Models.Tokenizer;
using ReTok.Models.Training;
using TorchSharp;
using static TorchSharp.torch;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Cli;

/// <summary>
/// `retok doctor [--device cpu|cuda:N]`: what this machine's torch offers, then the project's models, losses, metrics
/// and both trainers run on the device and on the CPU from the same weights and inputs (tiny configs, random weights),
/// with every difference checked against a documented tolerance (docs/gpu.md). Exit 0 only when nothing failed.
/// On the CPU, `--device cpu` compares the CPU with itself (0 differences) and bf16 with fp32.
/// </summary>
public static class DoctorCommands
{
    public static Command Build()
    {
        var device = new Option<string>("--device") { Description = "device to check against the CPU: cpu, cuda, cuda:N, auto", DefaultValueFactory = _ => "auto" };
        var skip = new Option<string?>("--skip") { Description = "comma-separated check-name prefixes to skip (reported as SKIP), '-' for spaces, e.g. tokenizer-train-bf16" };
        var weights = new Option<string?>("--weights-dir") { Description = "weights folder for LPIPS/Inception (default: RETOK_WEIGHTS or the registry default)" };
        var cmd = new Command("doctor", "check this machine's torch device: facts, then models/losses/metrics/trainers on the device vs the CPU (fp32 and bf16) against documented tolerances");
        cmd.Options.Add(device);
        cmd.Options.Add(skip);
        cmd.Options.Add(weights);
        cmd.SetAction((pr, ct) => Task.FromResult(Doctor.Run(pr.GetValue(device)!, Console.Out,
            (pr.GetValue(skip) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), pr.GetValue(weights))));
        return cmd;
    }
}

/// <summary>One row of the doctor's table.</summary>
public sealed record DoctorRow(string Check, string Metric, double Value, double Tolerance, string Result, double Seconds, string Note = "");

public static class Doctor
{
    // ---- tolerances (docs/gpu.md explains each) ------------------------------------------------------------------
    /// <summary>fp32 forward on two devices, TF32 off: max|dev - cpu| / max|cpu|. Kernels sum in different orders
    /// (~1e-7 relative per op, growing with depth to ~1e-5 in these nets); 1e-3 leaves room and still catches a wrong
    /// kernel, layout, dtype or device (errors of order 1).</summary>
    public const double Fp32Rel = 1e-3;
    /// <summary>fp32 codes: share of code indices that differ (near-tie nearest-code flips from last-bit differences).</summary>
    public const double CodeFlipShare = 1e-2;
    /// <summary>bf16 compute vs fp32: bf16 rounds each cast by 2^-9 relative; through ~40 layers (quadrature)
    /// ~2.5e-2 (MixedPrecisionGpuTests.RelTol derives it); forwards get 5e-2 of the output's max.</summary>
    public const double Bf16Rel = 5e-2;
    /// <summary>Loss terms of one training step: relative to the term, with an absolute floor for terms near 0.</summary>
    public const double LossFp32Rel = 1e-3, LossFp32Floor = 1e-4, LossBf16Rel = 3e-2, LossBf16Floor = 3e-4;
    /// <summary>TF32 matmul (10-bit mantissa inputs): 2^-11 per input, sqrt(n) growth over n = 1024 terms is averaged
    /// out in max|diff|/max|ref|; 5e-3 is a generous bound that still catches fp16-class (or worse) errors.</summary>
    public const double Tf32Rel = 5e-3;

    public static int Run(string request, TextWriter o, IReadOnlyList<string>? skip = null, string? weightsDir = null)
    {
        skip ??= Array.Empty<string>();
        var rows = new List<DoctorRow>();
        Device dev;
        try { dev = Devices.Resolve(request); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            o.WriteLine($"doctor: {e.Message}");
            return 2;
        }
        var cpu = CPU;
        string dn = Devices.Describe(dev);
        PrintFacts(o, dev);

        void Check(string name, Func<(string Metric, double Value, double Tol, string Note)> f)
        {
            // names match with '-' or '_' for spaces, so a skip list survives shell word splitting (RETOK_DOCTOR_ARGS)
            static string Norm(string s) => s.Replace(' ', '-').Replace('_', '-');
            if (skip.Any(s => Norm(name).StartsWith(Norm(s), StringComparison.OrdinalIgnoreCase)))
            {
                rows.Add(new DoctorRow(name, "-", double.NaN, double.NaN, "SKIP", 0, "--skip"));
                return;
            }
            var sw = Stopwatch.StartNew();
            try
            {
                using var scope = NewDisposeScope();
                var (metric, value, tol, note) = f();
                rows.Add(new DoctorRow(name, metric, value, tol, value <= tol ? "PASS" : "FAIL", sw.Elapsed.TotalSeconds, note));
            }
            catch (SkipCheck s) { rows.Add(new DoctorRow(name, "-", double.NaN, double.NaN, "SKIP", sw.Elapsed.TotalSeconds, s.Message)); }
            catch (Exception e) { rows.Add(new DoctorRow(name, "error", double.NaN, double.NaN, "FAIL", sw.Elapsed.TotalSeconds, FirstLine(e))); }
            var r = rows[^1];
            o.WriteLine($"  {r.Result,-4} {r.Check} ({r.Seconds:F1} s)");
        }

        // strict fp32 comparisons: TF32 off while comparing (restored, then checked on its own)
        bool isCuda = dev.type == DeviceType.CUDA;
        GpuMath.Set(false);
        try
        {
            manual_seed(1234);
            var tcfg = TinyTokenizerConfig();
            using var tokCpu = new ReTokTokenizer(tcfg);
            tokCpu.eval();
            using var tokDev = Clone(tokCpu, () => new ReTokTokenizer(tcfg), dev);
            tokDev.eval();
            var images = Images(2, 1);
            var x = ReTokTokenizer.ImagesFromUint8(images);
            Tensor? codesCpu = null;
            Check("tokenizer encode fp32", () =>
            {
                codesCpu = tokCpu.Encode(x).DetachFromDisposeScope();
                var cd = tokDev.Encode(x).cpu();
                return ("share of codes differing", cd.ne(codesCpu).to(float64).mean().item<double>(), CodeFlipShare, $"{codesCpu.numel()} codes");
            });
            codesCpu ??= torch.randint(0, tcfg.CodebookSize, new long[] { 2, tokCpu.TotalTokens }, dtype: int64, generator: new Generator(3));
            foreach (int k in new[] { 32, 128, 256, 480 })
                Check($"tokenizer decode K={k} fp32", () => Rel(tokCpu.Decode(codesCpu, k), tokDev.Decode(codesCpu, k), Fp32Rel));
            Check("tokenizer decode K=256 bf16", () =>
            {
                var want = tokCpu.Decode(codesCpu, 256);
                Tensor got;
                using (Amp.Enable(ScalarType.BFloat16)) got = tokDev.Decode(codesCpu, 256);
                return Rel(want, got, Bf16Rel, "Amp bf16 on the device vs fp32 on the CPU");
            });

            // ---- GPT ----
            var gcfg = new GptConfig(Dim: 64, NLayer: 2, NHead: 4, VocabSize: 512, BlockSize: 32, NumClasses: 10,
                ClassDropoutProb: 0.1, TokenDropoutP: 0, ResidDropoutP: 0, FfnDropoutP: 0);
            using var gptCpu = new Gpt(gcfg, new Generator(5));
            using (no_grad()) gptCpu.output.weight!.normal_(0, 0.02, new Generator(6));   // a random head: non-uniform logits
            using var gptDev = Clone(gptCpu, () => new Gpt(gcfg, device: dev), dev);
            var codes = torch.randint(0, gcfg.VocabSize, new long[] { 4, gcfg.BlockSize }, dtype: int64, generator: new Generator(7));
            var labels = tensor(new long[] { 0, 3, 5, 9 });
            Check("gpt forward fp32", () =>
            {
                gptCpu.eval(); gptDev.eval();
                using var _ = no_grad();
                return Rel(gptCpu.forward(codes.narrow(1, 0, 31), labels).Logits, gptDev.forward(codes.narrow(1, 0, 31).to(dev), labels.to(dev)).Logits, Fp32Rel);
            });
            var so = new SamplingOptions(CfgScale: 1.5, CfgSchedule: "step", InverseCdf: true);
            Check("gpt sample cfg fp32 (same draws)", () =>
            {
                var a = Sampling.Generate(gptCpu, labels, 32, so, Sampling.NewGenerator(11));
                var b = Sampling.Generate(gptDev, labels.to(dev), 32, so, Sampling.NewGenerator(11)).cpu();
                double rowsDiffer = a.ne(b).any(1).to(float64).sum().item<double>();
                return ("rows with a differing token", rowsDiffer, 1, "inverse-CDF draws from one CPU generator on both devices; a flip at a CDF boundary changes the rest of its row");
            });
            Check("gpt sample cfg device draw path", () =>
            {
                // what sample-gfid runs: labels and draws seeded on the device's path (crashed on CUDA before)
                var g = Sampling.NewGenerator(12);
                var y = Sampling.RandomLabels(8, gcfg.NumClasses, g, dev);
                var z = Sampling.Generate(gptDev, y, 32, so with { InverseCdf = false }, g).cpu();
                bool ok = y.device.type == dev.type && z.shape.SequenceEqual(new long[] { 8, 32 }) && z.min().item<long>() >= 0 && z.max().item<long>() < gcfg.VocabSize;
                return ("tokens out of range / wrong device", ok ? 0 : 1, 0, $"labels on {y.device}");
            });
            Check("gpt forward bf16 (cast model)", () =>
            {
                using var g16 = Clone(gptCpu, () => new Gpt(gcfg, device: dev), dev);
                g16.to(ScalarType.BFloat16).eval();
                using var _ = no_grad();
                gptCpu.eval();
                return Rel(gptCpu.forward(codes.narrow(1, 0, 31), labels).Logits, g16.forward(codes.narrow(1, 0, 31).to(dev), labels.to(dev)).Logits, Bf16Rel, "sampler --bf16 cast");
            });
            foreach (var bf in new[] { false, true })
                Check($"gpt train step {(bf ? "bf16" : "fp32")}", () =>
                {
                    using var a = Clone(gptCpu, () => new Gpt(gcfg), cpu);
                    using var b = Clone(gptCpu, () => new Gpt(gcfg, device: dev), dev);
                    a.ClassDropGenerator = SeededRandom.NewGenerator(13);
                    b.ClassDropGenerator = SeededRandom.NewGenerator(13);
                    var opts = new GptTrainOptions(Lr: 1e-3, WarmupSteps: 1, TotalSteps: 10);
                    using var ta = new GptTrainer(a, opts);
                    using var tb = new GptTrainer(b, opts with { AutocastDtype = bf ? ScalarType.BFloat16 : null });
                    var ra = ta.TrainStep(codes, labels);
                    var rb = tb.TrainStep(codes, labels);
                    double rel = bf ? LossBf16Rel : LossFp32Rel, floor = bf ? LossBf16Floor : LossFp32Floor;
                    double lossErr = Math.Abs(ra.Loss - rb.Loss) / Math.Max(Math.Abs(ra.Loss), floor / rel);
                    double normErr = Math.Abs(ra.GradNorm - rb.GradNorm) / Math.Max(Math.Abs(ra.GradNorm), floor / rel);
                    return ("rel. diff of loss, grad norm (max)", Math.Max(lossErr, normErr), rel, $"loss {ra.Loss:G5} vs {rb.Loss:G5}; class dropout drawn on the device path");
                });

            // ---- tokenizer trainer (one G + D iteration) ----
            Dictionary<string, double>? cpuStep = null;   // the CPU fp32 step both rows compare with, computed once
            foreach (var bf in new[] { false, true })
                Check($"tokenizer train {(bf ? "bf16" : "fp32")}", () => TokenizerTrainStep(tokCpu, tcfg, dev, bf, ref cpuStep));

            // ---- LPIPS / Inception (need weights) ----
            Check("lpips fp32", () => Lpips(weightsDir, dev, bf16: false));
            Check("lpips bf16", () => Lpips(weightsDir, dev, bf16: true));
            Check("inception fp32", () => Inception(weightsDir, dev));
        }
        finally { GpuMath.Apply(); }

        Check($"matmul 1024 fp32 with TF32 {(GpuMath.Tf32 ? "on" : "off")}", () =>
        {
            var a = randn(new long[] { 1024, 1024 }, generator: new Generator(21));
            var b = randn(new long[] { 1024, 1024 }, generator: new Generator(22));
            return Rel(a.matmul(b), a.to(dev).matmul(b.to(dev)), isCuda && GpuMath.Tf32 ? Tf32Rel : Fp32Rel, isCuda ? "RETOK_TF32 decides" : "TF32 is CUDA-only");
        });

        PrintTable(o, rows, dn);
        int failed = rows.Count(r => r.Result == "FAIL");
        o.WriteLine(failed == 0 ? $"DOCTOR OK ({dn}): {rows.Count(r => r.Result == "PASS")} passed, {rows.Count(r => r.Result == "SKIP")} skipped"
            : $"DOCTOR FAIL ({dn}): {failed} failed: {string.Join("; ", rows.Where(r => r.Result == "FAIL").Select(r => r.Check))}");
        return failed == 0 ? 0 : 1;
    }

    sealed class SkipCheck(string why) : Exception(why);

    static (string, double, double, string) Rel(Tensor want, Tensor got, double tol, string note = "")
    {
        var w = want.detach().cpu().to(float64);
        var g = got.detach().cpu().to(float64);
        if (!w.shape.SequenceEqual(g.shape)) throw new InvalidOperationException($"shape [{string.Join(",", g.shape)}] vs [{string.Join(",", w.shape)}]");
        double err = (g - w).abs().max().item<double>() / Math.Max(w.abs().max().item<double>(), 1e-30);
        return ("max|diff| / max|cpu|", double.IsNaN(err) ? double.PositiveInfinity : err, tol, note);
    }

    /// <summary>The tiny ReTok tokenizer of the parity tests (tests/fixtures/tokenizer/tiny.yaml), smaller codebook.</summary>
    public static TokenizerConfig TinyTokenizerConfig() => new()
    {
        CodebookSize = 1024, CodebookEmbedDim = 8, EncoderChMult = [1, 1, 1, 1, 2], DecoderChMult = [1, 1, 1, 1, 2],
        ModelSize = null, NumLatentTokens = 256, ZChannels = 32, MultiLevelQueryInit = true, AdaptiveGn = true, D2sUp = true,
        Rot = true, UseAttn = false, FeaRecLossType = "mse", DistillDepth = 1, OutInnerDim = 32, Ch = 32, NumResBlocks = 1,
        EncoderWidth = 64, EncoderLayers = 2, EncoderHeads = 2, DecoderWidth = 64, DecoderLayers = 2, DecoderHeads = 2,
    };

    /// <summary>Smooth random uint8 images [n, 256, 256, 3] (upsampled noise: codes and losses are not degenerate).</summary>
    static Tensor Images(int n, ulong seed)
    {
        var small = rand(new long[] { n, 3, 8, 8 }, generator: new Generator(seed));
        var big = nn.functional.interpolate(small, size: new long[] { 256, 256 }, mode: InterpolationMode.Bilinear, align_corners: false);
        return (big * 255).round().clamp(0, 255).to(ScalarType.Byte).permute(0, 2, 3, 1).contiguous();
    }

    /// <summary>A copy of <paramref name="src"/>'s weights and buffers in a fresh module on <paramref name="device"/>.</summary>
    static T Clone<T>(T src, Func<T> make, Device device) where T : nn.Module
    {
        var m = make();
        m.to(device);
        using (no_grad())
        {
            var sd = src.state_dict();
            foreach (var (k, v) in m.state_dict()) v.copy_(sd[k]);
        }
        return m;
    }

    static Tensor FixedPerceptual(Tensor x, Tensor y) => (tanh(1.5 * x) - tanh(1.5 * y)).abs().mean(new long[] { 1, 2, 3 }, keepdim: true);

    sealed class FixedTeacher(int dim) : ISemanticTeacher
    {
        public Tensor Features(Tensor images)
        {
            using var _ = no_grad();
            var w = sin(0.37 * (dim * arange(3, dtype: float64).view(3, 1) + arange(dim, dtype: float64).view(1, dim)) + 1.0).to(float32).to(images.device);
            var p = nn.functional.avg_pool2d(images, 16);
            return tanh(p.flatten(2).transpose(1, 2).matmul(w));
        }
    }

    static (string, double, double, string) TokenizerTrainStep(ReTokTokenizer init, TokenizerConfig cfg, Device dev, bool bf16,
        ref Dictionary<string, double>? cpuFp32)
    {
        Dictionary<string, double> Step(Device d, string precision)
        {
            using var model = Clone(init, () => new ReTokTokenizer(cfg), d);
            manual_seed(77);
            using var disc0 = new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8));
            using var disc = Clone(disc0, () => new PatchGanDiscriminator(new DiscriminatorConfig(Ndf: 8)), d);
            var data = new TrainingDataLoader(new TensorImageSource(Images(2, 2)), new DataConfig(BatchSize: 1, Seed: 0, Augmentation: Augmentation.None));
            var tc = new TrainerConfig(TotalSteps: 10, Seed: 0, Precision: precision,
                SemanticWeight: new SemanticWeightConfig(LambdaSchedule.Linear, Lambda0: 0.5, LambdaEnd: 0.0, KStart: 1, KEnd: 256));
            using var t = new TokenizerTrainer(new ReTokTrainable(model), disc, FixedPerceptual, new FixedTeacher(cfg.OutInnerDim), data, tc, d);
            return t.TrainStep().Scalars.ToDictionary(kv => kv.Key, kv => kv.Value);
        }
        var want = cpuFp32 ??= Step(CPU, "fp32");
        var got = Step(dev, bf16 ? "bf16" : "fp32");
        double rel = bf16 ? LossBf16Rel : LossFp32Rel, floor = bf16 ? LossBf16Floor : LossFp32Floor;
        string[] terms = { "rec", "perceptual", "gen_adv", "vq", "commit", "feature_rec", "semantic", "total_g", "total_d", "grad_norm_g", "grad_norm_d" };
        // worst term as a multiple of its own tolerance, reported on the relative scale (value <= rel  <=>  all within)
        var worst = terms.Select(k => (k, r: Math.Abs(got[k] - want[k]) / Math.Max(rel * Math.Abs(want[k]), floor))).MaxBy(x => x.r);
        return ("worst term: |diff| / its tolerance x rel", worst.r * rel, rel, $"worst {worst.k}: {got[worst.k]:G5} vs {want[worst.k]:G5}; batch 1, K per sample, teacher stand-in");
    }

    static (string, double, double, string) Lpips(string? weightsDir, Device dev, bool bf16)
    {
        string vgg, lin;
        try { vgg = WeightsRegistry.Resolve("vgg16", weightsDir); lin = WeightsRegistry.Resolve("lpips-vgg", weightsDir); }
        catch (FileNotFoundException e) { throw new SkipCheck($"weights missing: {FirstLine(e)}"); }
        using var a = LpipsVgg.Load(vgg, lin);
        a.eval();
        using var b = LpipsVgg.Load(vgg, lin);
        b.to(dev).eval();
        var x = ReTokTokenizer.ImagesFromUint8(Images(2, 4));
        var y = ReTokTokenizer.ImagesFromUint8(Images(2, 5));
        using var _ = no_grad();
        var want = a.forward(x, y);
        Tensor got;
        using (Amp.Enable(bf16 ? ScalarType.BFloat16 : null)) got = b.forward(x.to(dev), y.to(dev));
        return Rel(want, got, bf16 ? Bf16Rel : Fp32Rel, bf16 ? "Amp bf16 (as in tokenizer training) vs fp32 on the CPU" : "");
    }

    static (string, double, double, string) Inception(string? weightsDir, Device dev)
    {
        string path;
        try { path = WeightsRegistry.Resolve("inception", weightsDir); }
        catch (FileNotFoundException e) { throw new SkipCheck($"weights missing: {FirstLine(e)}"); }
        using var a = InceptionExtractor.Load(path, CPU);
        using var b = InceptionExtractor.Load(path, dev);
        var imgs = Images(2, 6).permute(0, 3, 1, 2).to(float32);
        using var fa = a.Run(imgs);
        using var fb = b.Run(imgs);
        return Rel(fa.Pool, fb.Pool, Fp32Rel, "pool features");
    }

    static string FirstLine(Exception e) => e.Message.Split('\n')[0].Trim();

    static void PrintTable(TextWriter o, List<DoctorRow> rows, string dn)
    {
        o.WriteLine();
        o.WriteLine($"{"check",-36} {"device",-8} {"metric",-36} {"value",10} {"tolerance",10} {"result",-6} {"s",6}  note");
        foreach (var r in rows)
            o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Check,-36} {dn,-8} {r.Metric,-36} {Num(r.Value),10} {Num(r.Tolerance),10} {r.Result,-6} {r.Seconds,6:F1}  {r.Note}"));
        o.WriteLine();
    }

    static string Num(double v) => double.IsNaN(v) ? "-" : v == 0 ? "0" : Math.Abs(v) >= 0.01 && Math.Abs(v) < 1e4 ? v.ToString("G4", CultureInfo.InvariantCulture) : v.ToString("E2", CultureInfo.InvariantCulture);

    // ---- facts -----------------------------------------------------------------------------------------------------

    static void PrintFacts(TextWriter o, Device dev)
    {
        void Say(string s) => o.WriteLine("doctor: " + s);
        Say($"device {Devices.Describe(dev)}; TorchSharp {typeof(torch).Assembly.GetName().Version}, libtorch package {torch.__version__}, .NET {Environment.Version}, {Environment.ProcessorCount} cores");
        bool cuda = torch.cuda.is_available();
        Say($"CUDA available {cuda}, devices {(cuda ? torch.cuda.device_count() : 0)}, cuDNN available {(cuda && torch.cuda.is_cudnn_available())}, cuDNN version {CudnnVersion()}");
        foreach (var lib in MappedLibs("libtorch_cpu.so", "libtorch_cuda.so", "libcudnn.so", "libcudart.so", "libLibTorchSharp.so")) Say("mapped " + lib);
        Say($"TF32 setting {(GpuMath.Tf32 ? "on" : "off")} (RETOK_TF32), libtorch flags matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}");
        string bf;
        try
        {
            using var scope = NewDisposeScope();
            var a = ones(new long[] { 64, 64 }, dtype: ScalarType.BFloat16, device: dev);
            bf = a.matmul(a)[0, 0].to(float32).item<float>() == 64f ? "yes (bf16 matmul runs)" : "no (wrong bf16 matmul result)";
        }
        catch (Exception e) { bf = "no: " + FirstLine(e); }
        Say($"bf16 on {Devices.Describe(dev)}: {bf}");
        Say($"memory: {MemoryFacts(dev)}");
    }

    static IEnumerable<string> MappedLibs(params string[] prefixes)
    {
        if (!File.Exists("/proc/self/maps")) return Array.Empty<string>();
        return File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "")
            .Where(p => p.StartsWith('/') && prefixes.Any(k => Path.GetFileName(p).StartsWith(k))).Distinct().ToList();
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate nuint CudnnGetVersion();
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] delegate int CudaMemGetInfo(out nuint free, out nuint total);

    /// <summary>cudnnGetVersion() of the cuDNN the process has mapped (TorchSharp exposes no version call).</summary>
    static string CudnnVersion()
    {
        var lib = MappedLibs("libcudnn.so").FirstOrDefault();
        if (lib is null) return "n/a (no libcudnn mapped)";
        try
        {
            var h = NativeLibrary.Load(lib);
            if (!NativeLibrary.TryGetExport(h, "cudnnGetVersion", out var f)) return $"unknown (no cudnnGetVersion in {Path.GetFileName(lib)})";
            var v = (ulong)Marshal.GetDelegateForFunctionPointer<CudnnGetVersion>(f)();
            return v >= 10000 ? $"{v / 10000}.{v / 100 % 100}.{v % 100}" : $"{v / 1000}.{v / 100 % 10}.{v % 100}";
        }
        catch (Exception e) { return "unknown: " + FirstLine(e); }
    }

    static string MemoryFacts(Device dev)
    {
        if (dev.type == DeviceType.CUDA)
        {
            var lib = MappedLibs("libcudart.so").FirstOrDefault();
            if (lib is null) return "unknown (no libcudart mapped; nvidia-smi shows it)";
            try
            {
                var h = NativeLibrary.Load(lib);
                if (!NativeLibrary.TryGetExport(h, "cudaMemGetInfo", out var f)) return "unknown (no cudaMemGetInfo)";
                int rc = Marshal.GetDelegateForFunctionPointer<CudaMemGetInfo>(f)(out var free, out var total);
                return rc == 0 ? $"{(double)free / (1 << 30):F1} GiB free of {(double)total / (1 << 30):F1} GiB on the current CUDA device" : $"unknown (cudaMemGetInfo returned {rc})";
            }
            catch (Exception e) { return "unknown: " + FirstLine(e); }
        }
        var avail = File.Exists("/proc/meminfo") ? File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemAvailable:")) : null;
        return avail is null ? "unknown" : $"host {avail.Split(':')[1].Trim()} available";
    }
}

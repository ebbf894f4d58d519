using System.Diagnostics;
using System.Globalization;
using ReTok.Models.Generation;
using static TorchSharp.torch;

namespace ReTok.Bench;

/// <summary>`retok generator bench`: timing of KV-cache sampling, ours and the reference generate.py (the CLI registers the command).</summary>
public static class GeneratorBench
{
    /// <summary>Seconds = best wall time per batch; CpuSeconds = process CPU time of that run (robust on a loaded machine).</summary>
    public sealed record Result(double Seconds, double CpuSeconds, double TokensPerSecond, double SamplesPerSecond, double PrefillMs, double DecodeStepMs,
        double ForwardMs, double SampleMs, double WeightBytes, double StepFlops);

    public static Result Run(GptConfig cfg, int batch, int tokens, SamplingOptions opts, int repeats)
    {
        using var model = new Gpt(cfg, new Generator(0));
        // random head so sampling is not trivially uniform
        using (no_grad()) model.output.weight!.normal_(0, 0.02, new Generator(1));
        var labels = arange(batch, dtype: int64);
        var gen = new Generator(0);
        Sampling.Generate(model, labels, Math.Min(8, tokens), opts, gen); // warm-up
        double best = double.MaxValue, bestCpu = double.MaxValue;
        var proc = Process.GetCurrentProcess();
        for (int i = 0; i < repeats; i++)
        {
            proc.Refresh();
            var cpu0 = proc.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            using var _ = Sampling.Generate(model, labels, tokens, opts, gen);
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
            proc.Refresh();
            bestCpu = Math.Min(bestCpu, (proc.TotalProcessorTime - cpu0).TotalSeconds);
        }
        // breakdown in process CPU time (wall time is meaningless on a shared machine): prefill, the model forward of a
        // decode step, and CFG combine + sampling, measured separately over up to 32 steps
        model.eval();
        using var ng = no_grad();
        long rows = opts.CfgScale > 1 ? 2L * batch : batch;
        var cond = arange(rows, dtype: int64) % cfg.NumClasses;
        using var cache = model.NewCache(rows, 1 + tokens);
        double Cpu() { proc.Refresh(); return proc.TotalProcessorTime.TotalMilliseconds; }
        double c0 = Cpu();
        model.Prefill(cond, cache).Dispose();
        double prefill = Cpu() - c0;
        int steps = Math.Min(32, tokens - 1);
        var x = zeros(rows, 1, dtype: int64);
        double fwd = 0, smp = 0;
        for (int t = 1; t <= steps; t++)
        {
            using var scope = NewDisposeScope();
            c0 = Cpu();
            var lg = model.Decode(x, t, cache).select(1, 0);
            double c1 = Cpu();
            Sampling.SampleToken(opts.CfgScale > 1 ? Sampling.CombineCfg(lg, opts.CfgScale) : lg, opts, gen);
            double c2 = Cpu();
            fwd += c1 - c0;
            smp += c2 - c1;
        }
        long nonEmb = cfg.ParameterCount - (long)cfg.VocabSize * cfg.Dim - (long)cfg.ClassTableRows * cfg.Dim - (long)(cfg.BlockSize + 1) * cfg.Dim;
        return new Result(best, bestCpu, batch * tokens / best, batch / best, prefill, (bestCpu * 1000 - prefill) / Math.Max(1, tokens - 1),
            fwd / steps, smp / steps, nonEmb * 4.0, 2.0 * nonEmb * rows);
    }

    public sealed record RefResult(double Seconds, double CpuSeconds, string Torch, string Blas, double ForwardMs);

    public static async Task<RefResult> RunReferenceAsync(string preset, int batch, int tokens, double cfgScale, int threads, int repeats, CancellationToken ct)
    {
        var refDir = Environment.GetEnvironmentVariable("RETOK_REF_RETOK");
        if (string.IsNullOrEmpty(refDir) || !Directory.Exists(Path.Combine(refDir, "autoregressive")))
            throw new InvalidOperationException("--reference needs RETOK_REF_RETOK pointing at a checkout of zfu006/ReTok");
        var script = FindUp(Path.Combine("bench", "generator_ref.py"))
            ?? throw new FileNotFoundException("bench/generator_ref.py not found above the current directory or the executable");
        var psi = new ProcessStartInfo("/usr/bin/python3") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { script, preset, batch.ToString(), tokens.ToString(), cfgScale.ToString(CultureInfo.InvariantCulture), threads.ToString(), repeats.ToString() })
            psi.ArgumentList.Add(a);
        var blas = Environment.GetEnvironmentVariable("RETOK_OPENBLAS_DIR");
        if (!string.IsNullOrEmpty(blas)) psi.Environment["LD_LIBRARY_PATH"] = blas;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync(ct);
        var stderr = p.StandardError.ReadToEndAsync(ct);
        await p.WaitForExitAsync(ct);
        if (p.ExitCode != 0) throw new InvalidOperationException($"reference bench failed ({p.ExitCode}): {await stderr}");
        var lines = (await stdout).Split('\n');
        var f = lines.Last(l => l.StartsWith("RESULT ")).Split(' ');
        double fwd = double.Parse(lines.Last(l => l.StartsWith("FORWARD ")).Split(' ')[1], CultureInfo.InvariantCulture);
        return new RefResult(double.Parse(f[1], CultureInfo.InvariantCulture), double.Parse(f[2], CultureInfo.InvariantCulture), f[3],
            string.IsNullOrEmpty(blas) ? "Debian reference BLAS" : "OpenBLAS", fwd);
    }

    private static string? FindUp(string rel)
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, rel))) return Path.Combine(d.FullName, rel);
        return null;
    }
}

using System.Diagnostics;
using System.Globalization;
using ReTok.Evaluation.Images;
using ReTok.Models.IO;
using ReTok.Models.Images;

namespace ReTok.Bench;

/// <summary>`retok dataset bench`: images/s of the whole extraction (decode, ADM crop, npz) against Pillow + numpy (the CLI registers the command).</summary>
public static class DatasetBench
{
    const string PyExtract = @"
import os, sys, time, importlib.util
import numpy as np
from PIL import Image
spec = importlib.util.spec_from_file_location('aug', os.path.join(os.environ['RETOK_REF_RETOK'], 'dataset', 'augmentation.py'))
aug = importlib.util.module_from_spec(spec); spec.loader.exec_module(aug)
out, files = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
arr = np.stack([np.asarray(aug.center_crop_arr(Image.open(f).convert('RGB'), 256)) for f in files]).astype(np.uint8)
np.savez(out, arr_0=arr)
print(len(files) / (time.perf_counter() - t))
";

    /// <summary>Extracts <paramref name="n"/> synthetic JPEGs and prints the rates; <paramref name="python"/> runs the reference.</summary>
    public static int Run(int n, string python, CancellationToken ct)
    {
        var dir = Directory.CreateTempSubdirectory("retok-bench-extract").FullName;
        try
        {
            var src = Path.Combine(dir, "src");
            SyntheticImages.NoiseJpegs(src, n);
            Console.WriteLine($"# retok dataset bench: {n} JPEGs (500x375, 375x500, 800x600) -> {n}x256x256x3 npz; {Environment.ProcessorCount} cores");
            var p = new DatasetExtractOptions { Source = src, Shuffle = false, ChunkSize = 64 };
            DatasetExtractor.ExtractToNpz(p with { Workers = 1 }, Path.Combine(dir, "warm.npz"), null, ct); // JIT tier-up: time the steady state a 50k job runs in
            var ours1 = Path.Combine(dir, "ours1.npz");
            var (_, _, one) = DatasetExtractor.ExtractToNpz(p with { Workers = 1 }, ours1, null, ct);
            var (_, _, all) = DatasetExtractor.ExtractToNpz(p, Path.Combine(dir, "ours.npz"), null, ct);
            double? py = null;
            string same = "n/a";
            if (Environment.GetEnvironmentVariable("RETOK_REF_RETOK") is not { } refDir || !Directory.Exists(refDir))
                Console.WriteLine("# reference timing skipped: set RETOK_REF_RETOK to a checkout of zfu006/ReTok");
            else
            {
                var pyOut = Path.Combine(dir, "pil.npz");
                var files = Directory.GetFiles(src).Order(StringComparer.Ordinal).ToArray();
                var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
                psi.ArgumentList.Add("-c"); psi.ArgumentList.Add(PyExtract); psi.ArgumentList.Add(pyOut);
                foreach (var f in files) psi.ArgumentList.Add(f);
                using var proc = Process.Start(psi)!;
                var err = proc.StandardError.ReadToEndAsync();
                var o = proc.StandardOutput.ReadToEnd();
                proc.WaitForExit();
                if (proc.ExitCode != 0) Console.WriteLine($"# reference run failed: {err.Result.Trim().Split('\n').LastOrDefault()}");
                else
                {
                    py = double.Parse(o.Trim().Split('\n').Last(), CultureInfo.InvariantCulture);
                    same = Npz.LoadKey(pyOut, "arr_0").Data.AsSpan().SequenceEqual(Npz.LoadKey(ours1, "arr_0").Data) ? "yes" : "NO";
                }
            }
            // where the time goes (1 thread): decode only, ADM crop only
            var jpgs = Directory.GetFiles(src).Order(StringComparer.Ordinal).ToArray();
            var t0 = Stopwatch.StartNew();
            var decoded = jpgs.Select(f => ImageIO.LoadRgb(f)).ToList();
            double dec = n / t0.Elapsed.TotalSeconds;
            t0.Restart();
            foreach (var img in decoded) AdmCrop.CenterCropArr(img, 256);
            double crop = n / t0.Elapsed.TotalSeconds;
            var sel = DatasetExtractor.Select(p with { Shuffle = false });
            t0.Restart();
            var chunkRes = DatasetExtractor.ProcessChunk(sel.Images, 0, n, 256, 1, ct);
            double chunkRate = n / t0.Elapsed.TotalSeconds;
            t0.Restart();
            var partFile = Path.Combine(dir, "part.npz");
            DatasetExtractor.SavePart(partFile, chunkRes, 256);
            double save = n / t0.Elapsed.TotalSeconds;
            t0.Restart();
            DatasetExtractor.Assemble([partFile], Path.Combine(dir, "assembled.npz"), 256);
            double asm = n / t0.Elapsed.TotalSeconds;
            Console.WriteLine($"# ours, 1 thread: decode {dec:F1} img/s, ADM crop {crop:F1} img/s (PilResize parallelises rows internally), " +
                              $"decode+crop chunk {chunkRate:F1} img/s, part npz {save:F1} img/s, assemble {asm:F1} img/s");
            Console.WriteLine($"extract  ours {one,8:F1} img/s (1 thread), {all,8:F1} img/s ({Environment.ProcessorCount} threads)  | Pillow+numpy {(py is double v ? $"{v,8:F1}" : "     n/a")} img/s (1 thread)" +
                              $"  | ratio {(py is double q ? $"{one / q:F2}x (1 thread), {all / q:F2}x (all cores)" : "n/a")}  | arrays identical: {same}");
            return 0;
        }
        finally { try { Directory.Delete(dir, true); } catch { } }
    }
}

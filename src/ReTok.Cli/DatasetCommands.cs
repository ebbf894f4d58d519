using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using ReTok.Evaluation.Images;
using ReTok.Jobs.Kinds.ExtractDataset;
using ReTok.Jobs.Quickstart;
using ReTok.Models.IO;
using ReTok.Models.Images;

namespace ReTok.Cli;

/// <summary>
/// `retok dataset extract|synthetic|bench`: the extract-dataset job's extraction without the engine, the synthetic
/// ImageNet-layout folder, and images/s of the whole extraction (decode, ADM crop, npz) against Pillow + numpy.
/// </summary>
public static class DatasetCommands
{
    public static Command Build()
    {
        var cmd = new Command("dataset", "image datasets: extract an image folder to dataset.npz, make a synthetic folder, benchmark extraction");
        cmd.Subcommands.Add(Extract());
        cmd.Subcommands.Add(Synthetic());
        cmd.Subcommands.Add(Bench());
        return cmd;
    }

    static Command Extract()
    {
        var source = new Option<string>("--source") { Description = "image folder (class sub-folders, flat, or flat ILSVRC2012 val with --val-labels)", Required = true };
        var output = new Option<string>("--out") { Description = "dataset npz to write (arr_0 uint8 [N,S,S,3], labels int64 [N])", Required = true };
        var valLabels = new Option<string?>("--val-labels") { Description = "ILSVRC2012_validation_ground_truth.txt or LOC_val_solution.csv" };
        var meta = new Option<string?>("--devkit-meta") { Description = "the devkit's data/meta.mat (labels in sorted-WNID order)" };
        var size = new Option<int>("--image-size") { DefaultValueFactory = _ => 256 };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 0 };
        var noShuffle = new Option<bool>("--no-shuffle") { Description = "keep listing order" };
        var limit = new Option<int?>("--limit");
        var perClass = new Option<int?>("--per-class");
        var onCorrupt = new Option<string>("--on-corrupt") { Description = "fail or skip", DefaultValueFactory = _ => "fail" };
        var workers = new Option<int>("--workers") { Description = "decode threads (0 = all cores)", DefaultValueFactory = _ => 0 };
        var c = new Command("extract", "ADM centre-crop an image folder into dataset.npz (what the extract-dataset job does, without tracking)")
            { source, output, valLabels, meta, size, seed, noShuffle, limit, perClass, onCorrupt, workers };
        c.SetAction((pr, ct) => CliSupport.Guard(() =>
        {
            var p = new ExtractDatasetParams
            {
                Source = pr.GetValue(source)!, ValLabels = pr.GetValue(valLabels), DevkitMeta = pr.GetValue(meta), ImageSize = pr.GetValue(size),
                Seed = pr.GetValue(seed), Shuffle = !pr.GetValue(noShuffle), Limit = pr.GetValue(limit), PerClass = pr.GetValue(perClass),
                OnCorrupt = pr.GetValue(onCorrupt) switch { "skip" => OnCorrupt.Skip, "fail" => OnCorrupt.Fail, var v => throw new CliError($"--on-corrupt: '{v}' is not fail or skip", 2) },
                Workers = pr.GetValue(workers),
            };
            if (p.Validate().ToList() is { Count: > 0 } errs) throw new CliError(string.Join("\n", errs), 2);
            long n; int skipped; double rate;
            try { (n, skipped, rate) = DatasetExtractor.ExtractToNpz(p, pr.GetValue(output)!, Console.Error, ct); }
            catch (CorruptImageException e) { throw new CliError($"{e.Message} (--on-corrupt skip leaves such images out)", 1); }
            catch (Exception e) when (e is InvalidDataException or DirectoryNotFoundException or FileNotFoundException or ArgumentException) { throw new CliError(e.Message, 1); }
            Console.WriteLine($"Saved .npz file to {pr.GetValue(output)} [shape=({n}, {p.ImageSize}, {p.ImageSize}, 3)], {skipped} skipped, {rate:F1} img/s.");
            return Task.FromResult(0);
        }));
        return c;
    }

    static Command Synthetic()
    {
        var output = new Option<string>("--out") { Description = "folder to create (one sub-folder per class)", Required = true };
        var classes = new Option<int>("--classes") { DefaultValueFactory = _ => 4 };
        var perClass = new Option<int>("--per-class") { DefaultValueFactory = _ => 8 };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 0 };
        var c = new Command("synthetic", "write the small synthetic ImageNet-layout folder the tiny specs use") { output, classes, perClass, seed };
        c.SetAction((pr, ct) =>
        {
            var n = SyntheticDataset.Generate(pr.GetValue(output)!, pr.GetValue(classes), pr.GetValue(perClass), pr.GetValue(seed));
            Console.WriteLine($"wrote {n} images to {pr.GetValue(output)}");
            return Task.FromResult(0);
        });
        return c;
    }

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

    static Command Bench()
    {
        var count = new Option<int>("--images") { Description = "synthetic JPEGs (ImageNet-like sizes)", DefaultValueFactory = _ => 64 };
        var python = new Option<string>("--python") { Description = "python with PIL + numpy for the reference timing", DefaultValueFactory = _ => "/usr/bin/python3" };
        var c = new Command("bench", "images/s of the whole extraction (decode, ADM crop, npz) vs Pillow + numpy running ReTok's center_crop_arr (RETOK_REF_RETOK = checkout of zfu006/ReTok)")
            { count, python };
        c.SetAction((pr, ct) =>
        {
            var dir = Directory.CreateTempSubdirectory("retok-bench-extract").FullName;
            try
            {
                int n = pr.GetValue(count);
                var src = Path.Combine(dir, "src");
                SyntheticImages.NoiseJpegs(src, n);
                Console.WriteLine($"# retok dataset bench: {n} JPEGs (500x375, 375x500, 800x600) -> {n}x256x256x3 npz; {Environment.ProcessorCount} cores");
                var p = new ExtractDatasetParams { Source = src, Shuffle = false, ChunkSize = 64 };
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
                    var psi = new ProcessStartInfo(pr.GetValue(python)!) { RedirectStandardOutput = true, RedirectStandardError = true };
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
                return Task.FromResult(0);
            }
            finally { try { Directory.Delete(dir, true); } catch { } }
        });
        return c;
    }
}

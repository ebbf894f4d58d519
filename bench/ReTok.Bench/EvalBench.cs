using System.Diagnostics;
using ReTok.Evaluation.Images;
using ReTok.Evaluation.Inception;
using ReTok.Evaluation.Weights;
using ReTok.Models.Images;
using TorchSharp;

namespace ReTok.Bench;

/// <summary>
/// `retok eval bench`: images/s of decode + ADM centre crop (ours vs Pillow via ReTok's center_crop_arr) on synthetic
/// 500x375 JPEGs, and of Inception feature extraction on CPU (ours vs pytorch-fid's FID Inception + torch-fidelity's TF1
/// resize in Debian's torch). Weights do not matter for timing, so formula weights are used.
/// </summary>
public static class EvalBench
{
    const string PyCrop = @"
import os, sys, time, importlib.util
from PIL import Image
spec = importlib.util.spec_from_file_location('aug', os.path.join(os.environ['RETOK_REF_RETOK'], 'dataset', 'augmentation.py'))
aug = importlib.util.module_from_spec(spec); spec.loader.exec_module(aug)
files = sys.argv[1:]
for f in files[:2]: aug.center_crop_arr(Image.open(f).convert('RGB'), 256)
t = time.perf_counter()
for f in files: aug.center_crop_arr(Image.open(f).convert('RGB'), 256)
print(len(files) / (time.perf_counter() - t))
";

    const string PyInception = @"
import os, sys, time, torch
sys.path.insert(0, os.path.join(os.environ['RETOK_REF_PYTORCH_FID'], 'src'))
sys.path.insert(0, os.environ['RETOK_REF_TORCH_FIDELITY'])
from pytorch_fid import inception as pfi
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as rs
torch.set_grad_enabled(False)
t = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
for n, m in (('Mixed_5b', pfi.FIDInceptionA(192, 32)), ('Mixed_5c', pfi.FIDInceptionA(256, 64)), ('Mixed_5d', pfi.FIDInceptionA(288, 64)),
             ('Mixed_6b', pfi.FIDInceptionC(768, 128)), ('Mixed_6c', pfi.FIDInceptionC(768, 160)), ('Mixed_6d', pfi.FIDInceptionC(768, 160)),
             ('Mixed_6e', pfi.FIDInceptionC(768, 192)), ('Mixed_7b', pfi.FIDInceptionE_1(1280)), ('Mixed_7c', pfi.FIDInceptionE_2(2048))):
    setattr(t, n, m)
t.eval(); t.fc = torch.nn.Identity()
n = int(sys.argv[1]); bs = 8
x = torch.randint(0, 256, (n, 3, 256, 256)).float()
def run(b):
    y = (rs(b, size=(299, 299), align_corners=False, method='slow') - 128) / 128
    return t(y)
run(x[:2])
s = time.perf_counter()
for i in range(0, n, bs): run(x[i:i+bs])
print(n / (time.perf_counter() - s))
";

    public static int Run(int count, int incCount, string python)
    {
        Console.WriteLine($"# retok eval bench: {Environment.ProcessorCount} cores, torch threads {torch.get_num_threads()}");
        var dir = Directory.CreateTempSubdirectory("retok-bench-eval").FullName;
        try
        {
            var files = SyntheticImages.NoiseJpegs(dir, count);
            // ours, parallel over images (what ImageFolder does) and on one thread (comparable to the python loop)
            ImageFolder.LoadRange(files, 0, Math.Min(2, files.Count)).Dispose();
            var sw = Stopwatch.StartNew();
            ImageFolder.LoadRange(files, 0, files.Count).Dispose();
            double oursPar = files.Count / sw.Elapsed.TotalSeconds;
            sw.Restart();
            foreach (var f in files) AdmCrop.CenterCropArr(ImageIO.LoadRgb(f), 256);
            double oursSeq = files.Count / sw.Elapsed.TotalSeconds;
            sw.Restart();
            var decoded = files.Select(ImageIO.LoadRgb).ToList();
            double decodeOnly = files.Count / sw.Elapsed.TotalSeconds;
            sw.Restart();
            foreach (var im in decoded) AdmCrop.CenterCropArr(im, 256);
            double cropOnly = files.Count / sw.Elapsed.TotalSeconds;
            Console.WriteLine($"# ours split (1 thread): decode {decodeOnly:F1} img/s, resize+crop {cropOnly:F1} img/s");
            var pil = RunPython(python, PyCrop, "RETOK_REF_RETOK", files.ToArray());
            Console.WriteLine($"adm-crop  ours {oursSeq,8:F1} img/s (1 thread), {oursPar,8:F1} img/s (parallel)  | Pillow {Fmt(pil)} img/s (1 thread)  " +
                $"| ratio ours/Pillow {(pil is double p ? $"{oursSeq / p:F2}x (1 thread), {oursPar / p:F2}x (parallel)" : "n/a")}");

            if (incCount <= 0) return 0;
            using var model = new FidInceptionV3();
            StateDict.ApplyFormula(model, (n, s) => n.EndsWith("running_var") || n.EndsWith("bn.weight") ? (0.1, 1.0) : (0.05, 0.0));
            using var ex = new InceptionExtractor(model, "formula") { BatchSize = 8 };
            using var imgs = torch.randint(0, 256, new long[] { incCount, 256, 256, 3 }, torch.uint8);
            ex.Extract(imgs.narrow(0, 0, Math.Min(2, incCount))).Dispose();
            sw.Restart();
            ex.Extract(imgs).Dispose();
            double incOurs = incCount / sw.Elapsed.TotalSeconds;
            var incPy = RunPython(python, PyInception, "RETOK_REF_PYTORCH_FID", incCount.ToString());
            Console.WriteLine($"inception ours {incOurs,8:F2} img/s  | pytorch-fid (Debian torch) {Fmt(incPy)} img/s  | ratio {(incPy is double q ? $"{incOurs / q:F2}x" : "n/a")}");
            Console.WriteLine("# note: Debian's torch links the reference BLAS; set LD_LIBRARY_PATH to an OpenBLAS for a fair Inception comparison (see bench/evaluation.sh)");
            return 0;
        }
        finally { try { Directory.Delete(dir, true); } catch { } }
    }

    static string Fmt(double? v) => v is double d ? $"{d,8:F2}" : "     n/a";

    static double? RunPython(string python, string code, string envVar, params string[] args)
    {
        if (Environment.GetEnvironmentVariable(envVar) is not string p || !Directory.Exists(p))
        {
            Console.WriteLine($"# reference timing skipped: set {envVar} to a checkout of the reference");
            return null;
        }
        try
        {
            var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add("-c"); psi.ArgumentList.Add(code);
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var proc = Process.Start(psi)!;
            var stderrTask = proc.StandardError.ReadToEndAsync();
            var output = proc.StandardOutput.ReadToEnd();
            proc.WaitForExit();
            if (proc.ExitCode != 0) { Console.WriteLine($"# reference run failed: {stderrTask.Result.Trim().Split('\n').LastOrDefault()}"); return null; }
            return double.Parse(output.Trim().Split('\n').Last(), System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) { Console.WriteLine($"# reference run failed: {e.Message}"); return null; }
    }
}

using System.CommandLine;
using ReTok.Bench;
using ReTok.Evaluation.Features;
using ReTok.Evaluation.Images;
using ReTok.Evaluation.Inception;
using ReTok.Evaluation.Metrics;
using ReTok.Evaluation.Weights;
using ReTok.Jobs.Kinds.ExtractDataset;
using ReTok.Models;
using ReTok.Models.IO;

namespace ReTok.Cli;

/// <summary>`retok eval ...` (features, compare, recon, prepare-val, bench) and `retok weights ...` (list, import).</summary>
public static class EvalCommands
{
    static readonly Option<string?> WeightsDir = new("--weights-dir") { Description = "weights folder (default $RETOK_HOME/weights)" };
    static readonly Option<string> Device = new("--device") { Description = "auto, cpu or cuda:N", DefaultValueFactory = _ => "auto" };
    static readonly Option<int> BatchSize = new("--batch-size") { Description = "images per Inception batch", DefaultValueFactory = _ => 64 };

    public static IEnumerable<Command> Build()
    {
        yield return BuildEval();
        yield return BuildWeights();
    }

    static Command BuildEval()
    {
        var eval = new Command("eval", "evaluation: Inception features, ADM evaluator metrics, reconstruction metrics");
        eval.Subcommands.Add(Features());
        eval.Subcommands.Add(Compare());
        eval.Subcommands.Add(Recon());
        eval.Subcommands.Add(PrepareVal());
        eval.Subcommands.Add(Bench());
        return eval;
    }

    static InceptionExtractor OpenInception(string? path, string? weightsDir, string device, int batchSize)
    {
        var p = WeightsRegistry.ResolveOrPath(path, "inception", weightsDir);
        Console.Error.WriteLine($"loading Inception weights {p}");
        var ex = InceptionExtractor.Load(p, Devices.Resolve(device));
        ex.BatchSize = batchSize;
        return ex;
    }

    static Command Features()
    {
        var images = new Option<string>("--images") { Description = "image batch npz (arr_0 uint8 [N,H,W,3]) or an image folder (ADM-cropped to 256)", Required = true };
        var inception = new Option<string?>("--inception") { Description = "Inception weights (default: the registry's in the weights folder)" };
        var output = new Option<string>("--out") { Description = "features npz: pool [N,2048], spatial [N,2023], logits [N,1008] float32", Required = true };
        var cmd = new Command("features", "Inception features of an image batch") { images, inception, output, WeightsDir, Device, BatchSize };
        cmd.SetAction((pr, ct) =>
        {
            var src = pr.GetValue(images)!;
            var bs = pr.GetValue(BatchSize);
            using var ex2 = OpenInception(pr.GetValue(inception), pr.GetValue(WeightsDir), pr.GetValue(Device)!, bs);
            var progress = new StderrProgress("features");
            FeatureSet f;
            if (Directory.Exists(src))
            {
                var l = ImageFolder.List(src);
                f = ex2.ExtractBatches(ImageFolder.Batches(l, 256, bs).Select(b => b.Batch), l.Count, progress, disposeBatches: true);
            }
            else f = ex2.ExtractNpz(src, "arr_0", progress);
            long count = f.Count;
            using (f) f.Save(pr.GetValue(output)!);
            Console.WriteLine($"wrote {pr.GetValue(output)} ({count} images)");
            return Task.FromResult(0);
        });
        return cmd;
    }

    static Command Compare()
    {
        var refOpt = new Option<string>("--ref") { Description = "reference: image batch npz, features npz, or ADM reference batch with mu/sigma/mu_s/sigma_s", Required = true };
        var samples = new Option<string>("--samples") { Description = "sample: image batch npz or features npz", Required = true };
        var inception = new Option<string?>("--inception") { Description = "Inception weights (needed when an input holds images)" };
        var json = new Option<string?>("--json") { Description = "also write the results as JSON" };
        var txt = new Option<string?>("--txt") { Description = "also write the evaluator's five-line text file" };
        var cacheDir = new Option<string?>("--cache-dir") { Description = "feature cache folder (default $RETOK_HOME/cache/features)" };
        var noCache = new Option<bool>("--no-cache") { Description = "do not read or write cached features" };
        var cmd = new Command("compare", "ADM evaluator: Inception Score, FID, sFID, Precision, Recall")
            { refOpt, samples, inception, json, txt, cacheDir, noCache, WeightsDir, Device, BatchSize };
        cmd.SetAction((pr, ct) =>
        {
            InceptionExtractor? ex = null;
            InceptionExtractor GetEx() => ex ??= OpenInception(pr.GetValue(inception), pr.GetValue(WeightsDir), pr.GetValue(Device)!, pr.GetValue(BatchSize));
            var cache = pr.GetValue(noCache) ? null : pr.GetValue(cacheDir) is string cd ? new FeatureCache(cd) : FeatureCache.Default();
            void Log(string m) => Console.Error.WriteLine(m);
            try
            {
                Log("computing/reading reference batch statistics...");
                using var r = AdmEvaluator.Open(pr.GetValue(refOpt)!, GetEx, cache, Log);
                Log("computing/reading sample batch statistics...");
                using var s = AdmEvaluator.Open(pr.GetValue(samples)!, GetEx, cache, Log);
                Log("Computing evaluations...");
                var res = AdmEvaluator.Compare(r, s, m => Log("warning: " + m));
                Console.Write(res.ToText());
                if (pr.GetValue(json) is string j) AtomicFile.Write(j, st => st.Write(System.Text.Encoding.UTF8.GetBytes(res.ToJson())));
                if (pr.GetValue(txt) is string t) AtomicFile.Write(t, st => st.Write(System.Text.Encoding.UTF8.GetBytes(res.ToText())));
            }
            finally { ex?.Dispose(); }
            return Task.FromResult(0);
        });
        return cmd;
    }

    static Command Recon()
    {
        var refOpt = new Option<string>("--ref") { Description = "ground truth image batch npz (arr_0 uint8 [N,256,256,3], dataset order)", Required = true };
        var recon = new Option<string>("--recon") { Description = "reconstruction batch npz (arr_0 uint8, same order)", Required = true };
        var vgg = new Option<string?>("--lpips-vgg") { Description = "torchvision vgg16-397923af.pth (with --lpips-lin enables LPIPS)" };
        var lin = new Option<string?>("--lpips-lin") { Description = "LPIPS v0.1 vgg.pth heads" };
        var lpips = new Option<bool>("--lpips") { Description = "compute LPIPS with the registry's weights from the weights folder" };
        var json = new Option<string?>("--json") { Description = "also write the results as JSON" };
        var bs = new Option<int>("--batch-size") { Description = "LPIPS batch (ReTok averages per-batch means; it used 32 per GPU)", DefaultValueFactory = _ => 32 };
        var cmd = new Command("recon", "PSNR / SSIM (/ LPIPS-VGG) between two image batches, as ReTok's reconstruction_ddp.py")
            { refOpt, recon, vgg, lin, lpips, json, bs, WeightsDir, Device };
        cmd.SetAction((pr, ct) =>
        {
            LpipsVgg? model = null;
            if (pr.GetValue(vgg) is not null || pr.GetValue(lin) is not null || pr.GetValue(lpips))
            {
                var v = WeightsRegistry.ResolveOrPath(pr.GetValue(vgg), "vgg16", pr.GetValue(WeightsDir));
                var l = WeightsRegistry.ResolveOrPath(pr.GetValue(lin), "lpips-vgg", pr.GetValue(WeightsDir));
                model = LpipsVgg.Load(v, l);
            }
            using var ev = new ReconstructionEvaluator(model, Devices.Resolve(pr.GetValue(Device)));
            string a = pr.GetValue(refOpt)!, b = pr.GetValue(recon)!;
            var ha = Npz.Header(a, "arr_0"); var hb = Npz.Header(b, "arr_0");
            if (!ha.Shape.SequenceEqual(hb.Shape) || ha.Dtype != "|u1" || hb.Dtype != "|u1")
                throw new InvalidDataException($"{a} arr_0 {ha.Dtype} [{string.Join(",", ha.Shape)}] and {b} arr_0 {hb.Dtype} [{string.Join(",", hb.Shape)}] must be uint8 of the same shape");
            var progress = new StderrProgress("recon");
            int n = pr.GetValue(bs);
            foreach (var ((_, ca), (_, cb)) in Npz.ReadRows(a, "arr_0", n).Zip(Npz.ReadRows(b, "arr_0", n)))
            {
                using var ta = ca.ToTensor(); using var tb = cb.ToTensor();
                ev.AddBatch(ta, tb);
                progress.Report((ev.Result().Count, ha.Shape[0]));
            }
            var res = ev.Result();
            Console.Write(res.ToText());
            if (model is not null) Console.WriteLine($"LPIPS_vgg per-image mean: {res.LpipsImageMean:F6} (uint8 reconstructions; the reference scores the raw decoder output)");
            if (pr.GetValue(json) is string j)
                AtomicFile.Write(j, st => System.Text.Json.JsonSerializer.Serialize(st, new { PSNR = res.Psnr, SSIM = res.Ssim, lpips_vgg = res.LpipsBatchMean, lpips_vgg_per_image = res.LpipsImageMean, count = res.Count },
                    new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            model?.Dispose();
            return Task.FromResult(0);
        });
        return cmd;
    }

    static Command PrepareVal()
    {
        var data = new Option<string>("--data") { Description = "image folder (ImageNet class sub-folders, or flat)", Required = true };
        var output = new Option<string>("--out") { Description = "npz to write (arr_0 uint8 [N,size,size,3], labels int64 [N]; folder order unless --shuffle-seed)", Required = true };
        var size = new Option<int>("--size") { DefaultValueFactory = _ => 256 };
        var png = new Option<string?>("--png-dir") { Description = "also write row k of the npz as {k:06d}.png (val_ddp layout)" };
        var limit = new Option<int?>("--limit") { Description = "only the first N images (of the shuffled order with --shuffle-seed)" };
        var seed = new Option<int?>("--shuffle-seed") { Description = "shuffle the npz order (the reference shuffles unseeded)" };
        var cmd = new Command("prepare-val", "ADM centre-crop an image folder into an npz (val_ddp.py; the extraction of `retok dataset extract`)") { data, output, size, png, limit, seed };
        cmd.SetAction((pr, ct) => CliSupport.Guard(() =>
        {
            var p = new ExtractDatasetParams
            {
                Source = pr.GetValue(data)!, ImageSize = pr.GetValue(size), Limit = pr.GetValue(limit),
                Shuffle = pr.GetValue(seed) is not null, Seed = pr.GetValue(seed) ?? 0,
            };
            if (p.Validate().ToList() is { Count: > 0 } errs) throw new CliError(string.Join("\n", errs), 2);
            var npz = pr.GetValue(output)!;
            long n;
            try { (n, _, _) = DatasetExtractor.ExtractToNpz(p, npz, Console.Error, ct); }
            catch (Exception e) when (e is CorruptImageException or InvalidDataException or DirectoryNotFoundException or FileNotFoundException or ArgumentException) { throw new CliError(e.Message, 1); }
            if (pr.GetValue(png) is string dir)
            {
                Directory.CreateDirectory(dir);
                foreach (var (row, bytes) in DatasetExtractor.Pngs(npz, DatasetExtractor.Threads(p), ct)) File.WriteAllBytes(Path.Combine(dir, $"{row:000000}.png"), bytes);
            }
            Console.WriteLine($"Saved .npz file to {npz} [shape=({n}, {p.ImageSize}, {p.ImageSize}, 3)].");
            return Task.FromResult(0);
        }));
        return cmd;
    }

    static Command Bench()
    {
        var count = new Option<int>("--images") { Description = "images for the crop benchmark", DefaultValueFactory = _ => 48 };
        var incCount = new Option<int>("--inception-images") { Description = "images for the Inception benchmark", DefaultValueFactory = _ => 16 };
        var python = new Option<string>("--python") { Description = "python with PIL/torch for the reference timings", DefaultValueFactory = _ => "/usr/bin/python3" };
        var cmd = new Command("bench", "images/s of ADM crop (vs Pillow) and Inception features on CPU (vs pytorch-fid); reference paths from RETOK_REF_RETOK / RETOK_REF_PYTORCH_FID / RETOK_REF_TORCH_FIDELITY")
            { count, incCount, python };
        cmd.SetAction((pr, ct) => Task.FromResult(EvalBench.Run(pr.GetValue(count), pr.GetValue(incCount), pr.GetValue(python)!)));
        return cmd;
    }

    static Command BuildWeights()
    {
        var w = new Command("weights", "external weights: list what is needed, import files into the weights folder");
        var list = new Command("list", "known weights, where to get them, and whether they are in the weights folder") { WeightsDir };
        list.SetAction((pr, ct) =>
        {
            var dir = pr.GetValue(WeightsDir) ?? WeightsRegistry.DefaultDir();
            var manifest = WeightsRegistry.ReadManifest(dir);
            Console.WriteLine($"weights folder: {dir}");
            foreach (var e in WeightsRegistry.Known)
            {
                string status;
                try
                {
                    var p = WeightsRegistry.Resolve(e.Name, dir);
                    var m = manifest.FirstOrDefault(x => x.File == Path.GetFileName(p));
                    status = m is null ? $"present ({Path.GetFileName(p)}, not imported: hash not recorded)" : $"present ({m.File}, sha256 {m.Sha256[..16]}..., {(m.Verified ? "verified" : "NOT verified")})";
                }
                catch (MissingWeightsException) { status = "missing"; }
                Console.WriteLine($"{e.Name,-20} {e.FileName,-40} {status}");
                Console.WriteLine($"{"",-20} {e.Purpose}");
                Console.WriteLine($"{"",-20} get it from {e.Source}");
            }
            return Task.FromResult(0);
        });
        var file = new Argument<string>("file") { Description = "file to copy into the weights folder" };
        var asName = new Option<string?>("--as") { Description = "registry name when the file name is not the released one (inception, vgg16, lpips-vgg, adm-ref-imagenet256)" };
        var force = new Option<bool>("--force") { Description = "import even if the hash does not match the published one" };
        var import = new Command("import", "copy a weights file into the weights folder, verifying and recording its sha256") { file, asName, force, WeightsDir };
        import.SetAction((pr, ct) =>
        {
            var item = WeightsRegistry.Import(pr.GetValue(file)!, pr.GetValue(WeightsDir), pr.GetValue(asName), pr.GetValue(force));
            Console.WriteLine($"imported {item.Name} -> {Path.Combine(pr.GetValue(WeightsDir) ?? WeightsRegistry.DefaultDir(), item.File)} sha256 {item.Sha256} ({(item.Verified ? "verified" : "not verified")})");
            return Task.FromResult(0);
        });
        w.Subcommands.Add(list);
        w.Subcommands.Add(import);
        return w;
    }
}

using System.CommandLine;
using ReTok.Bench;
using ReTok.Evaluation.Images;
using ReTok.Jobs.Kinds.ExtractDataset;
using ReTok.Jobs.Quickstart;

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

    static Command Bench()
    {
        var count = new Option<int>("--images") { Description = "synthetic JPEGs (ImageNet-like sizes)", DefaultValueFactory = _ => 64 };
        var python = new Option<string>("--python") { Description = "python with PIL + numpy for the reference timing", DefaultValueFactory = _ => "/usr/bin/python3" };
        var c = new Command("bench", "images/s of the whole extraction (decode, ADM crop, npz) vs Pillow + numpy running ReTok's center_crop_arr (RETOK_REF_RETOK = checkout of zfu006/ReTok)")
            { count, python };
        c.SetAction((pr, ct) => Task.FromResult(DatasetBench.Run(pr.GetValue(count), pr.GetValue(python)!, ct)));
        return c;
    }
}

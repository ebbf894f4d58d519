using System.CommandLine;
using System.Diagnostics;
using ReTok.Bench;
using ReTok.Evaluation.Images;
using ReTok.Models;
using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Cli;

/// <summary>`retok tokenizer inspect|encode|decode|reconstruct|bench`: the ReTok tokenizer on files.</summary>
public static class TokenizerCommands
{
    static readonly Option<string> ConfigOpt = new("--config") { Description = "tokenizer YAML (reference keys, e.g. configs/vq/VQ_SB256.yaml) or a preset name VQ_SS256 / VQ_SB256", Required = true };
    static readonly Option<string> CheckpointOpt = new("--checkpoint") { Description = "weights: torch .pt/.pth (ema preferred, then model) or .safetensors", Required = true };
    static readonly Option<string> DeviceOpt = new("--device") { Description = "auto, cpu, cuda, cuda:N", DefaultValueFactory = _ => "auto" };
    static readonly Option<int> BatchOpt = new("--batch-size") { Description = "images per forward", DefaultValueFactory = _ => 8 };
    static readonly Option<string> PreferOpt = new("--prefer") { Description = "which weights of a training checkpoint: ema or model", DefaultValueFactory = _ => "ema" };

    public static Command Build()
    {
        var cmd = new Command("tokenizer", "ReTok 1-D tokenizer (VQ_SS256 / VQ_SB256): inspect checkpoints, encode, decode, reconstruct");
        cmd.Subcommands.Add(Inspect());
        cmd.Subcommands.Add(Encode());
        cmd.Subcommands.Add(Decode());
        cmd.Subcommands.Add(Reconstruct());
        cmd.Subcommands.Add(Bench());
        cmd.Subcommands.Add(Convert());
        return cmd;
    }

    static Command Convert()
    {
        var ckpt = new Argument<string>("CKPT") { Description = "torch .pt/.pth training checkpoint" };
        var output = new Option<string>("--out") { Description = "flat state dict .safetensors", Required = true };
        var c = new Command("convert", "extract the weights Load would use (ema preferred) into a .safetensors file");
        c.Arguments.Add(ckpt);
        c.Options.Add(output);
        c.Options.Add(PreferOpt);
        c.SetAction((pr, ct) =>
        {
            var sd = StateDictFile.Read(pr.GetValue(ckpt)!, pr.GetValue(PreferOpt)!);
            StateDictFile.WriteSafetensors(pr.GetValue(output)!, sd);
            Console.WriteLine($"wrote {sd.Count} tensors to {pr.GetValue(output)}");
            return Task.FromResult(0);
        });
        return c;
    }

    static Command Inspect()
    {
        var ckpt = new Argument<string>("CKPT") { Description = "checkpoint file (.pt/.pth/.safetensors)" };
        var c = new Command("inspect", "print the checkpoint's entries, weights used, dtype, parameter count and the architecture guessed from shapes");
        c.Arguments.Add(ckpt);
        c.Options.Add(PreferOpt);
        c.SetAction((pr, ct) => Task.FromResult(RunInspect(pr.GetValue(ckpt)!, pr.GetValue(PreferOpt)!, Console.Out)));
        return c;
    }

    static Command Encode()
    {
        var images = new Option<string>("--images") { Description = "uint8 images: an .npz with arr_0 [N,256,256,3], a folder of such .npz files, or a folder of images (ADM centre crop to 256)", Required = true };
        var output = new Option<string>("--out") { Description = "codes .npy, int64 [N,480]", Required = true };
        var c = new Command("encode", "images → codes int64 [N,480] (256 real + 224 padding tokens)");
        foreach (var o in new Option[] { ConfigOpt, CheckpointOpt, images, output, DeviceOpt, BatchOpt, PreferOpt }) c.Options.Add(o);
        c.SetAction((pr, ct) => Task.FromResult(RunEncode(pr.GetValue(ConfigOpt)!, pr.GetValue(CheckpointOpt)!, pr.GetValue(images)!,
            pr.GetValue(output)!, pr.GetValue(DeviceOpt)!, pr.GetValue(BatchOpt), pr.GetValue(PreferOpt)!, Console.Out)));
        return c;
    }

    static readonly Option<int> TokensOpt = new("--tokens") { Description = "K: decode from the first K codes (1..480; 256 = all real tokens)", Required = true };
    static readonly Option<string?> OutFloatOpt = new("--out-float") { Description = "also write the raw decoder output, float32 [N,3,256,256] .npy" };

    static Command Decode()
    {
        var codes = new Option<string>("--codes") { Description = "codes .npy, int64 (or int32) [N,W], W ≥ K", Required = true };
        var output = new Option<string>("--out") { Description = "images .npz: arr_0 uint8 [N,256,256,3] (clamp(127.5x+128) truncated, as the reference)", Required = true };
        var c = new Command("decode", "codes → images from the first K codes");
        foreach (var o in new Option[] { ConfigOpt, CheckpointOpt, codes, TokensOpt, output, OutFloatOpt, DeviceOpt, BatchOpt, PreferOpt }) c.Options.Add(o);
        c.SetAction((pr, ct) => Task.FromResult(RunDecode(pr.GetValue(ConfigOpt)!, pr.GetValue(CheckpointOpt)!, pr.GetValue(codes)!,
            pr.GetValue(TokensOpt), pr.GetValue(output)!, pr.GetValue(OutFloatOpt), pr.GetValue(DeviceOpt)!, pr.GetValue(BatchOpt),
            pr.GetValue(PreferOpt)!, Console.Out)));
        return c;
    }

    static Command Reconstruct()
    {
        var images = new Option<string>("--images") { Description = "uint8 images: .npz arr_0 [N,256,256,3], a folder of .npz, or a folder of images (ADM centre crop to 256)", Required = true };
        var output = new Option<string?>("--out") { Description = "reconstructions .npz, arr_0 uint8 [N,256,256,3]" };
        var grid = new Option<string?>("--save-grid") { Description = "PNG with up to 8 originals (top row) above their reconstructions" };
        var c = new Command("reconstruct", "encode + decode from the first K codes; prints PSNR on uint8 images");
        foreach (var o in new Option[] { ConfigOpt, CheckpointOpt, images, TokensOpt, output, OutFloatOpt, grid, DeviceOpt, BatchOpt, PreferOpt }) c.Options.Add(o);
        c.SetAction((pr, ct) => Task.FromResult(RunReconstruct(pr.GetValue(ConfigOpt)!, pr.GetValue(CheckpointOpt)!, pr.GetValue(images)!,
            pr.GetValue(TokensOpt), pr.GetValue(output), pr.GetValue(OutFloatOpt), pr.GetValue(grid), pr.GetValue(DeviceOpt)!,
            pr.GetValue(BatchOpt), pr.GetValue(PreferOpt)!, Console.Out)));
        return c;
    }

    static Command Bench()
    {
        var config = new Option<string>("--config") { Description = "YAML or preset", DefaultValueFactory = _ => "VQ_SS256" };
        var iters = new Option<int>("--iters") { Description = "timed repetitions (after a batch-1 warm-up)", DefaultValueFactory = _ => 1 };
        var tokens = new Option<int>("--tokens") { Description = "K for decode", DefaultValueFactory = _ => 256 };
        var c = new Command("bench", "images/s of encode and decode(K) with freshly initialised weights (see bench/tokenizer.sh for the reference comparison)");
        foreach (var o in new Option[] { config, BatchOpt, iters, tokens, DeviceOpt }) c.Options.Add(o);
        c.SetAction((pr, ct) => Task.FromResult(RunBench(pr.GetValue(config)!, pr.GetValue(BatchOpt), pr.GetValue(iters), pr.GetValue(tokens),
            pr.GetValue(DeviceOpt)!, Console.Out)));
        return c;
    }

    // ------------------------------------------------------------------ actions (public for tests)

    public static TokenizerConfig LoadConfig(string configOrPreset) =>
        File.Exists(configOrPreset) ? TokenizerConfig.Load(configOrPreset)
        : configOrPreset.EndsWith(".yaml") || configOrPreset.EndsWith(".yml") || configOrPreset.Contains('/')
            ? throw new FileNotFoundException($"tokenizer config {configOrPreset} does not exist", configOrPreset)
            : TokenizerConfig.Preset(configOrPreset);

    static ReTokTokenizer LoadModel(string config, string checkpoint, string device, string prefer, TextWriter log)
    {
        var cfg = LoadConfig(config);
        var sw = Stopwatch.StartNew();
        var model = ReTokTokenizer.FromCheckpoint(cfg, checkpoint, prefer);
        var dev = Devices.Resolve(device);
        model.to(dev).eval();
        log.WriteLine($"tokenizer {cfg.PresetName ?? "custom"} loaded from {checkpoint} in {sw.Elapsed.TotalSeconds:F1}s on {Devices.Describe(dev)}");
        return model;
    }

    public static int RunInspect(string path, string prefer, TextWriter log)
    {
        var info = StateDictFile.Describe(path, prefer);
        log.WriteLine(info);
        foreach (var (k, v) in info.Scalars) log.WriteLine($"{k}: {v}");
        var sd = StateDictFile.Read(path, prefer);
        try
        {
            TokenizerConfig g;
            try { g = TokenizerConfig.Guess(sd); }
            catch (InvalidDataException e) { log.WriteLine($"architecture: not a ReTok tokenizer state dict ({e.Message})"); return 0; }
            log.WriteLine($"architecture: {g.PresetName ?? "custom"} — {g}");
            long inference = sd.Where(kv => !ReTokTokenizer.IsTrainingOnlyKey(kv.Key) && !kv.Key.EndsWith("codebook_used")).Sum(kv => kv.Value.NumberOfElements);
            long all = sd.Where(kv => !kv.Key.EndsWith("codebook_used")).Sum(kv => kv.Value.NumberOfElements);
            log.WriteLine($"parameters: {all:N0} ({all / 1e6:F2}M; {inference / 1e6:F2}M without the training-only distill_mlp)");
            if (sd.TryGetValue("s1to2decoder.latent_token_positional_embedding_comp", out var comp))
            {
                double std = comp.to(ScalarType.Float64).std().item<double>(), init = 1 / Math.Sqrt(comp.shape[^1]);
                log.WriteLine($"decoder padding positions (_comp): std {std:F4} (fresh init would be ≈{init:F4}; equal means never trained beyond K=256)");
            }
        }
        finally { foreach (var t in sd.Values) t.Dispose(); }
        return 0;
    }

    public static int RunEncode(string config, string checkpoint, string images, string output, string device, int batch, string prefer, TextWriter log)
    {
        using var model = LoadModel(config, checkpoint, device, prefer, log);
        long n = CountImages(images);
        var codes = new long[n * model.TotalTokens];
        var sw = Stopwatch.StartNew();
        long done = 0;
        foreach (var u8 in ReadImages(images, batch))
        {
            using var scope = NewDisposeScope();
            var c = model.Encode(ReTokTokenizer.ImagesFromUint8(u8)).cpu();
            Array.Copy(c.data<long>().ToArray(), 0, codes, done * model.TotalTokens, c.NumberOfElements);
            done += u8.shape[0];
            u8.Dispose();
        }
        Npy.Save(output, NpyArray.Of(codes, n, model.TotalTokens));
        log.WriteLine($"encoded {n} images → {output} int64 [{n},{model.TotalTokens}] in {sw.Elapsed.TotalSeconds:F1}s ({n / sw.Elapsed.TotalSeconds:F2} img/s)");
        return 0;
    }

    public static int RunDecode(string config, string checkpoint, string codesPath, int tokens, string output, string? outFloat,
        string device, int batch, string prefer, TextWriter log)
    {
        var arr = Npy.Load(codesPath);
        if (arr.Shape.Length != 2) throw new InvalidDataException($"{codesPath}: codes must be [N,W], got [{string.Join(",", arr.Shape)}]");
        using var all = arr.ToTensor().to(ScalarType.Int64);
        using var model = LoadModel(config, checkpoint, device, prefer, log);
        if (tokens < 1 || tokens > Math.Min(arr.Shape[1], model.TotalTokens))
            throw new ArgumentException($"--tokens {tokens} is outside 1..{Math.Min(arr.Shape[1], model.TotalTokens)} for {codesPath} of width {arr.Shape[1]}");
        var sw = Stopwatch.StartNew();
        long n = arr.Shape[0];
        using var writer = new ImageOutputs(output, outFloat, n);
        for (long s = 0; s < n; s += batch)
        {
            using var scope = NewDisposeScope();
            var x = model.Decode(all.narrow(0, s, Math.Min(batch, n - s)), tokens).cpu();
            writer.Append(x);
        }
        writer.Commit();
        log.WriteLine($"decoded {n} x K={tokens} → {output}{(outFloat != null ? " and " + outFloat : "")} in {sw.Elapsed.TotalSeconds:F1}s ({n / sw.Elapsed.TotalSeconds:F2} img/s)");
        return 0;
    }

    public static int RunReconstruct(string config, string checkpoint, string images, int tokens, string? output, string? outFloat,
        string? grid, string device, int batch, string prefer, TextWriter log)
    {
        using var model = LoadModel(config, checkpoint, device, prefer, log);
        if (tokens < 1 || tokens > model.TotalTokens) throw new ArgumentException($"--tokens {tokens} is outside 1..{model.TotalTokens}");
        long n = CountImages(images);
        var sw = Stopwatch.StartNew();
        using var writer = output != null || outFloat != null ? new ImageOutputs(output, outFloat, n) : null;
        List<Tensor> gridOrig = new(), gridRec = new();
        double mseSum = 0, psnrSum = 0;
        foreach (var u8 in ReadImages(images, batch))
        {
            using var scope = NewDisposeScope();
            var codes = model.Encode(ReTokTokenizer.ImagesFromUint8(u8));
            var x = model.Decode(codes, tokens).cpu();
            writer?.Append(x);
            var rec = ReTokTokenizer.ImagesToUint8(x);
            var mse = (rec.to(ScalarType.Float64) - u8.to(ScalarType.Float64)).pow(2).mean(new long[] { 1, 2, 3 });
            mseSum += mse.sum().item<double>();
            psnrSum += (10 * torch.log10(255.0 * 255.0 / mse.clamp_min(1e-10))).sum().item<double>();
            for (int i = 0; i < u8.shape[0] && gridOrig.Count < 8; i++)
            {
                gridOrig.Add(u8[i].unsqueeze(0).MoveToOuterDisposeScope());
                gridRec.Add(rec[i].unsqueeze(0).MoveToOuterDisposeScope());
            }
            u8.Dispose();
        }
        writer?.Commit();
        // Originals on the first row, reconstructions below.
        if (grid != null) ImageGrid.Save(grid, torch.cat(gridOrig.Concat(gridRec).ToArray()), nrow: gridOrig.Count);
        log.WriteLine(FormattableString.Invariant(
            $"reconstructed {n} images at K={tokens} in {sw.Elapsed.TotalSeconds:F1}s: PSNR {psnrSum / n:F3} dB (uint8, mean over images), MSE {mseSum / n:F3}")
            + (grid != null ? $"; grid → {grid}" : ""));
        return 0;
    }

    public static int RunBench(string config, int batch, int iters, int tokens, string device, TextWriter log) =>
        TokenizerBench.Run(LoadConfig(config), batch, iters, tokens, device, log);

    // ------------------------------------------------------------------ image files

    /// <summary>
    /// --images: an .npz (arr_0 uint8 [N,256,256,3]), a folder of such .npz files, or else a folder of images (PNG/JPEG/...,
    /// listed like torchvision's ImageFolder or flat by name) decoded as PIL convert('RGB') and ADM centre-cropped to 256.
    /// </summary>
    sealed record ImageSource(IReadOnlyList<string> Npz, ImageFolderListing? Folder);

    static ImageSource Source(string path)
    {
        if (File.Exists(path))
        {
            if (!path.EndsWith(".npz", StringComparison.OrdinalIgnoreCase))
                throw new ArgumentException($"--images {path}: expected an .npz (arr_0 uint8 [N,256,256,3]), a folder of .npz files or a folder of images");
            return new([path], null);
        }
        if (!Directory.Exists(path)) throw new FileNotFoundException($"--images {path} does not exist", path);
        var npz = Directory.GetFiles(path, "*.npz").Order(StringComparer.Ordinal).ToList();
        if (npz.Count > 0) return new(npz, null);
        try { return new([], ImageFolder.List(path)); }
        catch (InvalidDataException e) { throw new ArgumentException($"--images {path}: folder has neither .npz files nor images ({e.Message})", e); }
    }

    static long CountImages(string path)
    {
        var src = Source(path);
        if (src.Folder is { } l) return l.Count;
        return src.Npz.Sum(f =>
        {
            var h = Npz.Header(f, "arr_0");
            if (h.Dtype != "|u1" || h.Shape.Length != 4 || h.Shape[1] != 256 || h.Shape[2] != 256 || h.Shape[3] != 3)
                throw new InvalidDataException($"{f}: arr_0 must be uint8 [N,256,256,3], got {h.Dtype} [{string.Join(",", h.Shape)}]");
            return h.Shape[0];
        });
    }

    static IEnumerable<Tensor> ReadImages(string path, int batch)
    {
        if (batch < 1) throw new ArgumentException("--batch-size must be ≥ 1");
        var src = Source(path);
        if (src.Folder is { } l)
        {
            foreach (var (_, b) in ImageFolder.Batches(l, 256, batch)) yield return b;
            yield break;
        }
        foreach (var f in src.Npz)
            foreach (var (_, chunk) in Npz.ReadRows(f, "arr_0", batch))
                yield return chunk.ToTensor();
    }

    /// <summary>uint8 .npz (arr_0) and optional float32 .npy, both streamed batch by batch.</summary>
    sealed class ImageOutputs : IDisposable
    {
        readonly NpzStreamWriter? npz;
        readonly FileStream? raw;
        readonly string? rawPath, rawTmp;

        public ImageOutputs(string? npzPath, string? floatPath, long n)
        {
            if (npzPath != null)
            {
                npz = new NpzStreamWriter(npzPath);
                npz.BeginArray("arr_0", "|u1", new[] { n, 256L, 256, 3 });
            }
            if (floatPath != null)
            {
                rawPath = Path.GetFullPath(floatPath);
                Directory.CreateDirectory(Path.GetDirectoryName(rawPath)!);
                rawTmp = rawPath + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
                raw = new FileStream(rawTmp, FileMode.CreateNew);
                Npy.WriteHeader(raw, "<f4", new[] { n, 3L, 256, 256 });
            }
        }

        public void Append(Tensor x)
        {
            npz?.Append(ReTokTokenizer.ImagesToUint8(x).bytes);
            raw?.Write(x.to(ScalarType.Float32).contiguous().bytes);
        }

        public void Commit()
        {
            npz?.Commit();
            if (raw != null) { raw.Flush(true); raw.Dispose(); File.Move(rawTmp!, rawPath!, overwrite: true); }
        }

        public void Dispose()
        {
            npz?.Dispose();
            if (raw != null && File.Exists(rawTmp!)) { raw.Dispose(); File.Delete(rawTmp!); }
        }
    }
}

using System.Security.Cryptography;
using System.Text.Json;

namespace ReTok.Evaluation.Weights;

/// <summary>
/// An external file the evaluation needs. Hashes: torch-hub file names carry the first 8 hex digits of the file's sha256
/// (<see cref="Sha256Prefix"/>); the LPIPS heads are identified by the MD5 taming-transformers checks.
/// <see cref="Source"/> is text for the user; nothing here downloads.
/// </summary>
public sealed record WeightsEntry(string Name, string FileName, string Purpose, string Source,
    string? Sha256Prefix = null, string? Md5 = null, string[]? AltFileNames = null);

public sealed class MissingWeightsException : FileNotFoundException
{
    public MissingWeightsException(string message, string fileName) : base(message, fileName) { }
}

/// <summary>
/// The weights folder: $RETOK_HOME/weights (RETOK_HOME defaults to ./.state, as the tracking settings) or an explicit
/// --weights-dir. <c>retok weights import</c> copies files in and records their sha256 in <c>weights.json</c>.
/// </summary>
public static class WeightsRegistry
{
    public static readonly IReadOnlyList<WeightsEntry> Known = new[]
    {
        new WeightsEntry("inception", "pt_inception-2015-12-05-6726825d.pth",
            "FID Inception-v3 (TF inception-2015-12-05 graph) for FID/sFID/IS/precision/recall",
            "pytorch-fid release 'fid_weights': https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
            Sha256Prefix: "6726825d", AltFileNames: new[] { "pt_inception-2015-12-05-6726825d.safetensors", "weights-inception-2015-12-05-6726825d.pth" }),
        new WeightsEntry("vgg16", "vgg16-397923af.pth",
            "torchvision VGG16 ImageNet weights (LPIPS backbone)",
            "torchvision: https://download.pytorch.org/models/vgg16-397923af.pth",
            Sha256Prefix: "397923af", AltFileNames: new[] { "vgg16-397923af.safetensors" }),
        new WeightsEntry("lpips-vgg", "vgg.pth",
            "LPIPS v0.1 linear heads for VGG (lin0..lin4)",
            "taming-transformers: https://heibox.uni-heidelberg.de/f/607503859c864bc1b30b/?dl=1 (also lpips/weights/v0.1/vgg.pth in richzhang/PerceptualSimilarity)",
            Md5: "d507d7349b931f0638a25a48a722f98a", AltFileNames: new[] { "lpips_vgg.pth" }),
        new WeightsEntry("dinov2-vitb14", "dinov2_vitb14_pretrain.pth",
            "DINOv2 ViT-B/14 (no registers): the frozen teacher of the tokenizer's semantic loss (train-tokenizer)",
            "torch.hub facebookresearch/dinov2 dinov2_vitb14: https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
            AltFileNames: new[] { "dinov2_vitb14_pretrain.safetensors" }),
        new WeightsEntry("adm-ref-imagenet256", "VIRTUAL_imagenet256_labeled.npz",
            "ADM ImageNet 256 reference batch (gFID: mu/sigma/mu_s/sigma_s of the train set + 10k images for precision/recall)",
            "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz"),
    };

    public const string ManifestName = "weights.json";

    public static string DefaultDir()
    {
        var home = Environment.GetEnvironmentVariable("RETOK_HOME") ?? ".state";
        return Path.GetFullPath(Path.Combine(home, "weights"));
    }

    public static WeightsEntry Entry(string name) =>
        Known.FirstOrDefault(e => e.Name == name || e.FileName == name || (e.AltFileNames?.Contains(name) ?? false))
        ?? throw new ArgumentException($"unknown weights '{name}' (known: {string.Join(", ", Known.Select(k => k.Name))})");

    /// <summary>Path of a known weights file in the folder; a missing one throws naming the file and where to get it.</summary>
    public static string Resolve(string name, string? weightsDir = null)
    {
        var e = Entry(name);
        var dir = weightsDir ?? DefaultDir();
        foreach (var f in new[] { e.FileName }.Concat(e.AltFileNames ?? Array.Empty<string>()))
        {
            var p = Path.Combine(dir, f);
            if (File.Exists(p)) return p;
        }
        throw new MissingWeightsException(
            $"weights '{e.Name}' not found: expected {Path.Combine(dir, e.FileName)} ({e.Purpose}). Get it from {e.Source}, " +
            $"then run `retok weights import <file>` (or pass the file path / --weights-dir).", Path.Combine(dir, e.FileName));
    }

    /// <summary>An explicit path wins; otherwise the registry entry in the weights folder.</summary>
    public static string ResolveOrPath(string? explicitPath, string name, string? weightsDir = null)
    {
        if (!string.IsNullOrEmpty(explicitPath))
        {
            if (!File.Exists(explicitPath)) throw new MissingWeightsException($"weights file not found: {explicitPath} ({Entry(name).Purpose}; get it from {Entry(name).Source})", explicitPath);
            return explicitPath;
        }
        return Resolve(name, weightsDir);
    }

    public static string Sha256(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    static string Md5(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(MD5.HashData(f));
    }

    /// <summary>Checks a file against the known hash of its entry; returns null when it matches (or nothing is known), else the reason.</summary>
    public static string? Verify(WeightsEntry e, string path, out string sha256)
    {
        sha256 = Sha256(path);
        if (e.Sha256Prefix is not null && !sha256.StartsWith(e.Sha256Prefix) && !path.EndsWith(".safetensors"))
            return $"sha256 {sha256} does not start with {e.Sha256Prefix} (the hash in the released file name)";
        if (e.Md5 is not null && Md5(path) is var md5 && md5 != e.Md5)
            return $"md5 {md5} differs from the published {e.Md5}";
        return null;
    }

    public sealed record ManifestItem(string Name, string File, string Sha256, string ImportedFrom, DateTime ImportedUtc, bool Verified);

    public static List<ManifestItem> ReadManifest(string dir)
    {
        var p = Path.Combine(dir, ManifestName);
        return File.Exists(p) ? JsonSerializer.Deserialize<List<ManifestItem>>(File.ReadAllText(p)) ?? new() : new();
    }

    /// <summary>Copies <paramref name="file"/> into the weights folder under its registry name, verifying the known hash (unless forced) and recording its sha256.</summary>
    public static ManifestItem Import(string file, string? weightsDir = null, string? asName = null, bool force = false)
    {
        if (!File.Exists(file)) throw new FileNotFoundException($"file to import not found: {file}", file);
        var e = Entry(asName ?? Path.GetFileName(file));
        var why = Verify(e, file, out var sha);
        if (why is not null && !force) throw new InvalidDataException($"{file}: {why}; refusing to import as '{e.Name}' (use --force to import anyway)");
        var dir = weightsDir ?? DefaultDir();
        Directory.CreateDirectory(dir);
        var targetName = file.EndsWith(".safetensors") ? Path.ChangeExtension(e.FileName, ".safetensors") : e.FileName;
        var target = Path.Combine(dir, targetName);
        ReTok.Models.IO.AtomicFile.Write(target, s => { using var src = File.OpenRead(file); src.CopyTo(s); });
        var item = new ManifestItem(e.Name, targetName, sha, Path.GetFullPath(file), DateTime.UtcNow, why is null);
        var manifest = ReadManifest(dir).Where(m => m.File != targetName).Append(item).ToList();
        ReTok.Models.IO.AtomicFile.Write(Path.Combine(dir, ManifestName),
            s => JsonSerializer.Serialize(s, manifest, new JsonSerializerOptions { WriteIndented = true }));
        return item;
    }
}

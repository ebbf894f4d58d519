// Strict loading/saving of GPT weights: files are read by the shared ReTok.Models.IO.Checkpoint reader (.safetensors,
// .pt with nested {"model": ...}); this file adds the reference's prefix stripping and a strict name+shape check.
using System.Collections;
using ReTok.Models.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.Generation;

public static class GptCheckpoint
{
    /// <summary>Keys under which train_c2i.py / the sampler find the GPT weights, in the sampler's order (generator.md 1.6).</summary>
    public static readonly string[] ModelKeys = { "model", "module", "state_dict" };

    /// <summary>
    /// Reads a state dict from .safetensors, or from a PyTorch .pt/.pth holding a plain state dict or one nested under
    /// "model"/"module"/"state_dict" (the restricted unpickler leaves argparse.Namespace "args" and optimizer state inert).
    /// </summary>
    public static Dictionary<string, Tensor> Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"GPT checkpoint '{path}' does not exist", path);
        // one reader for every PyTorch file (IO/Checkpoint.cs): "model" first as in sample_c2i.py; args/optimizer are inert
        try { return Checkpoint.Load(path, prefer: "model"); }
        catch (Exception e) when (e is not FileNotFoundException)
        {
            throw new InvalidDataException($"cannot read GPT checkpoint '{path}': {e.Message}", e);
        }
    }

    /// <summary>torch.compile / DDP prefixes the reference strips before saving (train_c2i.py:554-557).</summary>
    public static Dictionary<string, Tensor> StripPrefixes(Dictionary<string, Tensor> sd) =>
        sd.ToDictionary(kv => kv.Key.StartsWith("_orig_mod.") ? kv.Key["_orig_mod.".Length..] : kv.Key.StartsWith("module.") ? kv.Key["module.".Length..] : kv.Key, kv => kv.Value);

    /// <summary>
    /// Strict load: every model key present with the same shape, no extra keys (KV-cache buffers of a reference model
    /// that ran setup_caches are ignored). Values are converted to the parameter's dtype/device. Errors name source and key.
    /// </summary>
    public static void LoadStrict(Gpt model, IReadOnlyDictionary<string, Tensor> sd, string source)
    {
        var own = LoadStrictShapes(model, sd, source);
        using var _ = no_grad();
        foreach (var (k, p) in own) p.copy_(sd[k].to(p.dtype, p.device));
    }

    /// <summary>The name and shape half of <see cref="LoadStrict"/> (works on a model built on the meta device).</summary>
    public static Dictionary<string, Tensor> LoadStrictShapes(Gpt model, IReadOnlyDictionary<string, Tensor> sd, string source)
    {
        var own = model.state_dict();
        var extra = sd.Keys.Where(k => !own.ContainsKey(k) && !k.Contains(".kv_cache.")).ToList();
        var missing = own.Keys.Where(k => !sd.ContainsKey(k)).ToList();
        if (missing.Count > 0 || extra.Count > 0)
            throw new InvalidDataException($"'{source}' does not match the GPT ({model.Config.NLayer} layers, dim {model.Config.Dim}): " +
                (missing.Count > 0 ? $"missing {missing.Count} key(s) [{string.Join(", ", missing.Take(8))}{(missing.Count > 8 ? ", ..." : "")}]" : "") +
                (missing.Count > 0 && extra.Count > 0 ? "; " : "") +
                (extra.Count > 0 ? $"unexpected {extra.Count} key(s) [{string.Join(", ", extra.Take(8))}{(extra.Count > 8 ? ", ..." : "")}]" : ""));
        foreach (var (k, p) in own)
        {
            var t = sd[k];
            if (!t.shape.SequenceEqual(p.shape))
                throw new InvalidDataException($"'{source}': '{k}' has shape [{string.Join(",", t.shape)}], the model expects [{string.Join(",", p.shape)}]");
        }
        return own;
    }

    public static Gpt Load(GptConfig config, string path, Device? device = null)
    {
        var model = new Gpt(config, device: device ?? CPU);
        LoadStrict(model, StripPrefixes(Read(path)), path);
        return model;
    }

    /// <summary>Infers (dim, n_layer, vocab, block_size, classes) from a state dict; n_head is not stored and must be given (presets know it).</summary>
    public static GptConfig InferConfig(IReadOnlyDictionary<string, Tensor> sd, int nHead, string source)
    {
        Tensor Need(string k) => sd.TryGetValue(k, out var t) ? t : throw new InvalidDataException($"'{source}' has no '{k}': not a c2i GPT state dict (learned positions)");
        var pos = Need("positional_embedding");
        var tok = Need("tok_embeddings.weight");
        var cls = Need("cls_embedding.embedding_table.weight");
        int layers = sd.Keys.Where(k => k.StartsWith("layers.")).Select(k => int.Parse(k.Split('.')[1])).DefaultIfEmpty(-1).Max() + 1;
        int dim = (int)pos.shape[1];
        var cfg = new GptConfig(dim, layers, nHead, VocabSize: (int)tok.shape[0], BlockSize: (int)pos.shape[0] - GptConfig.ClsTokenNum,
            NumClasses: (int)cls.shape[0] - 1);
        var w1 = Need("layers.0.feed_forward.w1.weight");
        if (w1.shape[0] != cfg.FfnHidden)
            throw new InvalidDataException($"'{source}': FFN width {w1.shape[0]} is not find_multiple(int(8*{dim}/3), 256) = {cfg.FfnHidden}");
        return cfg;
    }

    public static void SaveSafetensors(Gpt model, string path)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        var tmp = path + ".tmp";
        TorchSharp.PyBridge.Safetensors.SaveStateDict(tmp, model.state_dict());
        File.Move(tmp, path, overwrite: true);
    }
}

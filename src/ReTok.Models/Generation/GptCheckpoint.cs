// GPT weights: files are read, written and strictly loaded by ReTok.Models.IO.StateDictFile; this file adds what is
// GPT-specific: the sampler's key order, the reference's prefix stripping, the ignored KV caches and config inference.
using ReTok.Models.IO;
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
    public static Dictionary<string, Tensor> Read(string path) => StateDictFile.Read(path, prefer: "model");   // "model" first as in sample_c2i.py

    /// <summary>torch.compile / DDP prefixes the reference strips before saving (train_c2i.py:554-557).</summary>
    public static Dictionary<string, Tensor> StripPrefixes(Dictionary<string, Tensor> sd) =>
        sd.ToDictionary(kv => kv.Key.StartsWith("_orig_mod.") ? kv.Key["_orig_mod.".Length..] : kv.Key.StartsWith("module.") ? kv.Key["module.".Length..] : kv.Key, kv => kv.Value);

    /// <summary>
    /// Strict load (StateDictFile.LoadInto): every model key present with the same shape, no extra keys (KV-cache
    /// buffers of a reference model that ran setup_caches are ignored). Values are converted to the parameter's
    /// dtype/device. One error lists every missing, unexpected and mis-shaped key and names the source.
    /// </summary>
    public static void LoadStrict(Gpt model, IReadOnlyDictionary<string, Tensor> sd, string source)
        => StateDictFile.LoadInto(model, sd, source, mayBeUnexpected: IsKvCache);

    /// <summary>The name and shape half of <see cref="LoadStrict"/> (works on a model built on the meta device).</summary>
    public static Dictionary<string, Tensor> LoadStrictShapes(Gpt model, IReadOnlyDictionary<string, Tensor> sd, string source)
        => StateDictFile.CheckFits(model, sd, source, mayBeUnexpected: IsKvCache);

    static bool IsKvCache(string key) => key.Contains(".kv_cache.");

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

    /// <summary>Atomic .safetensors write of the model's state dict.</summary>
    public static void SaveSafetensors(Gpt model, string path) => StateDictFile.WriteSafetensors(path, model.state_dict());
}

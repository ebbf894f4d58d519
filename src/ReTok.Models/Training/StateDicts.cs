using System.Collections;
using ReTok.Models.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.Training;

/// <summary>
/// State-dict files for the training area: reads through the shared reader IO/Checkpoint (.safetensors, PyTorch zip
/// files such as dinov2_vitb14_pretrain.pth); writes .safetensors atomically.
/// </summary>
public static class StateDicts
{
    public static Dictionary<string, Tensor> Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"state dict file not found: {path}", path);
        try { return Checkpoint.Load(path, prefer: "model"); }
        catch (Exception ex) when (ex is not FileNotFoundException)
        {
            throw new InvalidDataException($"{path}: cannot read a state dict ({ex.Message})", ex);
        }
    }

    /// <summary>Atomic .safetensors write (temp file + rename).</summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> stateDict)
    {
        var cpu = stateDict.ToDictionary(kv => kv.Key, kv => kv.Value.detach().cpu().contiguous());
        var tmp = path + ".tmp";
        TorchSharp.PyBridge.Safetensors.SaveStateDict(tmp, cpu);
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Copy into a module by name; missing/unexpected/mis-shaped keys throw naming the file and key.</summary>
    public static void LoadInto(nn.Module module, IReadOnlyDictionary<string, Tensor> sd, string source)
    {
        using var _ = no_grad();
        var own = module.state_dict();
        var unexpected = sd.Keys.Where(k => !own.ContainsKey(k)).ToList();
        if (unexpected.Count > 0) throw new InvalidDataException($"{source}: unexpected keys: {string.Join(", ", unexpected.Take(10))}");
        foreach (var (key, dst) in own)
        {
            if (!sd.TryGetValue(key, out var src)) throw new InvalidDataException($"{source}: missing key '{key}'");
            if (!src.shape.SequenceEqual(dst.shape))
                throw new InvalidDataException($"{source}: '{key}' has shape [{string.Join(",", src.shape)}], expected [{string.Join(",", dst.shape)}]");
            dst.copy_(src.to(dst.dtype).to(dst.device));
        }
    }
}

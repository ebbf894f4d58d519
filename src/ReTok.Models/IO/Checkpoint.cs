using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.IO;

/// <summary>Transitional forwarders to <see cref="StateDictFile"/> while callers move; removed once none is left.</summary>
public static class Checkpoint
{
    public static Dictionary<string, Tensor> Load(string path, string prefer = "ema") => StateDictFile.Read(path, prefer);
    public static CheckpointInfo Describe(string path, string prefer = "ema") => StateDictFile.Describe(path, prefer);
    public static void SaveSafetensors(string path, IReadOnlyDictionary<string, Tensor> sd, IReadOnlyDictionary<string, string>? metadata = null)
        => StateDictFile.WriteSafetensors(path, sd, metadata);
    public static void LoadInto(nn.Module m, IEnumerable<KeyValuePair<string, Tensor>> stateDict, string source, Func<string, bool>? mayBeMissing = null)
        => StateDictFile.LoadInto(m, stateDict, source, mayBeMissing);
}

using ReTok.Models.Dinov2;
using ReTok.Models.IO;
using ReTok.Tests.Engine;
using static TorchSharp.torch;

namespace ReTok.Tests.Kinds.Support;

/// <summary>
/// The worker-process environment (<see cref="EngineEnvironment"/>: database, artifact folder, real `retok worker`
/// processes with short engine intervals) for the train-tokenizer job tests, plus the tiny semantic teacher's weights
/// and a 240 s default wait (a training run takes minutes on a shared CPU).
/// </summary>
public sealed class TrainJobEnvironment() : EngineEnvironment("retok-jobs-train", waitSeconds: 240)
{
    public override async Task InitializeAsync()
    {
        await base.InitializeAsync();
        TeacherWeights = Path.Combine(Root, "tiny_teacher.safetensors");
        WriteTinyTeacher(TeacherWeights);
    }

    /// <summary>A 1-layer 32-dim DINOv2 (16x16 grid) with sin-formula weights, as the semantic teacher of the tiny tokenizer.</summary>
    public string TeacherWeights { get; private set; } = "";

    static void WriteTinyTeacher(string path)
    {
        using var m = new DinoVisionTransformer(new Dinov2Config(ImgSize: 224, EmbedDim: 32, Depth: 1, NumHeads: 2));
        var sd = new Dictionary<string, Tensor>();
        int j = 0;
        foreach (var (k, v) in m.state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var s = sin(arange(v.numel(), dtype: float64) * 0.37 + 0.5 * j++).reshape(v.shape);
            sd[k] = (k.Contains("norm") && k.EndsWith(".weight") ? 1 + 0.1 * s : k.EndsWith(".bias") ? 0.02 * s
                : k.EndsWith(".gamma") ? 0.1 + 0.05 * s : s * (v.dim() > 1 ? 1.0 / Math.Sqrt(v.numel() / v.shape[0]) : 0.05)).to(float32);
        }
        StateDictFile.WriteSafetensors(path, sd);
    }
}

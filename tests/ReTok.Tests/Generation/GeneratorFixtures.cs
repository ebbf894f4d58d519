using System.Text.Json;
using ReTok.Models.Generation;
using ReTok.Models.IO;
using static TorchSharp.torch;

namespace ReTok.Tests.Generation;

/// <summary>Fixtures written by tests/fixtures/gen/generator.py from the authors' gpt_1d.py / generate.py / train_c2i.py.</summary>
public static class GeneratorFixtures
{
    public static string Dir => Path.Combine(AppContext.BaseDirectory, "fixtures", "generator");
    public static string File(string name) => Path.Combine(Dir, name);

    public static Dictionary<string, NpyArray> Npz(string name) => ReTok.Models.IO.Npz.Load(File(name));
    public static Tensor T(this Dictionary<string, NpyArray> d, string key) => d[key].ToTensor();

    /// <summary>The tiny config of the gen script (dim 64, 2 layers, 4 heads, vocab 128, block 16, 10 classes), dropouts given.</summary>
    public static GptConfig TinyConfig(double dropout = 0.0)
    {
        using var doc = JsonDocument.Parse(System.IO.File.ReadAllText(File("tiny_config.json")));
        var r = doc.RootElement;
        return new GptConfig(r.GetProperty("dim").GetInt32(), r.GetProperty("n_layer").GetInt32(), r.GetProperty("n_head").GetInt32(),
            VocabSize: r.GetProperty("vocab_size").GetInt32(), BlockSize: r.GetProperty("block_size").GetInt32(),
            NumClasses: r.GetProperty("num_classes").GetInt32(), TokenDropoutP: dropout, ResidDropoutP: dropout, FfnDropoutP: dropout);
    }

    public static Gpt TinyModel(double dropout = 0.0) => GptCheckpoint.Load(TinyConfig(dropout), File("tiny.safetensors"));

    public static float MaxAbsDiff(Tensor a, Tensor b) => (a.to_type(float32) - b.to_type(float32)).abs().max().item<float>();
}

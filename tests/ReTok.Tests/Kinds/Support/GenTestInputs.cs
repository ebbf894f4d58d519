using ReTok.Models.Generation;
using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using ReTok.Tracking;
using static TorchSharp.torch;

namespace ReTok.Tests.Kinds.Support;

/// <summary>
/// Test-made inputs of the generator job tests, stored as artifacts of one "import" run: the tiny tokenizer
/// (fixtures/tokenizer/tiny.yaml, random init, seed 7), `images` random uint8 images with labels, a tiny GPT (dim 32,
/// 1 layer, block 8, 4 classes) whose zero-initialised output head is replaced by N(0, 0.5) so that the CFG scale
/// changes the samples, random codes for training, and optionally formula Inception weights in a weights folder.
/// </summary>
public sealed class GenTestInputs
{
    public required long RunId { get; init; }
    public required string WeightsDir { get; init; }
    public string Ref(string name) => $"run:{RunId}/{name}";

    public static readonly GptConfig Gpt = new(Dim: 32, NLayer: 1, NHead: 2, VocabSize: 16384, BlockSize: 8, NumClasses: 4);

    public Dictionary<string, string> SampleInputs() => new()
    {
        ["generator"] = Ref("generator.safetensors"), ["generator_config"] = Ref("generator.yaml"),
        ["tokenizer"] = Ref("tokenizer.safetensors"), ["tokenizer_config"] = Ref("tokenizer.yaml"), ["reference"] = Ref("dataset.npz"),
    };

    public static async Task<GenTestInputs> CreateAsync(Tracker t, string root, int images, bool inceptionWeights)
    {
        var dir = Directory.CreateDirectory(Path.Combine(root, "inputs")).FullName;
        File.Copy(Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenizer", "tiny.yaml"), Path.Combine(dir, "tokenizer.yaml"), true);
        manual_seed(7); // the tokenizer's init draws from the default generator
        using (var tok = new ReTokTokenizer(TokenizerConfig.Load(Path.Combine(dir, "tokenizer.yaml"))))
            StateDictFile.WriteSafetensors(Path.Combine(dir, "tokenizer.safetensors"), tok.state_dict());
        using (var g = new Generator(3))
            Npz.Save(Path.Combine(dir, "dataset.npz"), new Dictionary<string, NpyArray>
            {
                ["arr_0"] = NpyArray.FromTensor(randint(0, 256, new long[] { images, 256, 256, 3 }, ScalarType.Byte, generator: g)),
                ["labels"] = NpyArray.FromTensor(arange(images, int64) % Gpt.NumClasses),
            });
        using (var g = new Generator(5))
        using (var gpt = new Gpt(Gpt, g, CPU))
        {
            using (no_grad()) gpt.output.weight.copy_(randn(gpt.output.weight.shape, generator: g) * 0.5);
            GptCheckpoint.SaveSafetensors(gpt, Path.Combine(dir, "generator.safetensors"));
        }
        File.WriteAllText(Path.Combine(dir, "generator.yaml"), GeneratorYaml.Write(Gpt));
        using (var g = new Generator(9))
            Npz.Save(Path.Combine(dir, "codes.npz"), new Dictionary<string, NpyArray>
            {
                ["codes"] = NpyArray.FromTensor(randint(0, Gpt.VocabSize, new long[] { 6, Gpt.BlockSize }, int64, generator: g)),
                ["labels"] = NpyArray.FromTensor(randint(0, Gpt.NumClasses, new long[] { 6 }, int64, generator: g)),
            });
        var weights = Directory.CreateDirectory(Path.Combine(root, "weights")).FullName;
        if (inceptionWeights)
            using (var inc = ReTok.Tests.Evaluation.InceptionTests.FormulaInception()) // safetensors: faster to load than the .pth pickle
                StateDictFile.WriteSafetensors(Path.Combine(weights, "pt_inception-2015-12-05-6726825d.safetensors"), inc.state_dict());
        var src = await t.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        foreach (var f in new[] { "tokenizer.yaml", "tokenizer.safetensors", "dataset.npz", "generator.safetensors", "generator.yaml", "codes.npz" })
            await t.SaveArtifactFileAsync(src.Id, f, Path.Combine(dir, f));
        return new GenTestInputs { RunId = src.Id, WeightsDir = weights };
    }
}

using System.Text.Json;
using ReTok.Models.Generation;
using static ReTok.Tests.Generation.GeneratorFixtures;
using static TorchSharp.torch;
using Generator = TorchSharp.torch.Generator;

namespace ReTok.Tests.Generation;

public class GptModelTests
{
    [Theory]
    [InlineData("GPT-B")]
    [InlineData("GPT-XL")]
    public void StateDictNamesShapesAndCountMatchReference(string preset)
    {
        using var doc = JsonDocument.Parse(System.IO.File.ReadAllText(File("state_dict_names.json")));
        var r = doc.RootElement.GetProperty(preset);
        var expected = r.GetProperty("state_dict").EnumerateArray()
            .ToDictionary(e => e[0].GetString()!, e => e[1].EnumerateArray().Select(x => x.GetInt64()).ToArray());
        var cfg = GptConfig.Preset(preset);
        using var model = new Gpt(cfg, device: META); // shapes only, no memory
        var own = model.state_dict();
        Assert.Equal(expected.Keys.OrderBy(k => k), own.Keys.OrderBy(k => k));
        foreach (var (k, shape) in expected) Assert.True(shape.SequenceEqual(own[k].shape), $"{k}: [{string.Join(",", own[k].shape)}]");
        long count = r.GetProperty("params").GetInt64();
        Assert.Equal(count, own.Values.Sum(t => t.numel()));
        Assert.Equal(count, cfg.ParameterCount);
    }

    [Fact]
    public void PresetTableMatchesSpec()
    {
        // generator.md 1.2: (layers, heads, dim, ffn hidden, params)
        Assert.Equal((12, 12, 768, 2048, 111_085_824L), Row(GptConfig.B));
        Assert.Equal((24, 16, 1024, 2816, 343_174_144L), Row(GptConfig.L));
        Assert.Equal((36, 20, 1280, 3584, 775_028_480L), Row(GptConfig.XL));
        Assert.Equal(1_411_367_424L, GptConfig.Preset("GPT-XXL").ParameterCount);
        Assert.Throws<ArgumentException>(() => GptConfig.Preset("GPT-Z"));
        static (int, int, int, int, long) Row(GptConfig c) => (c.NLayer, c.NHead, c.Dim, c.FfnHidden, c.ParameterCount);
    }

    [Fact]
    public void FullForwardLogitsAndLossMatchReference()
    {
        using var scope = NewDisposeScope();
        var f = Npz("forward.npz");
        using var model = TinyModel();
        model.eval();
        using var _ = no_grad();
        var z = f.T("codes");
        var (logits, loss) = model.forward(z.narrow(1, 0, z.shape[1] - 1), f.T("labels"), targets: z);
        Assert.Equal(new long[] { 3, 16, 128 }, logits.shape);
        Assert.True(MaxAbsDiff(logits, f.T("logits")) < 1e-4, $"logits max diff {MaxAbsDiff(logits, f.T("logits"))}");
        Assert.Equal(f.T("loss").item<float>(), loss!.item<float>(), 1e-4);
    }

    [Fact]
    public void KvCacheDecodeMatchesFullForwardAndReferenceCache()
    {
        using var scope = NewDisposeScope();
        var f = Npz("forward.npz");
        using var model = TinyModel();
        model.eval();
        using var _ = no_grad();
        var z = f.T("codes");
        var labels = f.T("labels");
        var (full, _) = model.forward(z.narrow(1, 0, z.shape[1] - 1), labels);
        using var cache = model.NewCache(3, 17);
        var steps = new List<Tensor> { model.Prefill(labels, cache) };
        for (int t = 0; t < 15; t++) steps.Add(model.Decode(z.narrow(1, t, 1), t + 1, cache));
        var cached = cat(steps, 1);
        Assert.True(MaxAbsDiff(cached, full) < 1e-4, $"cached vs full {MaxAbsDiff(cached, full)}");
        Assert.True(MaxAbsDiff(cached, f.T("cached_logits")) < 1e-4, $"cached vs reference {MaxAbsDiff(cached, f.T("cached_logits"))}");

        // a multi-token chunk through the cache (prefill class + 7 codes at once, then one by one) agrees too
        using var cache2 = model.NewCache(3, 17);
        var a = model.Prefill(labels, cache2);
        var b = model.Decode(z.narrow(1, 0, 7), 1, cache2);
        var c = model.Decode(z.narrow(1, 7, 8), 8, cache2);
        Assert.True(MaxAbsDiff(cat(new[] { a, b, c }, 1), full) < 1e-4);
    }

    [Fact]
    public void StrictLoadNamesMissingUnexpectedAndMisshapenKeys()
    {
        var sd = GptCheckpoint.Read(File("tiny.safetensors"));
        using var model = new Gpt(TinyConfig());
        var missing = new Dictionary<string, Tensor>(sd);
        missing.Remove("layers.1.ffn_norm.weight");
        var e1 = Assert.Throws<InvalidDataException>(() => GptCheckpoint.LoadStrict(model, missing, "x.safetensors"));
        Assert.Contains("layers.1.ffn_norm.weight", e1.Message);
        Assert.Contains("x.safetensors", e1.Message);
        var extra = new Dictionary<string, Tensor>(sd) { ["adaLN.1.weight"] = zeros(3) };
        Assert.Contains("adaLN.1.weight", Assert.Throws<InvalidDataException>(() => GptCheckpoint.LoadStrict(model, extra, "y")).Message);
        var bad = new Dictionary<string, Tensor>(sd) { ["positional_embedding"] = zeros(16, 64) };
        var e3 = Assert.Throws<InvalidDataException>(() => GptCheckpoint.LoadStrict(model, bad, "z"));
        Assert.Contains("positional_embedding", e3.Message);
        Assert.Contains("[17,64]", e3.Message);
        // a wrong n_head is not visible in shapes, but a wrong depth/width is
        Assert.Throws<InvalidDataException>(() => GptCheckpoint.LoadStrict(new Gpt(TinyConfig() with { NLayer = 3 }), sd, "w"));
        var inferred = GptCheckpoint.InferConfig(sd, 4, "tiny");
        Assert.Equal(TinyConfig() with { TokenDropoutP = 0.1, ResidDropoutP = 0.1, FfnDropoutP = 0.1 }, inferred);
    }

    [Theory]
    [InlineData("pt_plain.pt")]
    [InlineData("pt_nested.pt")]
    [InlineData("pt_nested_args.pt")]
    public void ReadsPyTorchStateDictsPlainAndNestedUnderModel(string file)
    {
        var sd = GptCheckpoint.Read(File(file));
        Assert.Equal(new[] { "norm.weight", "positional_embedding" }, sd.Keys.OrderBy(k => k, StringComparer.Ordinal));
        Assert.Equal(0f, MaxAbsDiff(sd["positional_embedding"], arange(6f).reshape(2, 3)));
    }

    [Fact]
    public void SafetensorsRoundTripIsExact()
    {
        using var model = TinyModel();
        var path = Path.Combine(Directory.CreateTempSubdirectory("gpt").FullName, "m.safetensors");
        GptCheckpoint.SaveSafetensors(model, path);
        using var back = GptCheckpoint.Load(TinyConfig(), path);
        foreach (var (k, t) in model.state_dict()) Assert.Equal(0f, MaxAbsDiff(t, back.state_dict()[k]));
    }

    [Fact]
    public void ReferenceInitialisationRules()
    {
        var cfg = new GptConfig(32, 2, 4, VocabSize: 4096, BlockSize: 256, NumClasses: 1000);
        using var m = new Gpt(cfg, new Generator(3));
        Assert.Equal(0f, m.output.weight!.abs().max().item<float>());
        Assert.Equal(1f, m.norm.weight.min().item<float>());
        Assert.Equal(0.02, m.tok_embeddings.weight!.std().item<float>(), 0.002);
        Assert.Equal(0.02, m.layers[1].feed_forward.w2.weight!.std().item<float>(), 0.002);
        Assert.Equal(Math.Pow(32, -0.5), m.positional_embedding.std().item<float>(), 0.01);
        Assert.Equal(1001, m.cls_embedding.embedding_table.weight!.shape[0]);
        using var m2 = new Gpt(cfg, new Generator(3));
        Assert.Equal(0f, MaxAbsDiff(m.tok_embeddings.weight!, m2.tok_embeddings.weight!));
    }

    [Fact]
    public void TrainingModeAppliesClassAndTokenDropout()
    {
        using var scope = NewDisposeScope();
        var f = Npz("forward.npz");
        var z = f.T("codes");
        var idx = z.narrow(1, 0, 15);
        using var model = TinyModel(dropout: 0.1);
        model.eval();
        var (ev, _) = model.forward(idx, f.T("labels"));
        var (ev2, _) = model.forward(idx, f.T("labels"));
        Assert.Equal(0f, MaxAbsDiff(ev, ev2));
        model.train();
        var (tr, _) = model.forward(idx, f.T("labels"));
        Assert.True(MaxAbsDiff(tr, ev) > 1e-3);

        // class dropout alone (embedding dropouts off): ~10% of rows get the null-class prefix logits
        using var noDrop = TinyModel();
        noDrop.train();
        noDrop.ClassDropGenerator = new Generator(11);
        var labels = full(2000, 3L, int64);
        var (cls, _) = noDrop.forward(zeros(2000, 0, int64), labels);
        noDrop.eval();
        var (c3, _) = noDrop.forward(zeros(1, 0, int64), tensor(new long[] { 3 }));
        var (cnull, _) = noDrop.forward(zeros(1, 0, int64), tensor(new long[] { 10 }));
        var isNull = (cls - cnull).abs().amax(new long[] { 1, 2 }) < 1e-5;
        var isCond = (cls - c3).abs().amax(new long[] { 1, 2 }) < 1e-5;
        Assert.True((isNull | isCond).all().item<bool>());
        double frac = isNull.to_type(float32).mean().item<float>();
        Assert.InRange(frac, 0.08, 0.12);
    }
}

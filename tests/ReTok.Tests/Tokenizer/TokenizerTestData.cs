using ReTok.Models.IO;
using ReTok.Models.Tokenizer;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Tests.Tokenizer;

/// <summary>Fixture paths, the reference outputs and the deterministic weight formula shared with tests/fixtures/gen/tokenizer.py.</summary>
public static class TokenizerTestData
{
    public static string Dir => Path.Combine(AppContext.BaseDirectory, "fixtures", "tokenizer");
    public static string F(string name) => Path.Combine(Dir, name);

    /// <summary>images.npz → float B x 3 x 256 x 256 in [-1, 1].</summary>
    public static Tensor Images(int count = 2) =>
        ReTokTokenizer.ImagesFromUint8(Npz.LoadKey(F("images.npz"), "arr_0").ToTensor()).narrow(0, 0, count);

    public static Dictionary<string, NpyArray> Ref(string name) => Npz.Load(F(name));

    /// <summary>A tokenizer YAML text in a fresh temp file (the config loader reads files).</summary>
    public static string Temp(string text)
    {
        var p = Path.Combine(Path.GetTempPath(), $"retok-cfg-{Guid.NewGuid():N}.yaml");
        File.WriteAllText(p, text);
        return p;
    }

    /// <summary>Loads a tokenizer config from YAML text (temp file removed).</summary>
    public static TokenizerConfig LoadConfigText(string text)
    {
        var p = Temp(text);
        try { return TokenizerConfig.Load(p); }
        finally { File.Delete(p); }
    }

    /// <summary>Largest |ours[::97] − ref_sub| and the relative difference of the full sums; the generator's subsample rule.</summary>
    public static (float MaxAbs, double SumRel) Compare(Tensor ours, Dictionary<string, NpyArray> r, string name)
    {
        var shape = r[name + "_shape"].As<long>();
        Assert.Equal(shape, ours.shape);
        var flat = ours.detach().cpu().reshape(-1);
        var sub = flat.slice(0, 0, flat.shape[0], 97);
        var refSub = torch.tensor(r[name + "_sub"].As<float>());
        Assert.Equal(refSub.shape, sub.shape);
        float maxAbs = (sub - refSub).abs().max().item<float>();
        double sum = flat.to(ScalarType.Float64).sum().item<double>(), refSum = r[name + "_sum"].As<double>()[0];
        double abs = r[name + "_abssum"].As<double>()[0];
        return (maxAbs, Math.Abs(sum - refSum) / abs);
    }

    // ------------------------------------------------------------------ formula weights (see the generator's docstring)

    public static uint Fnv1a(string s)
    {
        uint h = 0x811C9DC5;
        foreach (var b in System.Text.Encoding.UTF8.GetBytes(s)) h = unchecked((h ^ b) * 0x01000193u);
        return h;
    }

    static uint Fmix32(uint h)
    {
        unchecked
        {
            h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16;
        }
        return h;
    }

    public static float[] FormulaValues(string key, long[] shape)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        var v = new float[n];
        if (key.EndsWith("codebook_used")) return v;
        double offset = 0, scale;
        if (shape.Length == 1 && key.EndsWith(".weight")) (offset, scale) = (1.0, 0.1);
        else if (key.EndsWith("bias")) scale = 0.05;
        else if (key.Contains("positional_embedding")) scale = Math.Sqrt(3.0 / shape[^1]);
        else scale = Math.Sqrt(3.0 / shape.Skip(1).Aggregate(1L, (a, b) => a * b));
        uint seed = unchecked(Fnv1a(key) * 0x9E3779B9u);
        Parallel.For(0, (int)((n + 65535) / 65536), chunk =>
        {
            long end = Math.Min(n, (chunk + 1) * 65536L);
            for (long i = chunk * 65536L; i < end; i++)
            {
                double u = Fmix32(unchecked((uint)i + seed)) / 4294967296.0;
                v[i] = (float)(offset + scale * (2.0 * u - 1.0));
            }
        });
        return v;
    }

    /// <summary>Fills every parameter and buffer of the model with the formula values.</summary>
    public static void ApplyFormula(nn.Module m)
    {
        using var _ = torch.no_grad();
        foreach (var (k, t) in m.state_dict())
        {
            using var src = torch.tensor(FormulaValues(k, t.shape), t.shape);
            t.copy_(src);
        }
    }
}

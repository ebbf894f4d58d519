using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Jobs.Quickstart;
using ReTok.Models.IO;
using ReTok.Tests.Engine;
using ReTok.Tracking;

namespace ReTok.Tests.Kinds.Support;

/// <summary>Helpers shared by the evaluation-kind tests: test image folders, artifact downloads, checkpoint steps.</summary>
public static class EvalJobSupport
{
    /// <summary>A tiny tokenizer config (codebook 64, CNN ch 32, 1-layer ViTs of width 32).</summary>
    public const string TinyYaml = """
        # tiny random-init tokenizer for the evaluation-kind tests (reference keys + our ch/num_res_blocks/ViT-size extensions)
        model:
          model_cls: VQVitModelPlus
          init_args:
            codebook_size: 64
            codebook_embed_dim: 8
            encoder_ch_mult: [1, 1, 1, 1, 2]
            decoder_ch_mult: [1, 1, 1, 1, 2]
            model_size: null
            num_latent_tokens: 256
            z_channels: 32
            multi_level_query_init: True
            adaptive_gn: True
            d2s_up: True
            rot: True
            use_attn: False
            fea_rec_loss_type: "mse"
            distill_depth: null
            ch: 32
            num_res_blocks: 1
            encoder_width: 32
            encoder_layers: 1
            encoder_heads: 2
            decoder_width: 32
            decoder_layers: 1
            decoder_heads: 2
        """;

    public static string Fixture(params string[] parts) => Path.Combine([AppContext.BaseDirectory, "fixtures", .. parts]);

    /// <summary>
    /// 3 synthetic classes x 4 images (JPEG + PNG, odd sizes), plus in class 2 the evaluation fixtures' grey, CMYK,
    /// palette and RGBA images (converted like PIL), plus two corrupt files in class 1 (a truncated JPEG and text named .png).
    /// </summary>
    public static string MakeSource(string root)
    {
        var dir = Directory.CreateDirectory(Path.Combine(root, "source")).FullName;
        SyntheticDataset.Generate(dir, classes: 3, perClass: 4, seed: 7);
        var c1 = Path.Combine(dir, SyntheticDataset.ClassNames[1]);
        var c2 = Path.Combine(dir, SyntheticDataset.ClassNames[2]);
        foreach (var f in new[] { "c_260x1000_gray.png", "f_300x280_cmyk.jpg", "i_311x263_palette.png", "d_600x530_rgba.png" })
            File.Copy(Fixture("evaluation", "images", f), Path.Combine(c2, "x_" + f));
        var jpg = Directory.GetFiles(c1, "*.jpg").Order().First();
        var bytes = File.ReadAllBytes(jpg);
        File.WriteAllBytes(Path.Combine(c1, "n00000001_0100_corrupt.jpg"), bytes[..(bytes.Length * 2 / 5)]);
        File.WriteAllText(Path.Combine(c1, "n00000001_0101_corrupt.png"), "this is not a PNG");
        return dir;
    }

    /// <summary>Two codes.npz (extract-codes) hold the same keys with equal shapes and values; <paramref name="what"/> names the compared run.</summary>
    public static void AssertSameCodes(Dictionary<string, NpyArray> want, Dictionary<string, NpyArray> got, string what)
    {
        Assert.Equal(want.Keys.Order(StringComparer.Ordinal), got.Keys.Order(StringComparer.Ordinal));
        foreach (var key in want.Keys)
        {
            Assert.Equal(want[key].Shape, got[key].Shape);
            Assert.True(want[key].As<long>().SequenceEqual(got[key].As<long>()), $"{what}: {key} differs from the reference run's");
        }
    }

    public static async Task<string> DownloadAsync(Tracker t, long runId, string name, string dir)
    {
        var a = await t.GetArtifactAsync(runId, name) ?? throw new Xunit.Sdk.XunitException($"run {runId} has no artifact '{name}'");
        var path = Path.Combine(dir, $"{runId}-{name.Replace('/', '_')}");
        if (!File.Exists(path)) await t.DownloadArtifactAsync(a, path);
        return path;
    }

    public static async Task<string> ShaAsync(Tracker t, long runId, string name) =>
        (await t.GetArtifactAsync(runId, name) ?? throw new Xunit.Sdk.XunitException($"run {runId} has no artifact '{name}'")).Sha256;

    public static async Task<long> CheckpointStepAsync(Tracker t, long runId) =>
        await t.GetArtifactAsync(runId, RunCheckpoints.Latest) is { } a ? JsonNode.Parse(a.Metadata)!["step"]!.GetValue<long>() : -1;

    public static async Task<string> LogsAsync(Tracker t, long runId) =>
        string.Join("\n", (await t.GetLogsAsync(runId, limit: 100_000)).Select(l => $"{l.Level}: {l.Message}"));

    public static async Task<Run> SucceededAsync(EngineEnvironment env, long runId, int seconds = 120)
    {
        var r = await env.WaitTerminalAsync(runId, seconds);
        if (r.Status != RunStatus.Succeeded)
            throw new Xunit.Sdk.XunitException($"run {runId} ({r.Kind}) ended {r.Status}: {r.FailureReason}\n{await LogsAsync(env.Tracker, runId)}\n{env.WorkerLogs()}");
        return r;
    }
}

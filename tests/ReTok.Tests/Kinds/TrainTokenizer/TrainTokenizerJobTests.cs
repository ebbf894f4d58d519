using System.Diagnostics;
using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Jobs.Kinds.TrainTokenizer;
using ReTok.Models.Tokenizer;
using ReTok.Models.Training;
using ReTok.Tests.Kinds.Support;
using ReTok.Tracking;
using TorchSharp;
using Xunit.Abstractions;

namespace ReTok.Tests.Kinds.TrainTokenizer;

/// <summary>
/// `train-tokenizer` end to end with real `retok worker` processes on PostgreSQL: a run whose worker is SIGKILLed
/// mid-run resumes from its checkpoint on another worker and ends with weights byte-identical to an uninterrupted run
/// (and the same metric at every step); a NaN fails the run naming the step and the term, without retry, keeping the
/// last good checkpoint; a semantic loss without teacher weights fails with a clear message. Tiny tokenizer at 256 px,
/// 2 images, batch 1.
/// </summary>
public sealed class TrainTokenizerJobTests(TrainJobEnvironment env, ITestOutputHelper log) : IClassFixture<TrainJobEnvironment>
{
    /// <summary>The tiny tokenizer of tests/fixtures/tokenizer/tiny.yaml with a 32-dim semantic teacher (test-made weights).</summary>
    string Spec(string queue, string extra = "")
    {
        var model = File.ReadAllText(TrainTokenizerData.Fixture("tokenizer", "tiny.yaml"));
        model = model[model.IndexOf("model:", StringComparison.Ordinal)..model.IndexOf("trainer:", StringComparison.Ordinal)];
        var indented = string.Join("\n", model.TrimEnd().Split('\n').Select(l => "  " + l));
        return $$"""
            kind: train-tokenizer
            queue: {{queue}}
            params:
            {{indented}}
              trainer: {global_batch_size: 1, lr: 2e-4, distill_loss: true}
              loss: {params: {perceptual_weight: 0.0, disc_dim: 8} }
              retok: {semantic_weight: 0.5, teacher: {embed_dim: 32, depth: 1, num_heads: 2} }
              distill_weights: {{env.TeacherWeights}}
              data_path: {{TrainTokenizerData.Fixture("tokenizer", "images.npz")}}
              iterations: 6
              ckpt_every: 2
              recon_every: 3
              recon_images: 2
              torch_threads: 1
            {{extra}}
            """;
    }

    async Task<long> SubmitAsync(string yaml) => (await env.Client.SubmitAsync(JobSpecs.Parse(yaml))).Runs[0].RunId;

    async Task<long> CheckpointStepAsync(long runId) =>
        await env.Tracker.GetArtifactAsync(runId, RunCheckpoints.Latest) is { } a ? JsonNode.Parse(a.Metadata)!["step"]!.GetValue<long>() : -1;

    [Fact]
    public async Task KilledWorkerRunResumesToBitIdenticalWeights()
    {
        var sw = Stopwatch.StartNew();
        var a = env.StartWorker("jt-a", "jt-kill");
        var killed = await SubmitAsync(Spec("jt-kill"));
        var whole = await SubmitAsync(Spec("jt-main"));
        await a.WaitReadyAsync();
        await env.WaitRunAsync(killed, r => r.Status == RunStatus.Running, "Running on worker A");
        var b = env.StartWorker("jt-b", "jt-main,jt-kill");   // starts while A holds the run: it takes the other one first
        var deadline = DateTime.UtcNow.AddSeconds(240);
        while (await CheckpointStepAsync(killed) < 2 && DateTime.UtcNow < deadline) await Task.Delay(100);
        var ckAtKill = await CheckpointStepAsync(killed);
        var progressAtKill = (await env.Tracker.Runs.GetAsync(killed))!.ProgressMessage;
        a.Kill();
        log.WriteLine($"killed worker A at checkpoint step {ckAtKill} ({progressAtKill}) after {sw.Elapsed.TotalSeconds:F0} s");
        Assert.InRange(ckAtKill, 2, 5);

        var k = await env.WaitTerminalAsync(killed, 400);
        var w = await env.WaitTerminalAsync(whole, 400);
        log.WriteLine($"both runs done after {sw.Elapsed.TotalSeconds:F0} s");
        Assert.True(k.Status == RunStatus.Succeeded, $"{k.Status}: {k.FailureReason}\n{env.WorkerLogs()}");
        Assert.True(w.Status == RunStatus.Succeeded, $"{w.Status}: {w.FailureReason}\n{env.WorkerLogs()}");
        Assert.True(k.Attempt >= 2, $"attempt {k.Attempt}");
        Assert.Contains($"resuming from checkpoint at step {ckAtKill}", b.Output);

        // byte-identical weights, and every step's metrics equal to the uninterrupted run's (re-run steps replaced)
        var tk = (await env.Tracker.GetArtifactAsync(killed, "tokenizer.safetensors"))!;
        var tw = (await env.Tracker.GetArtifactAsync(whole, "tokenizer.safetensors"))!;
        Assert.Equal(tw.Sha256, tk.Sha256);
        foreach (var key in new[] { "total_g", "total_d", "rec", "semantic", "k_mean", "grad_norm_g" })
        {
            var mk = await env.Tracker.GetMetricsAsync(killed, key);
            var mw = await env.Tracker.GetMetricsAsync(whole, key);
            Assert.Equal(Enumerable.Range(1, 6).Select(i => (long)i), mk.Select(m => m.Step));
            Assert.Equal(mw.Select(m => m.Value), mk.Select(m => m.Value));
        }
        Assert.NotEqual(0, (await env.Tracker.GetMetricsAsync(whole, "semantic"))[0].Value);   // the teacher ran

        // the outputs a downstream job reads
        var names = (await env.Tracker.ListArtifactsAsync(whole)).Select(x => x.Name).ToHashSet();
        foreach (var n in new[] { "tokenizer.safetensors", "tokenizer.yaml", RunCheckpoints.Latest, "recon/step_3.png", "recon/step_6.png" })
            Assert.Contains(n, names);
        var dir = Directory.CreateTempSubdirectory("jt-out").FullName;
        await env.Tracker.DownloadArtifactAsync(tw, Path.Combine(dir, "tokenizer.safetensors"));
        await env.Tracker.DownloadArtifactAsync((await env.Tracker.GetArtifactAsync(whole, "tokenizer.yaml"))!, Path.Combine(dir, "tokenizer.yaml"));
        var cfg = TokenizerConfig.Load(Path.Combine(dir, "tokenizer.yaml"));
        Assert.True(cfg.SameArchitecture(TrainTokenizerData.TinyConfig()));
        using var trained = ReTokTokenizer.FromCheckpoint(cfg, Path.Combine(dir, "tokenizer.safetensors"));
        var codes = trained.Encode(ReTokTokenizer.ImagesFromUint8(TrainTokenizerData.TinyImagesUint8()));
        Assert.True(trained.Decode(codes, 32).isfinite().all().item<bool>());
    }

    [Fact]
    public async Task NanLossFailsNamingStepAndTermWithoutRetryKeepingTheLastCheckpoint()
    {
        var w = env.StartWorker("jt-nan", "jt-nan");
        var id = await SubmitAsync(Spec("jt-nan", "  debug_inject_nan_at_step: 3").Replace("semantic_weight: 0.5", "semantic_weight: 0.0"));
        var run = await env.WaitTerminalAsync(id, 300);
        Assert.Equal(RunStatus.Failed, run.Status);
        Assert.Equal(1, run.Attempt);    // deterministic: not retried
        Assert.Contains("training diverged at step 3", run.FailureReason);
        Assert.Contains("loss term 'rec'", run.FailureReason);
        Assert.Contains("last good checkpoint is at step 2", run.FailureReason);
        Assert.Equal(2, await CheckpointStepAsync(id));
        Assert.Equal([1L, 2L], (await env.Tracker.GetMetricsAsync(id, "total_g")).Select(m => m.Step));
        Assert.Null(await env.Tracker.GetArtifactAsync(id, "tokenizer.safetensors"));
        w.Dispose();
    }

    [Fact]
    public async Task SemanticLossWithoutTeacherWeightsFailsNamingTheFile()
    {
        var w = env.StartWorker("jt-teacher", "jt-teacher");
        var id = await SubmitAsync(Spec("jt-teacher").Replace($"distill_weights: {env.TeacherWeights}", ""));
        var run = await env.WaitTerminalAsync(id, 300);
        Assert.Equal(RunStatus.Failed, run.Status);
        Assert.Equal(1, run.Attempt);
        Assert.Contains("DINOv2 teacher weights are missing", run.FailureReason);
        Assert.Contains("dinov2_vitb14_pretrain.pth", run.FailureReason);
        Assert.Contains("retok weights import", run.FailureReason);
        Assert.Contains("semantic_weight: 0", run.FailureReason);
        w.Dispose();
    }

    [Fact]
    public async Task PerPositionMultiPrefixRunFinishesAndLogsTheSemanticTerms()
    {
        var w = env.StartWorker("jt-hsr", "jt-hsr");
        var spec = Spec("jt-hsr").Replace("semantic_weight: 0.5,", "semantic_weight: 0.5, semantic_weighting: per_position, semantic_prefixes: 2,")
            .Replace("iterations: 6", "iterations: 2");
        Assert.Contains("semantic_prefixes: 2", spec);
        var id = await SubmitAsync(spec);
        var run = await env.WaitTerminalAsync(id, 300);
        Assert.True(run.Status == RunStatus.Succeeded, $"{run.Status}: {run.FailureReason}\n{env.WorkerLogs()}");
        // the averaged terms, the sampled K's own term, and the prefixes' K and weights, at every step
        foreach (var key in new[] { "semantic", "semantic_weighted", "semantic_sampled_k", "lambda_mean", "lambda_prefixes_mean", "k_prefixes_mean" })
        {
            var m = await env.Tracker.GetMetricsAsync(id, key);
            Assert.True(m.Select(x => x.Step).SequenceEqual([1L, 2L]), $"{key}: steps {string.Join(",", m.Select(x => x.Step))}");
            Assert.All(m, x => Assert.True(double.IsFinite(x.Value) && x.Value != 0, $"{key} = {x.Value} at step {x.Step}"));
        }
        // per-position lambda of a prefix lies in (0, 0.5]; the prefixes' K lie in 1..480
        Assert.All(await env.Tracker.GetMetricsAsync(id, "lambda_prefixes_mean"), x => Assert.InRange(x.Value, 1e-6, 0.5));
        Assert.All(await env.Tracker.GetMetricsAsync(id, "k_prefixes_mean"), x => Assert.InRange(x.Value, 1, 480));
        Assert.Contains("PerPosition, 2 extra prefixes (drawn from the K law)", w.Output);
        w.Dispose();
    }

    [Fact]
    public void SpecsInJobsFolderValidate()
    {
        var root = AppContext.BaseDirectory;
        while (root is not null && !Directory.Exists(Path.Combine(root, "jobs"))) root = Path.GetDirectoryName(root);
        Assert.NotNull(root);
        foreach (var name in new[] { "retok-s-b.yaml", "retok-s-s.yaml", "retok-tiny.yaml" })
        {
            var plan = JobSpecs.Load(Path.Combine(root!, "jobs", name));
            var p = Assert.IsType<TrainTokenizerParams>(plan.Steps[0].Params);
            var cfg = p.TokenizerModel();
            log.WriteLine($"{name}: {cfg}");
            if (name == "retok-s-b.yaml") Assert.Equal("VQ_SB256", cfg.PresetName);
            if (name == "retok-s-s.yaml") Assert.Equal("VQ_SS256", cfg.PresetName);
            if (name == "retok-tiny.yaml") continue;
            // paper recipe: decoder fine-tuning as a second step, warm-started from the first step's tokenizer, same
            // architecture, encoder/quantizer frozen (only decoder prefixes train), teacher off
            Assert.True(plan.IsPipeline);
            Assert.Equal(new[] { "train", "finetune" }, plan.Steps.Select(st => st.Step).ToArray());
            var ft = plan.Steps[1];
            Assert.Equal("train/tokenizer.safetensors", ft.Inputs["init"]);
            Assert.Contains("train", ft.Needs);
            var fp = Assert.IsType<TrainTokenizerParams>(ft.Params);
            Assert.Equal(cfg.ToString(), fp.TokenizerModel().ToString());
            var t = TrainTokenizerJob.TrainerConfigOf(fp, fp.TokenizerModel()).Finetune!;
            Assert.Equal(0, t.StartStep);
            Assert.True(t.TeacherOff);
            foreach (var frozen in new[] { "encoder.conv_in.weight", "quantize.embedding.weight", "s2to1encoder.transformer.0.attn.in_proj_weight" })
                Assert.False(t.Trainable(frozen), frozen);
            Assert.True(t.Trainable("decoder.conv_out.weight"));
            Assert.Null(p.Retok.Finetune);
            // the documented submit command's overrides bind to both steps
            var withData = JobSpecs.Load(Path.Combine(root!, "jobs", name), ["train.data_path=/data/in", "finetune.data_path=/data/in"]);
            Assert.All(withData.Steps, st => Assert.Equal("/data/in", ((TrainTokenizerParams)st.Params).DataPath));
        }
        // a reference-key typo is named with its path
        var ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse(Spec("q").Replace("ckpt_every: 2", "ckpt_evry: 2")));
        Assert.Contains("params.ckpt_evry: unknown key (did you mean 'ckpt_every'?)", ex.Message);
        ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse(Spec("q").Replace("disc_dim: 8}", "disc_dim: 8, lecam: true}")));
        Assert.Contains("lecam: only False is ported", ex.Message);
    }
}

/// <summary>How the spec's keys reach the trainer (no training).</summary>
public class TrainTokenizerParamsTests
{
    static TrainTokenizerParams Parse(string yaml) => (TrainTokenizerParams)JobSpecs.Parse(yaml).Steps[0].Params;

    const string Model = """
        kind: train-tokenizer
        params:
          model:
            model_cls: VQVitModelPlus
            init_args: {encoder_size: small, decoder_size: small, model_size: null, multi_level_query_init: True, adaptive_gn: True,
                        d2s_up: True, rot: True, use_attn: False, fea_rec_loss_type: mse, distill_depth: 3}
          iterations: 100
        """;

    [Fact]
    public void DefaultsAreTheReferenceLoopPlusOurReTokReading()
    {
        var p = Parse(Model);
        var cfg = p.TokenizerModel();
        Assert.Equal("VQ_SS256", cfg.PresetName);
        Assert.Equal(768, cfg.OutInnerDim);            // trainer.distill_loss (default True) + dinov2-vit-b
        var t = TrainTokenizerJob.TrainerConfigOf(p, cfg);
        Assert.Equal((100L, 1e-4, 1e-5, 0L, 0.9, 0.95, 1e-4, 10.0), (t.TotalSteps, t.BaseLr, t.EndLr, t.WarmupSteps, t.Beta1, t.Beta2, t.WeightDecay, t.MaxGradNorm));
        Assert.Equal((0L, 0.5, 1.0, 1.0, 15000L), (t.LossOrDefault.DiscStart, t.LossOrDefault.DiscWeight, t.LossOrDefault.PerceptualWeight, t.LossOrDefault.ReconstructionWeight, t.LossOrDefault.AuxLossEnd));
        Assert.Equal((KDistribution.Uniform, true, 480, true), (t.KSamplerOrDefault.Distribution, t.KSamplerOrDefault.UsePadding, t.KSamplerOrDefault.MaxK, t.KSamplerOrDefault.PerSample));
        Assert.Equal((LambdaSchedule.Linear, 0.5, 0.0), (t.SemanticWeightOrDefault.Schedule, t.SemanticWeightOrDefault.Lambda0, t.SemanticWeightOrDefault.LambdaEnd));
        Assert.Null(t.Finetune);
        Assert.False(t.UseEma);
        Assert.True(p.SemanticOn);
    }

    [Fact]
    public void KLawAndMixtureBindStrictly()
    {
        var p = Parse(Model + "\n  retok: {k_distribution: clamp_to_n, k_equals_n_prob: 0.25}\n");
        var k = TrainTokenizerJob.TrainerConfigOf(p, p.TokenizerModel()).KSamplerOrDefault;
        Assert.Equal((KDistribution.ClampToN, 0.25, 256, 480), (k.Distribution, k.KEqualsNProb, k.NumTokens, k.MaxK));
        Assert.Equal(0.0, TrainTokenizerJob.TrainerConfigOf(Parse(Model), Parse(Model).TokenizerModel()).KSamplerOrDefault.KEqualsNProb);

        var ex = Assert.Throws<SpecValidationException>(() => Parse(Model + "\n  retok: {k_distribution: clamp}\n"));
        Assert.Contains("k_distribution", ex.Message);
        ex = Assert.Throws<SpecValidationException>(() => Parse(Model + "\n  retok: {k_equals_n_prob: 1.5}\n"));
        Assert.Contains("retok.k_equals_n_prob: must be in [0, 1], got 1.5", ex.Message);
        var floor = Parse(Model + "\n  retok: {semantic_weight: 0.0, semantic_schedule: constant, semantic_weight_floor: 0.2}\n");
        Assert.True(floor.SemanticOn);   // the floor alone keeps the teacher on
        Assert.Equal(0.2, TrainTokenizerJob.TrainerConfigOf(floor, floor.TokenizerModel()).SemanticWeightOrDefault.At(256));
        ex = Assert.Throws<SpecValidationException>(() => Parse(Model + "\n  retok: {semantic_weight_floor: -0.1}\n"));
        Assert.Contains("retok.semantic_weight_floor: must be >= 0", ex.Message);
        ex = Assert.Throws<SpecValidationException>(() => Parse(Model + "\n  retok: {k_equal_n_prob: 0.5}\n"));
        Assert.Contains("k_equal_n_prob", ex.Message);
    }

    [Fact]
    public void SemanticWeightingAndPrefixesBindStrictly()
    {
        var d = TrainTokenizerJob.TrainerConfigOf(Parse(Model), Parse(Model).TokenizerModel());
        Assert.Equal((SemanticWeighting.PerSampleK, 0, null), (d.SemanticWeightOrDefault.Weighting, d.SemanticPrefixesOrDefault.Count, d.SemanticPrefixesOrDefault.Ks));
        var p = Parse(Model + "\n  retok: {semantic_weighting: per_position, semantic_prefixes: 2}\n");
        var t = TrainTokenizerJob.TrainerConfigOf(p, p.TokenizerModel());
        Assert.Equal((SemanticWeighting.PerPosition, 2, 2), (t.SemanticWeightOrDefault.Weighting, t.SemanticPrefixesOrDefault.Count, t.SemanticPrefixesOrDefault.Extra));
        var f = Parse(Model + "\n  retok: {semantic_prefix_ks: [64, 256]}\n");
        Assert.Equal(new[] { 64, 256 }, TrainTokenizerJob.TrainerConfigOf(f, f.TokenizerModel()).SemanticPrefixesOrDefault.Ks);

        string Error(string retok) => Assert.Throws<SpecValidationException>(() => Parse(Model + $"\n  retok: {{{retok}}}\n")).Message;
        Assert.Contains("semantic_weighting", Error("semantic_weighting: per_token"));
        Assert.Contains("retok.semantic_prefixes: must be in 0..16", Error("semantic_prefixes: -1"));
        Assert.Contains("retok.semantic_prefixes: must be in 0..16", Error("semantic_prefixes: 17"));
        var range = Error("semantic_prefix_ks: [0, 64, 481]");
        Assert.Contains("retok.semantic_prefix_ks: 0 is outside 1..480", range);
        Assert.Contains("retok.semantic_prefix_ks: 481 is outside 1..480", range);
        Assert.Contains("retok.semantic_prefix_ks: give 1..16 prefix lengths", Error("semantic_prefix_ks: []"));
        Assert.Contains("not both", Error("semantic_prefixes: 1, semantic_prefix_ks: [8]"));
        Assert.Contains("extra prefixes only feed the semantic loss, which is off", Error("semantic_weight: 0.0, semantic_schedule: constant, semantic_prefixes: 1"));
    }

    static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d != null && !File.Exists(Path.Combine(d.FullName, "ReTok.Jobs.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The YAML spelling of a default value, as the table writes it.</summary>
    static string Yaml(object? v) => v switch
    {
        null => "null",
        bool b => b ? "true" : "false",
        Enum e => System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(e.ToString()),
        double d => d.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => v.ToString()!,
    };

    [Fact]
    public void MethodChoicesTableMatchesTheCode()
    {
        // docs/training.md "Method choices" table: one row per `retok:` key, default column = the code's default
        var lines = File.ReadAllLines(Path.Combine(RepoRoot(), "docs", "training.md"));
        int start = Array.FindIndex(lines, l => l.StartsWith("### Method choices", StringComparison.Ordinal));
        Assert.True(start >= 0, "docs/training.md has no '### Method choices' table");
        var rows = lines.Skip(start + 1).SkipWhile(l => !l.StartsWith('|')).TakeWhile(l => l.StartsWith('|')).Skip(2)
            .Select(l => l.Split('|').Select(c => c.Trim()).ToArray())
            .ToDictionary(c => c[1].Trim('`'), c => c[2].Trim('`'));
        var defaults = new RetokSection();
        var props = typeof(RetokSection).GetProperties(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Instance)
            .ToDictionary(pr => System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(pr.Name));
        Assert.Equal(props.Keys.Order(), rows.Keys.Order());   // every key documented, none invented
        foreach (var (key, documented) in rows)
        {
            var prop = props[key];
            Assert.True(Yaml(prop.GetValue(defaults)) == documented, $"docs/training.md: retok.{key} documented default '{documented}', code default '{Yaml(prop.GetValue(defaults))}'");
            // the documented literal is a valid spec value that binds to the same default
            if (documented != "null")
                Assert.Equal(Yaml(prop.GetValue(Parse(Model + $"\n  retok: {{{key}: {documented}}}\n").Retok)), documented);
        }
    }

    [Fact]
    public void InitModeBindsStrictly()
    {
        Assert.Equal(InitMode.Strict, Parse(Model).InitMode);
        var p = Parse(Model + "\n  init_checkpoint: /data/gigatok_sb.safetensors\n  init_mode: gigatok\n");
        Assert.Equal((InitMode.Gigatok, "/data/gigatok_sb.safetensors"), (p.InitMode, p.InitCheckpoint));
        Assert.Contains("init_mode", Assert.Throws<SpecValidationException>(() => Parse(Model + "\n  init_mode: lenient\n")).Message);
    }

    [Fact]
    public void ReleasedLoopFinetuneAndSwitchesMapThrough()
    {
        var p = Parse(Model + "\n" + """
              trainer: {max_grad_norm: 0.0, freeze_but_decoder_iter: 40}
              loss: {params: {proj_weight: 0.25, perceptual_weight: 0.0}}
              retok: {nested_dropout: false, semantic_schedule: constant}
              ema: true
              gradient_accumulation_steps: 2
            """);
        var t = TrainTokenizerJob.TrainerConfigOf(p, p.TokenizerModel());
        Assert.Equal((KDistribution.Fixed, 256), (t.KSamplerOrDefault.Distribution, t.KSamplerOrDefault.FixedKOrN));
        Assert.Equal((LambdaSchedule.Constant, 0.25), (t.SemanticWeightOrDefault.Schedule, t.SemanticWeightOrDefault.Lambda0));
        Assert.Equal(0.25, t.LossOrDefault.ProjWeight);
        Assert.Equal(double.PositiveInfinity, t.MaxGradNorm);   // 0 = no clipping, as `if max_grad_norm != 0`
        Assert.Equal(40, t.Finetune!.StartStep);
        Assert.Equal(new[] { "decoder." }, t.Finetune.Prefixes);
        Assert.True(t.Finetune.TeacherOff);
        Assert.True(t.UseEma);
        Assert.Equal(2, t.GradAccumulationSteps);
        Assert.Equal(0.0, t.LossOrDefault.PerceptualWeight);

        var off = Parse(Model + "\n  retok: {semantic_weight: 0.0, semantic_schedule: constant}\n");
        Assert.False(off.SemanticOn);   // no teacher needed
        var ex = Assert.Throws<SpecValidationException>(() => Parse(Model.Replace("distill_depth: 3", "distill_depth: null")));
        Assert.Contains("the semantic loss is on", ex.Message);
        ex = Assert.Throws<SpecValidationException>(() => Parse(Model + "\n  retok: {min_tokens: 600}\n"));
        Assert.Contains("retok.min_tokens: must be in 1..480", ex.Message);
    }
}

/// <summary>init_mode: warm start from a GigaTok checkpoint (no Redundant Token Padding keys).</summary>
public class WarmStartTests
{
    [Fact]
    public void GigaTokInitFillsExactlyThePaddingKeysByReplicationAndStrictNamesThem()
    {
        var yaml = Path.Combine(Directory.CreateTempSubdirectory("warm-start").FullName, "tiny.yaml");
        File.WriteAllText(yaml, EvalJobSupport.TinyYaml);
        var cfg = ReTok.Models.Tokenizer.TokenizerConfig.Load(yaml);
        torch.manual_seed(1);
        using var source = new ReTok.Models.Tokenizer.ReTokTokenizer(cfg);
        // a GigaTok-style state dict: the tokenizer's own keys minus every padding `_comp` key, saved and reloaded
        var file = Path.Combine(Path.GetDirectoryName(yaml)!, "gigatok.safetensors");
        var full = source.state_dict();
        var comp = full.Keys.Where(k => k.EndsWith("_comp")).Order().ToList();
        Assert.Equal(2, comp.Count);   // encoder and decoder padding positional embeddings
        ReTok.Models.IO.StateDictFile.WriteSafetensors(file, full.Where(kv => !kv.Key.EndsWith("_comp")).ToDictionary(kv => kv.Key, kv => kv.Value));
        var sd = ReTok.Models.IO.StateDictFile.Read(file);

        torch.manual_seed(2);
        using var strict = new ReTok.Models.Tokenizer.ReTokTokenizer(cfg);
        var ex = Assert.Throws<InvalidDataException>(() => strict.LoadWeights(sd, file));
        Assert.Contains("2 missing keys", ex.Message);
        foreach (var k in comp) Assert.Contains(k, ex.Message);

        torch.manual_seed(3);
        using var warm = new ReTok.Models.Tokenizer.ReTokTokenizer(cfg);
        var filled = warm.LoadWeightsGigaTok(sd, file);
        Assert.Equal(comp, filled.Order().ToList());
        var got = warm.state_dict();
        foreach (var k in comp)
        {
            var q = full[k[..^"_comp".Length]];
            long m = got[k].shape[0];
            Assert.True(got[k].allclose(q.narrow(0, q.shape[0] - m, m), rtol: 0, atol: 0), $"{k} must replicate the last {m} query positions");
        }
        foreach (var (k, v) in full.Where(kv => !kv.Key.EndsWith("_comp")))
            Assert.True(got[k].allclose(v, rtol: 0, atol: 0), $"{k} must load unchanged");

        // an unexpected key still fails in gigatok mode, named
        var extra = new Dictionary<string, torch.Tensor>(sd) { ["encoder.not_a_key"] = torch.zeros(1) };
        using var again = new ReTok.Models.Tokenizer.ReTokTokenizer(cfg);
        Assert.Contains("encoder.not_a_key", Assert.Throws<InvalidDataException>(() => again.LoadWeightsGigaTok(extra, file)).Message);
    }
}

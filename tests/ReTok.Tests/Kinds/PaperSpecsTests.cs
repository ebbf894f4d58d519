using System.Text.Json.Nodes;
using ReTok.Engine;
using ReTok.Jobs.Kinds.EvalReconstruction;
using ReTok.Jobs.Kinds.ExtractCodes;
using ReTok.Jobs.Kinds.SampleGfid;
using ReTok.Jobs.Kinds.TrainGenerator;
using ReTok.Jobs.Kinds.TrainTokenizer;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Kinds;

/// <summary>
/// jobs/paper-table1.yaml (raw ImageNet to the Table 1 row) and jobs/eval-released.yaml (the authors' checkpoints):
/// bound and validated by the kind registry as shipped and with tiny overrides, and submitted through
/// <see cref="JobClient.SubmitAsync(SubmitPlan, CancellationToken)"/> (data roots, input runs, the step DAG) on this
/// machine's PostgreSQL. The paper-scale settings they claim are checked against the specs they reuse.
/// </summary>
public sealed class PaperSpecsTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    static string Jobs(string name) => RepoPaths.File("jobs", name);

    static T Params<T>(SubmitPlan plan, string step) => Assert.IsType<T>(plan.Steps.Single(s => s.Step == step).Params);

    /// <summary>The tiny tokenizer of jobs/retok-tiny.yaml as one --set value.</summary>
    const string TinyModel = "{model_cls: VQVitModelPlus, init_args: {codebook_size: 1024, codebook_embed_dim: 8, codebook_l2_norm: true, " +
        "commit_loss_beta: 0.25, entropy_loss_ratio: 0.0, encoder_ch_mult: [1, 1, 1, 1, 2], decoder_ch_mult: [1, 1, 1, 1, 2], model_size: null, " +
        "num_latent_tokens: 256, z_channels: 32, multi_level_query_init: true, adaptive_gn: true, d2s_up: true, rot: true, use_attn: false, " +
        "fea_rec_loss_type: mse, fea_rec_loss_weight: 1.0, distill_depth: null, ch: 32, num_res_blocks: 1, encoder_width: 64, encoder_layers: 2, " +
        "encoder_heads: 2, decoder_width: 64, decoder_layers: 2, decoder_heads: 2}}";

    static IEnumerable<string> TinyTokenizer(string step, string data) =>
    [
        $"{step}.model={TinyModel}", $"{step}.data_path={data}", $"{step}.iterations=2", $"{step}.ckpt_every=1", $"{step}.recon_every=0",
        $"{step}.num_workers=1", $"{step}.trainer.global_batch_size=2", $"{step}.trainer.distill_loss=false",
        $"{step}.loss.params.perceptual_weight=0", $"{step}.loss.params.disc_dim=8",
    ];

    static IEnumerable<string> TinyExtract(string root) =>
        [$"extract_val.source={root}/val", "extract_val.val_labels=~", "extract_val.devkit_meta=~", "extract_val.chunk_size=4", "extract_val.preview_images=2"];

    static IEnumerable<string> TinyGfid(string step) =>
        [$"{step}.num_samples=4", $"{step}.num_shards=2", $"{step}.tokens=8", $"{step}.batch_size=2", $"{step}.checkpoint_every=1"];

    /// <summary>paper-table1 at CPU scale: tiny tokenizer, 4 images, a 1-layer GPT for 2 steps, 4 samples at K = 8.</summary>
    internal static List<string> PaperTiny(string root) =>
    [
        .. TinyExtract(root), .. TinyTokenizer("train", $"{root}/train"), .. TinyTokenizer("finetune", $"{root}/train"),
        "eval_recon.token_counts=[8, 16]", "eval_recon.batch_size=2", "eval_recon.shards=1", "eval_recon.lpips=false", "eval_recon.fid=false",
        $"codes.source={root}/train", "codes.ten_crop=false", "codes.tokens=8", "codes.batch_size=2", "codes.chunk_images=2",
        "gpt.gpt_model=~", "gpt.dim=32", "gpt.n_layer=1", "gpt.n_head=2", "gpt.vocab_size=1024", "gpt.max_steps=2", "gpt.warmup_steps=1",
        "gpt.global_batch_size=2", "gpt.data_parallel={replicas: 1, backend: cpu}", "gpt.checkpoint_every=1", "gpt.milestone_every=0", "gpt.log_every=1",
        .. TinyGfid("gfid"),
    ];

    internal static List<string> ReleasedTiny(string root) =>
    [
        .. TinyExtract(root), $"eval_recon.checkpoint={root}/VQ_SB256.pt", "eval_recon.token_counts=[8]", "eval_recon.batch_size=2",
        "eval_recon.shards=1", "eval_recon.lpips=false", "eval_recon.fid=false",
        "val_codes.tokens=8", "val_codes.batch_size=2", "val_codes.chunk_images=2", "val_loss.batch_size=2", .. TinyGfid("gfid"),
    ];

    /// <summary>Every spec in jobs/ binds and validates against the kinds as shipped (no other test lists them all).</summary>
    [Fact]
    public void EverySpecInTheJobsFolderValidates()
    {
        var specs = Directory.GetFiles(Path.GetDirectoryName(Jobs("paper-table1.yaml"))!, "*.yaml").Order(StringComparer.Ordinal).ToList();
        Assert.Contains(specs, f => f.EndsWith("eval-released.yaml", StringComparison.Ordinal));
        var errors = new List<string>();
        foreach (var f in specs)
            try { Assert.NotEmpty(JobSpecs.Load(f, kinds: JobKindRegistry.Default).Steps); }
            catch (SpecValidationException e) { errors.Add($"{Path.GetFileName(f)}: {e.Message}"); }
        Assert.True(errors.Count == 0, string.Join("\n", errors));
    }

    [Fact]
    public void PaperTable1_IsTheTable1RowPipeline_AndValidatesWithTinyOverrides()
    {
        var plan = JobSpecs.Load(Jobs("paper-table1.yaml"), kinds: JobKindRegistry.Default);
        Assert.True(plan.IsPipeline);
        Assert.Equal(["extract_val", "train", "finetune", "eval_recon", "codes", "gpt", "gfid"], plan.Steps.Select(s => s.Step));
        Assert.Equal(["extract-dataset", "train-tokenizer", "train-tokenizer", "eval-reconstruction", "extract-codes", "train-generator", "sample-gfid"],
            plan.Steps.Select(s => s.Kind.Name));
        var needs = plan.Steps.ToDictionary(s => s.Step, s => s.Needs.Order().ToArray());
        Assert.Empty(needs["train"]);
        Assert.Equal(["train"], needs["finetune"]);
        Assert.Equal(["extract_val", "finetune"], needs["eval_recon"]);
        Assert.Equal(["finetune"], needs["codes"]);
        Assert.Equal(["codes"], needs["gpt"]);
        Assert.Equal(["finetune", "gpt"], needs["gfid"]);

        // the tokenizer steps are jobs/retok-s-b.yaml's, key for key, on the ImageNet train folder
        var sb = JobSpecs.Load(Jobs("retok-s-b.yaml"));
        foreach (var step in new[] { "train", "finetune" })
        {
            var mine = Params<TrainTokenizerParams>(plan, step);
            Assert.Equal("/data/imagenet/ILSVRC2012_img_train", mine.DataPath);
            Assert.Equal(ParamBinder.ToJson(Params<TrainTokenizerParams>(sb, step) with { DataPath = mine.DataPath }), ParamBinder.ToJson(mine));
        }
        Assert.Equal("VQ_SB256", Params<TrainTokenizerParams>(plan, "train").TokenizerModel().PresetName);
        Assert.NotNull(Params<TrainTokenizerParams>(plan, "finetune").Retok.Finetune);
        Assert.Equal("train/tokenizer.safetensors", plan.Steps.Single(s => s.Step == "finetune").Inputs["init"]);

        var recon = Params<EvalReconstructionParams>(plan, "eval_recon");
        Assert.Equal([32, 64, 128, 256], recon.TokenCounts);
        Assert.True(recon.Fid);
        var codes = Params<ExtractCodesParams>(plan, "codes");
        Assert.True(codes.TenCrop);
        Assert.Equal(1.1, codes.CropRange);
        Assert.Equal(256, codes.Tokens);
        Assert.NotNull(codes.Source);   // the train JPEGs, as extract_codes_c2i.py crops them
        Assert.Equal(8, codes.NumShards);
        var gpt = Params<TrainGeneratorParams>(plan, "gpt");
        Assert.Equal("GPT-XL", gpt.GptModel);
        Assert.Equal((256, 1_500_000L, 1e-4), (gpt.GlobalBatchSize, gpt.MaxSteps, gpt.Lr));
        Assert.Equal(8, plan.Steps.Single(s => s.Step == "gpt").Gpus);
        Assert.Equal(8, gpt.DataParallel.Replicas);
        // the sampling half is the README setting of jobs/gfid-gpt-xl-retok-s-b.yaml
        var readme = Assert.IsType<SampleGfidParams>(JobSpecs.Load(Jobs("gfid-gpt-xl-retok-s-b.yaml")).Steps[0].Params);
        Assert.Equal(ParamBinder.ToJson(readme), ParamBinder.ToJson(Params<SampleGfidParams>(plan, "gfid")));
        Assert.Equal((50000, 1.5, "step", "none"), (readme.NumSamples, readme.CfgScale, readme.CfgSchedule, readme.Precision));

        // tiny overrides bind and validate
        var tiny = JobSpecs.Load(Jobs("paper-table1.yaml"), PaperTiny("/tmp/paper"), JobKindRegistry.Default);
        Assert.Equal(2, Params<TrainTokenizerParams>(tiny, "finetune").Iterations);
        Assert.Null(Params<TrainGeneratorParams>(tiny, "gpt").GptModel);
        Assert.Equal(4, Params<SampleGfidParams>(tiny, "gfid").NumSamples);
        Assert.Equal([8, 16], Params<EvalReconstructionParams>(tiny, "eval_recon").TokenCounts);
    }

    [Fact]
    public void EvalReleased_EvaluatesTheAuthorsCheckpoints_AndValidatesWithTinyOverrides()
    {
        var plan = JobSpecs.Load(Jobs("eval-released.yaml"), kinds: JobKindRegistry.Default);
        // steps come in dependency order
        Assert.Equal(["extract_val", "gfid", "eval_recon", "val_codes", "val_loss"], plan.Steps.Select(s => s.Step));
        Assert.Equal(["extract-dataset", "sample-gfid", "eval-reconstruction", "extract-codes", "val-loss"], plan.Steps.Select(s => s.Kind.Name));
        var recon = Params<EvalReconstructionParams>(plan, "eval_recon");
        Assert.Equal(("VQ_SB256", "ema"), (recon.Preset, recon.Prefer));
        Assert.Equal([32, 64, 128, 256], recon.TokenCounts);
        var gfid = plan.Steps.Single(s => s.Step == "gfid");
        Assert.Equal("run:1/GPT_XL256_e300_VQ_SB.pt", gfid.Inputs["generator"]);
        Assert.Equal("run:1/VQ_SB256.pt", gfid.Inputs["tokenizer"]);
        var readme = Assert.IsType<SampleGfidParams>(JobSpecs.Load(Jobs("gfid-gpt-xl-retok-s-b.yaml")).Steps[0].Params);
        Assert.Equal(ParamBinder.ToJson(readme), ParamBinder.ToJson(gfid.Params));
        Assert.Equal(["val_codes"], plan.Steps.Single(s => s.Step == "val_loss").Needs);
        Assert.Equal(8, Params<ExtractCodesParams>(plan, "val_codes").NumShards);

        var tiny = JobSpecs.Load(Jobs("eval-released.yaml"), ReleasedTiny("/tmp/released"), JobKindRegistry.Default);
        Assert.Equal("/tmp/released/VQ_SB256.pt", Params<EvalReconstructionParams>(tiny, "eval_recon").Checkpoint);
    }

    /// <summary>
    /// Submitted with tiny overrides: every path inside the data roots, every run: input present (an import run holding
    /// the files the specs name; its id replaces run:1 as the comment of each spec says), one run per step, the first
    /// queued and the rest waiting on their needs. Without the overrides the ImageNet paths are outside the roots and the
    /// submit names them.
    /// </summary>
    [Theory]
    [InlineData("paper-table1.yaml", 7)]
    [InlineData("eval-released.yaml", 5)]
    public async Task SubmitsWithTinyOverrides(string spec, int steps)
    {
        var root = Directory.CreateTempSubdirectory("retok-paper-specs").FullName;
        await using var client = new JobClient(new EngineOptions
        {
            Db = db.ConnectionString, Artifacts = Path.Combine(root, "artifacts"), Scratch = Path.Combine(root, "scratch"),
            DataRoots = new DataRoots([root], "test"),
        });
        await client.EnsureSchemaAsync();
        var t = client.Tracker;
        var import = await t.Runs.InsertAsync(new Run { Kind = "import", Status = RunStatus.Succeeded });
        foreach (var name in new[] { "VIRTUAL_imagenet256_labeled.npz", "VQ_SB256.pt", "tokenizer.yaml", "GPT_XL256_e300_VQ_SB.pt", "generator.yaml" })
        {
            var f = Path.Combine(root, name);
            await File.WriteAllTextAsync(f, name);
            await t.SaveArtifactFileAsync(import.Id, name, f);
        }
        var yaml = (await File.ReadAllTextAsync(Jobs(spec))).Replace("run:1/", $"run:{import.Id}/");
        var overrides = spec == "paper-table1.yaml" ? PaperTiny(root) : ReleasedTiny(root);

        var outside = Assert.Throws<SpecValidationException>(() => client.CheckDataPaths(JobSpecs.Parse(yaml)));
        Assert.Contains("steps.extract_val.params.source: /data/imagenet/ILSVRC2012_img_val is outside the data roots", outside.Message);
        var missing = await Assert.ThrowsAsync<SpecValidationException>(() =>
            client.SubmitAsync(JobSpecs.Parse(yaml.Replace($"run:{import.Id}/", "run:999999/"), overrides)));
        Assert.Contains("steps.gfid.inputs.reference: run 999999 has no artifact 'VIRTUAL_imagenet256_labeled.npz'", missing.Message);

        var plan = JobSpecs.Parse(yaml, overrides);
        var submitted = await client.SubmitAsync(plan);
        Assert.NotNull(submitted.PipelineId);
        Assert.Equal(steps, submitted.Runs.Count);
        foreach (var r in submitted.Runs)
        {
            var run = (await t.Runs.GetAsync(r.RunId))!;
            var step = plan.Steps.Single(s => s.Step == r.Step);
            Assert.Equal(step.Needs.Count == 0 ? RunStatus.Queued : RunStatus.Waiting, run.Status);
            Assert.Equal(step.Needs.Order(), run.DependsOn.Order());
            Assert.Equal(step.Kind.Name, run.Kind);
            Assert.True(JsonNode.DeepEquals(JsonNode.Parse(step.ParamsJson), JsonNode.Parse(run.Parameters)), $"{r.Step}: {run.Parameters}");
        }
        // nothing serves this database: cancel the pipeline (the waiting steps after the first go with it)
        foreach (var r in submitted.Runs.Where(r => r.Status == RunStatus.Queued)) await client.CancelAsync(r.RunId);
    }
}

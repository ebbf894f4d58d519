using ReTok.Engine;
using ReTok.Jobs.Kinds.Selftest;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>Spec parsing and strict parameter binding (no database).</summary>
public class JobSpecTests
{
    static SpecValidationException Invalid(string yaml, params string[] sets) =>
        Assert.Throws<SpecValidationException>(() => JobSpecs.Parse(yaml, sets));

    [Fact]
    public void BindsSnakeCaseKeysFillsDefaultsAndAppliesOverrides()
    {
        var plan = JobSpecs.Parse("""
            kind: selftest
            name: demo
            params: {n: 12, step_ms: 5}
            """, ["checkpoint_every=3", "scale=2.5", "fail_at_step=~"]);
        var step = Assert.Single(plan.Steps);
        var p = Assert.IsType<SelftestParams>(step.Params);
        Assert.Equal((12, 5, 3, 2.5, (int?)null, 0), (p.N, p.StepMs, p.CheckpointEvery, p.Scale, p.FailAtStep, p.Shards));
        Assert.Equal("cpu", step.Queue);
        Assert.Contains("\"checkpoint_every\":3", step.ParamsJson);
        Assert.Contains("\"transient_failures\":0", step.ParamsJson); // defaults are stored too
        Assert.Equal(16, step.ConfigHash.Length);
    }

    [Fact]
    public void UnknownKeyNamesThePathAndSuggestsTheClosestKey()
    {
        var ex = Invalid("kind: selftest\nparams: {n: 3, step_msec: 10}");
        var e = Assert.Single(ex.Errors);
        Assert.StartsWith("params.step_msec: unknown key (did you mean 'step_ms'?)", e);
    }

    [Fact]
    public void WrongTypesNameThePathAndTheExpectedType()
    {
        var ex = Invalid("kind: selftest\nparams: {n: forty, scale: [1, 2], fail_at_step: 2.5}", "checkpoint_every=true");
        Assert.Contains("params.n: expected an integer (int), got 'forty'", ex.Errors);
        Assert.Contains("params.scale: expected a number (double), got a list", ex.Errors);
        Assert.Contains("params.fail_at_step: expected an integer (int) or null, got '2.5'", ex.Errors);
        Assert.Contains("params.checkpoint_every: expected an integer (int), got 'true'", ex.Errors);
        Assert.Equal(4, ex.Errors.Count);
    }

    [Fact]
    public void ValueChecksOfTheRecordRunAtSubmitTime()
    {
        var ex = Invalid("kind: selftest\nparams: {n: -1}");
        Assert.Equal(["params.n: must be >= 0, got -1"], ex.Errors);
    }

    [Fact]
    public void NestedRecordsListsEnumsAndDottedOverrides()
    {
        var kinds = new JobKindRegistry().Register(typeof(NestedJob), new JobKindAttribute("nested"));
        var plan = JobSpecs.Parse("""
            kind: nested
            params:
              trainer: {lr: 1.0e-4, global_batch_size: 128, betas: [0.9, 0.95]}
              model: {decoder_size: base}
            """, ["trainer.lr=2e-4", "model.codebook.size=16384", "mode=fast_eval"], kinds);
        var p = Assert.IsType<NestedParams>(plan.Steps[0].Params);
        Assert.Equal(2e-4, p.Trainer.Lr);
        Assert.Equal(128, p.Trainer.GlobalBatchSize);
        Assert.Equal([0.9, 0.95], p.Trainer.Betas);
        Assert.Equal(16384, p.Model.Codebook!.Size);
        Assert.Equal(Mode.FastEval, p.Mode);

        var ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Parse("kind: nested\nparams: {trainer: {lr: 1, betas: [0.9, x]}, model: {decoder_size: 3, codebook: {size: 3000000000}}, mode: slow}", null, kinds));
        Assert.Contains("params.trainer.betas[1]: expected a number (double), got 'x'", ex.Errors);
        Assert.Contains("params.model.codebook.size: 3000000000 is out of range for an integer (int)", ex.Errors);
        Assert.Contains("params.mode: expected one of: train, fast_eval, got 'slow'", ex.Errors);
        Assert.Contains("params.trainer.global_batch_size: required key is missing (expected an integer (int))", ex.Errors);
    }

    [Fact]
    public void PipelineStepsNeedsInputsAndErrors()
    {
        var plan = JobSpecs.Parse("""
            pipeline: chain
            steps:
              report: {kind: selftest, needs: [transform], inputs: {data: transform/result.json}}
              produce: {kind: selftest, params: {n: 2}}
              transform: {kind: selftest, inputs: {data: produce/result.json}}
            """, ["transform.n=7"]);
        Assert.Equal(["produce", "transform", "report"], plan.Steps.Select(s => s.Step));
        Assert.Equal(["produce"], plan.Steps[1].Needs); // implied by the input
        Assert.Equal(7, ((SelftestParams)plan.Steps[1].Params).N);

        var ex = Invalid("""
            pipeline: bad
            steps:
              a: {kind: selftest, needs: [b]}
              b: {kind: selftest, needs: [a]}
              c: {kind: nope, params: {}}
              d: {kind: selftest, inputs: {x: zzz/file.bin}, paramz: {}}
            """);
        Assert.Contains(ex.Errors, e => e.StartsWith("steps.c.kind: unknown job kind 'nope'"));
        Assert.Contains(ex.Errors, e => e.StartsWith("steps.d.inputs.x: step 'zzz' does not exist"));
        Assert.Contains(ex.Errors, e => e.StartsWith("steps.d.paramz: unknown key"));
        var cyc = Invalid("pipeline: c\nsteps:\n  a: {kind: selftest, needs: [b]}\n  b: {kind: selftest, needs: [a]}");
        Assert.Contains(cyc.Errors, e => e.StartsWith("steps: the needs form a cycle: a -> b -> a"));
        Assert.Contains(Invalid("pipeline: c\nsteps:\n  a: {kind: selftest}", "b.n=1").Errors, e => e.Contains("STEP one of: a"));
        Assert.Contains(Invalid("kind: selftest\ninputs: {data: produce/x.npz}").Errors, e => e.Contains("use run:ID/x.npz"));
    }

    [Fact]
    public void OverridesSetQueueGpusPriorityAndInputsOnTheStepNotInItsParams()
    {
        const string Chain = """
            pipeline: chain
            steps:
              produce: {kind: selftest, gpus: 8, queue: gpu}
              use: {kind: selftest, inputs: {data: run:1/result.json}}
            """;
        var plan = JobSpecs.Parse(Chain, ["produce.gpus=2", "produce.priority=high", "use.queue=cpu-big", "use.inputs.data=run:7/other.json",
            "use.inputs.extra=produce/result.json"]);
        Assert.Equal((2, RunPriority.High, "gpu"), (plan.Steps[0].Gpus, plan.Steps[0].Priority, plan.Steps[0].Queue));
        Assert.Equal("cpu-big", plan.Steps[1].Queue);
        Assert.Equal("run:7/other.json", plan.Steps[1].Inputs["data"]);
        Assert.Equal(["produce"], plan.Steps[1].Needs);   // an overridden STEP/ARTIFACT input implies its need like a written one
        Assert.DoesNotContain("gpus", plan.Steps[0].ParamsJson);
        var single = JobSpecs.Parse("kind: selftest\n", ["gpus=4", "inputs.data=run:3/result.json"]).Steps[0];
        Assert.Equal((4, "run:3/result.json"), (single.Gpus, single.Inputs["data"]));
        // the step keys' own checks apply to overridden values
        Assert.Contains("steps.produce.gpus: '0' is not a whole number from 1 to 64", Invalid(Chain, "produce.gpus=0").Errors);
        Assert.Contains(Invalid(Chain, "use.inputs.data=nowhere/x.json").Errors, e => e.StartsWith("steps.use.inputs.data: step 'nowhere' does not exist"));
    }

    [Fact]
    public void NodesIsAStepKeyOfMultiNodeKindsOnly()
    {
        var gpt = JobSpecs.Parse("kind: train-generator\nnodes: 2\nparams: {data_parallel: {backend: tcp, timeout_s: 30}}\n").Steps[0];
        Assert.Equal(2, gpt.Nodes);
        Assert.DoesNotContain("nodes", gpt.ParamsJson);
        Assert.Equal(4, JobSpecs.Parse("kind: train-generator\n", ["nodes=4", "data_parallel.backend=tcp"]).Steps[0].Nodes);
        Assert.Equal(1, JobSpecs.Parse("kind: selftest\n").Steps[0].Nodes);
        Assert.Contains("nodes: '0' is not a whole number from 1 to 1024", Invalid("kind: train-generator\nnodes: 0\n").Errors);
        Assert.Contains(Invalid("kind: selftest\nnodes: 2\n").Errors, e => e.StartsWith("nodes: job kind 'selftest' does not run on several nodes"));
        Assert.Contains(Invalid("kind: train-generator\nparams: {data_parallel: {backend: mpi}}\n").Errors, e => e.Contains("'mpi' is not one of cpu, tcp, nccl"));
        // the node count's own checks run at submit, not in the ranks' first step
        Assert.Contains("params.data_parallel.backend: nodes: 2 needs tcp or nccl (cpu replicas are threads of one process)",
            Invalid("kind: train-generator\nnodes: 2\n").Errors);
        Assert.Contains("steps.gpt.params.data_parallel: the global batch 8 does not split into 3 nodes x 1 replicas x 1 micro-batches",
            Invalid("steps:\n  gpt:\n    kind: train-generator\n    nodes: 3\n    params: {global_batch_size: 8, data_parallel: {backend: tcp}}\n").Errors);
        var tok = new ReTok.Jobs.Kinds.TrainTokenizer.TrainTokenizerParams { GradientAccumulationSteps = 2, DataParallel = new(Backend: "tcp") };
        Assert.Equal(["data_parallel: the global batch 6 does not split into 2 nodes x 1 replicas x 2 micro-batches"],
            (tok with { Trainer = tok.Trainer with { GlobalBatchSize = 6 } }).ValidateNodes(2));
        Assert.Empty((tok with { Trainer = tok.Trainer with { GlobalBatchSize = 8 } }).ValidateNodes(2));
        Assert.Contains(Invalid("kind: train-generator\nnodes: 2\nparams: {global_batch_size: 8, data_parallel: {backend: nccl, replicas: 2}}\n").Errors,
            e => e.StartsWith("params.data_parallel.replicas: backend nccl on several nodes runs one replica per rank run"));
        Assert.Equal(2, JobSpecs.Parse("kind: train-generator\nnodes: 2\nparams: {global_batch_size: 8, data_parallel: {backend: tcp}}\n").Steps[0].Nodes);
    }

    [Fact]
    public void ParamsFromMergesAReferenceStyleConfigUnderParams()
    {
        var dir = Directory.CreateTempSubdirectory("spec").FullName;
        File.WriteAllText(Path.Combine(dir, "base.yaml"), "trainer: {lr: 1.0e-4, global_batch_size: 128}\nmodel: {decoder_size: small}\n");
        File.WriteAllText(Path.Combine(dir, "job.yaml"), "kind: nested\nparams_from: base.yaml\nparams:\n  model: {decoder_size: base}\n");
        var kinds = new JobKindRegistry().Register(typeof(NestedJob), new JobKindAttribute("nested"));
        var p = (NestedParams)JobSpecs.Load(Path.Combine(dir, "job.yaml"), ["trainer.global_batch_size=64"], kinds).Steps[0].Params;
        Assert.Equal(("base", 64, 1e-4), (p.Model.DecoderSize, p.Trainer.GlobalBatchSize, p.Trainer.Lr));
        var ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Load(Path.Combine(dir, "job.yaml"), ["trainer.lr=fast"], kinds));
        Assert.StartsWith(Path.Combine(dir, "job.yaml") + ": params.trainer.lr: expected a number (double), got 'fast'", ex.Message);
    }

    [Fact]
    public void CliLoadOfDeeplyNestedSpecsAndParamsFromFilesIsAValidationErrorNotACrash()
    {
        // The CLI path (retok submit FILE): before, a 100k-level document overflowed the stack inside YamlDotNet.
        var dir = Directory.CreateTempSubdirectory("spec").FullName;
        var deep = new string('[', 100_000) + new string(']', 100_000);
        File.WriteAllText(Path.Combine(dir, "deep.yaml"), $"kind: selftest\nparams: {{n: {deep}}}\n");
        var ex = Assert.Throws<SpecValidationException>(() => JobSpecs.Load(Path.Combine(dir, "deep.yaml")));
        Assert.Contains($"spec: line 2, column", ex.Message);
        Assert.Contains($"nested deeper than the limit of {SpecYaml.MaxDepth} levels", ex.Message);

        File.WriteAllText(Path.Combine(dir, "base.yaml"), $"n: {deep}\n");
        File.WriteAllText(Path.Combine(dir, "job.yaml"), "kind: selftest\nparams_from: base.yaml\n");
        var pf = Assert.Throws<SpecValidationException>(() => JobSpecs.Load(Path.Combine(dir, "job.yaml")));
        Assert.StartsWith($"params_from base.yaml: line 1, column", Assert.Single(pf.Errors));

        File.WriteAllText(Path.Combine(dir, "big.yaml"), "kind: selftest\n#" + new string('x', SpecYaml.MaxChars));
        Assert.Contains($"over the limit of {SpecYaml.MaxChars}", Assert.Throws<SpecValidationException>(() => JobSpecs.Load(Path.Combine(dir, "big.yaml"))).Message);
    }

    public enum Mode { Train, FastEval }
    public sealed record Trainer { public double Lr { get; init; } public required int GlobalBatchSize { get; init; } public double[] Betas { get; init; } = [0.9, 0.95]; }
    public sealed record Codebook { public int Size { get; init; } = 4096; }
    public sealed record Model { public string DecoderSize { get; init; } = "base"; public Codebook? Codebook { get; init; } }
    public sealed record NestedParams { public required Trainer Trainer { get; init; } public Model Model { get; init; } = new(); public Mode Mode { get; init; } }
    public sealed class NestedJob : IJobHandler<NestedParams> { public Task RunAsync(JobContext ctx, NestedParams p) => Task.CompletedTask; }
}

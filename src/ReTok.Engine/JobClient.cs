using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using Hangfire;
using Hangfire.Common;
using Hangfire.States;
using ReTok.Tracking;

namespace ReTok.Engine;

public sealed record SubmittedRun(string Step, long RunId, string Kind, string Queue, RunStatus Status);

public sealed record SubmitResult(Guid? PipelineId, IReadOnlyList<SubmittedRun> Runs);

/// <summary>
/// The engine's front door, used by the CLI, the dashboard and tests: submit specs (validated, tracked, enqueued),
/// cancel and retry runs. Runs are created first (the row is the source of truth), then handed to Hangfire; a lost
/// enqueue (crash in between) is repaired by the workers' <see cref="Reconciler"/>.
/// </summary>
public sealed class JobClient : IAsyncDisposable
{
    readonly bool _ownsTracker;
    JobStorage? _storage;
    static string? _codeVersion;

    public JobClient(EngineOptions options, JobKindRegistry? kinds = null, Tracker? tracker = null, JobStorage? storage = null)
    {
        Options = options;
        Kinds = kinds ?? JobKindRegistry.Default;
        _ownsTracker = tracker is null;
        Tracker = tracker ?? new Tracker(options.Db, RetokSettings.CreateStore(options.Artifacts));
        _storage = storage;
    }

    public EngineOptions Options { get; }
    public JobKindRegistry Kinds { get; }
    public Tracker Tracker { get; }
    /// <summary>Hangfire's storage on the tracker's connection pool (one pool per process).</summary>
    public JobStorage Storage => _storage ??= Options.CreateStorage(Tracker.DataSource);

    /// <summary>Creates the database and applies migrations when <see cref="EngineOptions.AutoMigrate"/> (else only checks reachability).</summary>
    public async Task EnsureSchemaAsync(CancellationToken ct = default)
    {
        if (Options.AutoMigrate) await TrackingSchema.EnsureAsync(Options.Db, ct);
        else await TrackingDb.CheckReachableAsync(Options.Db, ct);
    }

    public Task<SubmitResult> SubmitFileAsync(string specPath, IEnumerable<string>? overrides = null, CancellationToken ct = default) =>
        SubmitAsync(JobSpecs.Load(specPath, overrides, Kinds), ct);

    /// <summary>Submits one job from code; <paramref name="parameters"/> must be the kind's parameters record.</summary>
    public async Task<long> SubmitAsync(string kind, object parameters, string? name = null, string? experiment = null,
        IReadOnlyDictionary<string, string>? inputs = null, string? queue = null, int nodes = 1, CancellationToken ct = default)
    {
        var k = Kinds.Get(kind);
        if (parameters.GetType() != k.ParamsType)
            throw new ArgumentException($"job kind '{kind}' takes {k.ParamsType.Name}, got {parameters.GetType().Name}");
        ParamBinder.Validate(parameters);
        if (nodes > 1 && !k.MultiNode) throw new SpecValidationException([$"nodes: job kind '{kind}' does not run on several nodes"]);
        if (nodes > 1 && parameters is IMultiNodeParams multi && multi.ValidateNodes(nodes).Select(e => $"params.{e}").ToList() is { Count: > 0 } errs)
            throw new SpecValidationException(errs);
        var step = new StepPlan(kind, k, parameters, ParamBinder.ToJson(parameters), queue ?? k.Queue, [], inputs ?? new Dictionary<string, string>(), name, Nodes: nodes);
        var r = await SubmitAsync(new SubmitPlan(null, experiment, [], [step], "", []), ct);
        return r.Runs[0].RunId;
    }

    public async Task<SubmitResult> SubmitAsync(SubmitPlan plan, CancellationToken ct = default)
    {
        CheckDataPaths(plan);
        await CheckRunInputsExistAsync(plan, ct);
        await CheckDeviceCountsAsync(plan, ct);
        long? experimentId = plan.Experiment is { } e ? await Tracker.EnsureExperimentAsync(e, ct) : null;
        var pipeline = plan.IsPipeline
            ? new Pipeline { Name = SafeText.Clean(plan.PipelineName!), SpecYaml = plan.SpecYaml, Overrides = plan.Overrides.ToList(), ExperimentId = experimentId }
            : null;
        var runs = plan.Steps.Select(s =>
        {
            var ready = s.Needs.Count == 0;
            return (Step: s, Run: new Run
            {
                Kind = s.Kind.Name, Name = SafeText.CleanOrNull(s.RunName ?? (plan.IsPipeline ? $"{plan.PipelineName}/{s.Step}" : null)),
                ExperimentId = experimentId, Status = ready ? RunStatus.Queued : RunStatus.Waiting, QueuedAt = ready ? DateTimeOffset.UtcNow : null, Gpus = s.Gpus, Nodes = s.Nodes, Priority = s.Priority,
                Parameters = s.ParamsJson, ConfigHash = s.ConfigHash, Seed = s.Seed, CodeVersion = CodeVersion, Queue = s.Queue,
                Tags = plan.Tags.Select(SafeText.Clean).ToList(), PipelineId = pipeline?.Id, PipelineStep = plan.IsPipeline ? s.Step : null,
                DependsOn = s.Needs.ToList(), Inputs = JsonSerializer.Serialize(s.Inputs),
            });
        }).ToList();
        await Tracker.Runs.CreateAsync(pipeline, runs.Select(x => x.Run).ToList(), ct);
        var created = runs.Select(x => new SubmittedRun(x.Step.Step, x.Run.Id, x.Run.Kind, x.Run.Queue, x.Run.Status)).ToList();
        foreach (var (r, s) in created.Zip(runs).Where(x => x.First.Status == RunStatus.Queued)) await EnqueueAsync(r.RunId, r.Queue, priority: s.Run.Priority, ct: ct);
        return new SubmitResult(pipeline?.Id, created);
    }

    /// <summary>Path parameters must lie inside the data roots (the worker checks again: its roots are the ones that count).</summary>
    public void CheckDataPaths(SubmitPlan plan)
    {
        var errors = plan.Steps.SelectMany(s => Options.DataRoots.Validate(s.Params, plan.IsPipeline ? $"steps.{s.Step}.params." : "params.")).ToList();
        if (errors.Count > 0) throw new SpecValidationException(errors);
    }

    async Task CheckRunInputsExistAsync(SubmitPlan plan, CancellationToken ct)
    {
        var errors = new List<string>();
        foreach (var s in plan.Steps)
        foreach (var (role, reference) in s.Inputs)
            if (InputRef.TryParse(reference, out var r) && r.RunId is { } id && await Tracker.GetArtifactAsync(id, r.Artifact, ct) is null)
                errors.Add($"{(plan.IsPipeline ? $"steps.{s.Step}." : "")}inputs.{role}: run {id} has no artifact '{r.Artifact}'");
        if (errors.Count > 0) throw new SpecValidationException(errors);
    }

    /// <summary>
    /// A step asking for more devices than any live worker of its queue has would wait forever: refused, naming the
    /// largest worker. With no live worker on the queue there is nothing to compare with (a fleet may be scaling up).
    /// </summary>
    async Task CheckDeviceCountsAsync(SubmitPlan plan, CancellationToken ct)
    {
        if (plan.Steps.All(s => s.Gpus == 1)) return;
        var workers = (await Tracker.Runs.ListWorkersAsync(ct)).Where(w => w.LastHeartbeat > DateTimeOffset.UtcNow - TimeSpan.FromMinutes(2)).ToList();
        var errors = new List<string>();
        foreach (var s in plan.Steps.Where(s => s.Gpus > 1))
        {
            var serving = workers.Select(w => (w.Id, Slots: WorkerSlots.Of(w, s.Queue))).Where(x => x.Slots.Count > 0).ToList();
            if (serving.Count == 0) continue;
            var largest = serving.MaxBy(x => x.Slots.Count);
            if (largest.Slots.Count < s.Gpus)
                errors.Add($"{(plan.IsPipeline ? $"steps.{s.Step}." : "")}gpus: {s.Gpus} devices asked, but the largest live worker on queue '{s.Queue}' " +
                           $"({largest.Id}) has {largest.Slots.Count} ({string.Join(", ", largest.Slots)})");
        }
        if (errors.Count > 0) throw new SpecValidationException(errors);
    }

    /// <summary>Hands a Queued run to Hangfire (optionally delayed) on its queue's priority variant and records the job id on the run.</summary>
    public async Task<string> EnqueueAsync(long runId, string queue, TimeSpan? delay = null, string? priority = null, CancellationToken ct = default)
    {
        priority ??= await Tracker.Runs.GetPriorityAsync(runId, ct) ?? RunPriority.Normal;
        var job = Job.FromExpression<RunExecutor>(x => x.Execute(runId, null, CancellationToken.None), RunPriority.HangfireQueue(queue, priority));
        var client = new BackgroundJobClient(Storage);
        var jobId = await Tracker.RetryAsync(_ => Task.FromResult(
            client.Create(job, delay is { } d && d > TimeSpan.Zero ? new ScheduledState(d) : new EnqueuedState())), ct);
        await Tracker.Runs.SetHangfireJobAsync(runId, jobId, ct);
        return jobId;
    }

    /// <summary>
    /// Changes the priority of a run that has not started; a Queued run moves to its queue's new variant (the old
    /// Hangfire job is deleted first: if a worker fetched it meanwhile, the run lease makes one of the two step aside).
    /// Null when the run is missing or already started.
    /// </summary>
    public async Task<RunStatus?> SetPriorityAsync(long runId, string priority, CancellationToken ct = default)
    {
        if (await Tracker.Runs.SetPriorityAsync(runId, priority, ct) is not { } r) return null;
        if (r.Status == RunStatus.Queued)
        {
            if (r.HangfireJobId is { } old) await Tracker.RetryAsync(_ => Task.FromResult(new BackgroundJobClient(Storage).Delete(old)), ct);
            await EnqueueAsync(runId, r.Queue, priority: priority, ct: ct);
        }
        return r.Status;
    }

    /// <summary>
    /// Cancels a run, its shards/aggregator and the waiting pipeline steps after it (see <see cref="RunStore.RequestCancelAsync"/>).
    /// The Hangfire jobs of runs cancelled while queued are deleted too: Hangfire's dashboard shows them Deleted instead
    /// of Enqueued, and a worker discards them unstarted (one that fetched a job meanwhile finds the run Cancelled).
    /// </summary>
    public async Task<CancelOutcome> CancelAsync(long runId, CancellationToken ct = default)
    {
        var outcome = await Tracker.Runs.RequestCancelAsync(runId, ct);
        if (outcome.CancelledNow.Count == 0) return outcome;
        var hangfire = new BackgroundJobClient(Storage);
        foreach (var r in await Tracker.Runs.GetManyAsync(outcome.CancelledNow, ct))
            if (r.HangfireJobId is { } job) await Tracker.RetryAsync(_ => Task.FromResult(hangfire.Delete(job)), ct);
        return outcome;
    }

    /// <summary>
    /// Re-queues a Failed or Cancelled run (a failed shard is retried alone; its aggregator keeps waiting for it).
    /// A run whose pipeline needs or shards are not complete goes back to Waiting instead. Returns the new status, or null if not retryable.
    /// </summary>
    public async Task<RunStatus?> RetryAsync(long runId, CancellationToken ct = default)
    {
        // no worker serves an import's queue: a failed import is redone by importing again
        if ((await Tracker.Runs.GetAsync(runId, ct))?.Kind == ImportKind) return null;
        if (await Tracker.Runs.ResetForRetryAsync(runId, ct) is not { } r) return null;
        if (r.Status == RunStatus.Queued) await EnqueueAsync(runId, r.Queue, ct: ct);
        return r.Status;
    }

    /// <summary>The kind of the runs <see cref="ImportAsync"/> makes; no handler runs it and no worker serves its queue.</summary>
    public const string ImportKind = "import";

    /// <summary>
    /// `retok artifacts import`: files made elsewhere (the authors' released checkpoints, an ADM reference batch) become
    /// the artifacts of a new run of kind <see cref="ImportKind"/>, so specs take them as inputs (`run:ID/NAME`) with their
    /// sha256 in the lineage like any job's output. The run goes Queued -> Running -> Succeeded under a lease held by this
    /// client (the same transitions and fenced writes as a job; no Hangfire job), and fails, naming the file, if one
    /// cannot be stored. Its parameters record each file's source path and size.
    /// </summary>
    public async Task<long> ImportAsync(IReadOnlyList<(string Name, string Path)> files, string? runName = null, string? experiment = null, CancellationToken ct = default)
    {
        if (files.Count == 0) throw new ArgumentException("nothing to import: give at least one file");
        var errors = files.Where(f => !File.Exists(f.Path)).Select(f => $"{f.Path}: no such file").ToList();
        errors.AddRange(files.GroupBy(f => f.Name).Where(g => g.Count() > 1).Select(g => $"artifact name '{g.Key}' given {g.Count()} times"));
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        long? experimentId = experiment is { } e ? await Tracker.EnsureExperimentAsync(e, ct) : null;
        var parameters = JsonSerializer.Serialize(new
        {
            files = files.Select(f => new { name = f.Name, source = System.IO.Path.GetFullPath(f.Path), size_bytes = new FileInfo(f.Path).Length }),
        });
        var run = new Run
        {
            Kind = ImportKind, Name = SafeText.CleanOrNull(runName), ExperimentId = experimentId, Status = RunStatus.Queued, QueuedAt = DateTimeOffset.UtcNow,
            Parameters = parameters, ConfigHash = StepPlan.ConfigHashOf(ImportKind, parameters), CodeVersion = CodeVersion, Queue = ImportKind, Gpus = 0,
        };
        await Tracker.Runs.CreateAsync(null, [run], ct);
        var lease = await Tracker.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest($"import-{Environment.MachineName}-{Environment.ProcessId}", TimeSpan.FromHours(6), Host: Environment.MachineName), ct)
            ?? throw new InvalidOperationException($"run {run.Id}: could not take the lease of the new import run");
        foreach (var (name, path) in files)
        {
            try
            {
                await Tracker.SaveArtifactFileAsync(run.Id, name, path, new ArtifactSaveOptions { Kind = ArtifactKindOf(path) }, lease.Fence, ct);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                await Tracker.Runs.FailAsync(lease, $"import of {path} as '{name}' failed: {ex.GetType().Name}", CancellationToken.None);
                throw;
            }
        }
        await Tracker.Runs.SucceedAsync(lease, ct);
        return run.Id;
    }

    static string ArtifactKindOf(string path) => System.IO.Path.GetExtension(path).ToLowerInvariant() switch
    {
        ".pt" or ".pth" or ".ckpt" => "checkpoint", ".safetensors" => "safetensors", ".npz" => "npz", ".npy" => "npy",
        ".yaml" or ".yml" => "yaml", ".json" => "json", ".png" or ".jpg" or ".jpeg" => "image", ".tar" => "tar", _ => "other",
    };

    /// <summary>RETOK_CODE_VERSION, else the git commit of the working copy, else the assembly version.</summary>
    public static string CodeVersion => _codeVersion ??= ResolveCodeVersion();

    static string ResolveCodeVersion()
    {
        if (Environment.GetEnvironmentVariable("RETOK_CODE_VERSION") is { Length: > 0 } v) return v;
        try
        {
            var psi = new ProcessStartInfo("git", "describe --always --dirty --abbrev=12")
            { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = AppContext.BaseDirectory };
            using var p = Process.Start(psi)!;
            var output = p.StandardOutput.ReadToEnd().Trim();
            if (p.WaitForExit(3000) && p.ExitCode == 0 && output.Length > 0) return output;
        }
        catch (Exception) { /* no git */ }
        return typeof(JobClient).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";
    }

    public async ValueTask DisposeAsync()
    {
        if (_ownsTracker) await Tracker.DisposeAsync();
    }
}

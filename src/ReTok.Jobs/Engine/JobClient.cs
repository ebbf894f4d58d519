using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using Hangfire;
using Hangfire.Common;
using Hangfire.States;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using ReTok.Tracking;

namespace ReTok.Jobs.Engine;

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
        IReadOnlyDictionary<string, string>? inputs = null, string? queue = null, CancellationToken ct = default)
    {
        var k = Kinds.Get(kind);
        if (parameters.GetType() != k.ParamsType)
            throw new ArgumentException($"job kind '{kind}' takes {k.ParamsType.Name}, got {parameters.GetType().Name}");
        ParamBinder.Validate(parameters);
        var step = new StepPlan(kind, k, parameters, ParamBinder.ToJson(parameters), queue ?? k.Queue, [], inputs ?? new Dictionary<string, string>(), name);
        var r = await SubmitAsync(new SubmitPlan(null, experiment, [], [step], "", []), ct);
        return r.Runs[0].RunId;
    }

    public async Task<SubmitResult> SubmitAsync(SubmitPlan plan, CancellationToken ct = default)
    {
        CheckDataPaths(plan);
        await CheckRunInputsExistAsync(plan, ct);
        long? experimentId = plan.Experiment is { } e ? await Tracker.EnsureExperimentAsync(e, ct) : null;
        var created = await Tracker.InTransactionAsync(null, async (conn, tx, t) =>
        {
            await using var db = TrackingDb.Create(conn);
            await db.Database.UseTransactionAsync(tx, t);
            Guid? pipelineId = null;
            if (plan.IsPipeline)
            {
                var p = new Pipeline { Name = SafeText.Clean(plan.PipelineName!), SpecYaml = plan.SpecYaml, Overrides = plan.Overrides.ToList(), ExperimentId = experimentId };
                db.Pipelines.Add(p);
                pipelineId = p.Id;
            }
            var runs = new List<(StepPlan Step, Run Run)>();
            foreach (var s in plan.Steps)
            {
                var ready = s.Needs.Count == 0;
                var run = new Run
                {
                    Kind = s.Kind.Name, Name = SafeText.CleanOrNull(s.RunName ?? (plan.IsPipeline ? $"{plan.PipelineName}/{s.Step}" : null)),
                    ExperimentId = experimentId, Status = ready ? RunStatus.Queued : RunStatus.Waiting, QueuedAt = ready ? DateTimeOffset.UtcNow : null,
                    Parameters = s.ParamsJson, ConfigHash = s.ConfigHash, Seed = s.Seed, CodeVersion = CodeVersion, Queue = s.Queue,
                    Tags = plan.Tags.Select(SafeText.Clean).ToList(), PipelineId = pipelineId, PipelineStep = plan.IsPipeline ? s.Step : null,
                    DependsOn = s.Needs.ToList(), Inputs = JsonSerializer.Serialize(s.Inputs),
                };
                db.Runs.Add(run);
                runs.Add((s, run));
            }
            await db.SaveChangesAsync(t);
            return (pipelineId, runs.Select(x => new SubmittedRun(x.Step.Step, x.Run.Id, x.Run.Kind, x.Run.Queue, x.Run.Status)).ToList());
        }, ct);
        foreach (var r in created.Item2.Where(r => r.Status == RunStatus.Queued)) await EnqueueAsync(r.RunId, r.Queue, ct: ct);
        return new SubmitResult(created.pipelineId, created.Item2);
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

    /// <summary>Hands a Queued run to Hangfire (optionally delayed) and records the job id on the run.</summary>
    public async Task<string> EnqueueAsync(long runId, string queue, TimeSpan? delay = null, CancellationToken ct = default)
    {
        var job = Job.FromExpression<RunExecutor>(x => x.Execute(runId, null, CancellationToken.None), queue);
        var client = new BackgroundJobClient(Storage);
        var jobId = await Tracker.RetryAsync(_ => Task.FromResult(
            client.Create(job, delay is { } d && d > TimeSpan.Zero ? new ScheduledState(d) : new EnqueuedState())), ct);
        await Tracker.RetryAsync(async t =>
        {
            await using var cmd = Tracker.DataSource.CreateCommand("UPDATE retok.runs SET hangfire_job_id = @j WHERE id = @id AND status = 'Queued'");
            cmd.Parameters.AddWithValue("j", jobId);
            cmd.Parameters.AddWithValue("id", runId);
            return await cmd.ExecuteNonQueryAsync(t);
        }, ct);
        return jobId;
    }

    /// <summary>Cancels a run, its shards/aggregator and the waiting pipeline steps after it (see <see cref="RunStore.RequestCancelAsync"/>).</summary>
    public Task<CancelOutcome> CancelAsync(long runId, CancellationToken ct = default) => Tracker.Runs.RequestCancelAsync(runId, ct);

    /// <summary>
    /// Re-queues a Failed or Cancelled run (a failed shard is retried alone; its aggregator keeps waiting for it).
    /// A run whose pipeline needs or shards are not complete goes back to Waiting instead. Returns the new status, or null if not retryable.
    /// </summary>
    public async Task<RunStatus?> RetryAsync(long runId, CancellationToken ct = default)
    {
        var result = await Tracker.InTransactionAsync<(RunStatus, string)?>(null, async (c, tx, t) =>
        {
            await using var cmd = new NpgsqlCommand("""
                WITH target AS (SELECT id, pipeline_id, depends_on, pending_children, queue FROM retok.runs WHERE id = @id AND status IN ('Failed', 'Cancelled') FOR UPDATE),
                     done AS (SELECT array_agg(DISTINCT pipeline_step) AS steps FROM retok.runs r, target
                              WHERE r.pipeline_id = target.pipeline_id AND r.status = 'Succeeded' AND r.fan_in_run_id IS NULL AND r.continued_by_run_id IS NULL)
                UPDATE retok.runs r SET
                    status = CASE WHEN target.pending_children = 0 AND (cardinality(target.depends_on) = 0 OR target.depends_on <@ coalesce(done.steps, '{}'))
                                  THEN 'Queued' ELSE 'Waiting' END,
                    queued_at = now(), cancel_requested = false, failure_reason = NULL, finished_at = NULL, attempt = 0,
                    lease_owner = NULL, lease_expires_at = NULL, hangfire_job_id = NULL, progress_message = 'retry requested'
                FROM target, done WHERE r.id = target.id
                RETURNING r.status, r.queue
                """, c, tx);
            cmd.Parameters.AddWithValue("id", runId);
            await using var rd = await cmd.ExecuteReaderAsync(t);
            if (!await rd.ReadAsync(t)) return null;
            return (Enum.Parse<RunStatus>(rd.GetString(0)), rd.GetString(1));
        }, ct);
        if (result is not { } r) return null;
        if (r.Item1 == RunStatus.Queued) await EnqueueAsync(runId, r.Item2, ct: ct);
        return r.Item1;
    }

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

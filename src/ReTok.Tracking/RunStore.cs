using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace ReTok.Tracking;

/// <summary>A run to spawn from a running one: its kind, validated parameters (JSON), their config hash and its queue.</summary>
/// <summary>A run to create at fan-out: its kind, parameters and queue, the parent's inputs (as run:ID/NAME) and its fan-out state.</summary>
public sealed record ChildRun(string Kind, string Parameters, string ConfigHash, string Queue, string Inputs = "{}", string? FanOutState = null);

public sealed record FanOut(long AggregatorRunId, IReadOnlyList<long> ShardRunIds);

/// <summary>
/// Every statement that changes runs, pipelines and workers, as Hangfire keeps every SQL statement in its storage package
/// behind <c>IStorageConnection</c>: the engine keeps only the Hangfire side (enqueueing, job state) and the dashboard
/// and CLI act through this store. Status changes are checked against one table, <see cref="Transitions"/>, the role of
/// Hangfire's <c>StateMachine</c>.
/// </summary>
public sealed partial class RunStore
{
    readonly Tracker _t;

    internal RunStore(Tracker tracker) => _t = tracker;

    /// <summary>The statuses a run is created in: Waiting while pipeline needs or shards are pending, else Queued.</summary>
    public static readonly IReadOnlySet<RunStatus> Initial = new HashSet<RunStatus> { RunStatus.Waiting, RunStatus.Queued };

    /// <summary>The allowed status changes. Every status-changing statement takes its guard from <see cref="Change"/>, which refuses a pair not listed here.</summary>
    public static readonly IReadOnlyDictionary<RunStatus, IReadOnlySet<RunStatus>> Transitions = new Dictionary<RunStatus, IReadOnlySet<RunStatus>>
    {
        // queued when the last need or shard succeeds; cancelled with an upstream run
        [RunStatus.Waiting] = new HashSet<RunStatus> { RunStatus.Queued, RunStatus.Cancelled },
        [RunStatus.Queued] = new HashSet<RunStatus> { RunStatus.Running, RunStatus.Cancelled },
        // Running -> Running is a takeover of an expired lease; -> Queued a graceful release, a transient-failure retry or
        // the reconciler's re-queue of a long-expired lease; cancelling a running run only sets CancelRequested.
        [RunStatus.Running] = new HashSet<RunStatus> { RunStatus.Running, RunStatus.Queued, RunStatus.Succeeded, RunStatus.Failed, RunStatus.Cancelled },
        [RunStatus.Succeeded] = new HashSet<RunStatus>(),
        // `retry`: Queued, or Waiting while pipeline needs or shards are incomplete
        [RunStatus.Failed] = new HashSet<RunStatus> { RunStatus.Queued, RunStatus.Waiting },
        [RunStatus.Cancelled] = new HashSet<RunStatus> { RunStatus.Queued, RunStatus.Waiting },
    };

    public static bool IsAllowed(RunStatus from, RunStatus to) => Transitions[from].Contains(to);

    /// <summary>A checked status change in SQL: <see cref="To"/> is the new status as a literal, <see cref="Where"/> the guard on the old one.</summary>
    readonly record struct StatusChange(string To, string Where);

    /// <summary>The change from any of <paramref name="from"/> to <paramref name="to"/>; throws if the table lacks one of those moves.</summary>
    static StatusChange Change(RunStatus[] from, RunStatus to, string column = "status")
    {
        foreach (var f in from)
            if (!IsAllowed(f, to)) throw new InvalidOperationException($"run status {f} -> {to} is not an allowed transition");
        return new StatusChange($"'{to}'", $"{column} IN ({string.Join(", ", from.Select(s => $"'{s}'"))})");
    }

    // ---------------------------------------------------------------- creation

    /// <summary>Inserts a submission in one transaction: the pipeline row (if any) and its runs, which get their ids.</summary>
    public Task CreateAsync(Pipeline? pipeline, IReadOnlyList<Run> runs, CancellationToken ct = default)
    {
        if (runs.FirstOrDefault(r => !Initial.Contains(r.Status)) is { } bad) throw new InvalidOperationException($"a run is created Waiting or Queued, not {bad.Status}");
        return _t.InTransactionAsync(null, async (conn, tx, t) =>
        {
            await using var db = TrackingDb.Create(conn);
            await db.Database.UseTransactionAsync(tx, t);
            if (pipeline is not null) db.Pipelines.Add(pipeline);
            foreach (var r in runs) r.Id = 0; // a retried transaction inserts afresh
            db.Runs.AddRange(runs);
            await db.SaveChangesAsync(t);
        }, ct);
    }

    /// <summary>
    /// Test fixtures only: inserts one run as given, in any status, bypassing <see cref="Initial"/> and <see cref="Transitions"/>,
    /// and returns it with its id. Internal (visible to ReTok.Tests): every production insert is <see cref="CreateAsync"/> or <see cref="SpawnShardsAsync"/>.
    /// </summary>
    internal Task<Run> InsertAsync(Run run, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            run.Id = 0;
            db.Runs.Add(run);
            await db.SaveChangesAsync(t);
            db.Entry(run).State = EntityState.Detached;
            return run;
        }, ct);

    /// <summary>
    /// The fan-out of the fenced run, in one transaction: one Queued run per shard and one aggregator, Waiting for them
    /// (Queued when there are none), which takes over the parent's pipeline step. Idempotent: the parent row is locked,
    /// and a parent that spawned before gets that fan-out back with Created false.
    /// </summary>
    public Task<(FanOut Fan, bool Created)> SpawnShardsAsync(Fence parentFence, ChildRun aggregator, IReadOnlyList<ChildRun> shards, CancellationToken ct = default) =>
        _t.InTransactionAsync(parentFence, async (conn, tx, t) =>
        {
            await using var db = TrackingDb.Create(conn);
            await db.Database.UseTransactionAsync(tx, t);
            var parent = await db.Runs.FromSqlInterpolated($"SELECT * FROM retok.runs WHERE id = {parentFence.RunId} FOR UPDATE").SingleAsync(t);
            if (parent.ContinuedByRunId is { } existing)
            {
                var ids = await db.Runs.Where(r => r.FanInRunId == existing).OrderBy(r => r.ShardIndex).Select(r => r.Id).ToListAsync(t);
                return (new FanOut(existing, ids), false);
            }
            Run Child(ChildRun c) => new()
            {
                Kind = c.Kind, Parameters = c.Parameters, ConfigHash = c.ConfigHash, Seed = parent.Seed, CodeVersion = parent.CodeVersion,
                Queue = c.Queue, Priority = parent.Priority, Tags = parent.Tags.ToList(), ExperimentId = parent.ExperimentId, ParentRunId = parent.Id,
                PipelineId = parent.PipelineId, PipelineStep = parent.PipelineStep, Inputs = c.Inputs, FanOutState = c.FanOutState,
            };
            var agg = Child(aggregator);
            agg.Name = $"{parent.Name ?? $"run {parent.Id}"}/aggregate";
            agg.Status = shards.Count == 0 ? RunStatus.Queued : RunStatus.Waiting;
            agg.QueuedAt = shards.Count == 0 ? DateTimeOffset.UtcNow : null;
            agg.PendingChildren = shards.Count;
            db.Runs.Add(agg);
            await db.SaveChangesAsync(t);
            var runs = shards.Select((c, i) =>
            {
                var s = Child(c);
                s.Name = $"{parent.Name ?? $"run {parent.Id}"}/shard-{i}";
                s.Status = RunStatus.Queued; s.QueuedAt = DateTimeOffset.UtcNow; s.FanInRunId = agg.Id; s.ShardIndex = i;
                return s;
            }).ToList();
            db.Runs.AddRange(runs);
            parent.ContinuedByRunId = agg.Id;
            await db.SaveChangesAsync(t);
            return (new FanOut(agg.Id, runs.Select(s => s.Id).ToList()), true);
        }, ct);

    // ---------------------------------------------------------------- queueing

    /// <summary>Records the Hangfire job that carries a Queued run (the reconciler checks that job's state).</summary>
    public Task SetHangfireJobAsync(long runId, string jobId, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var cmd = _t.DataSource.CreateCommand("UPDATE retok.runs SET hangfire_job_id = @j WHERE id = @id AND status = 'Queued'");
            cmd.Parameters.AddWithValue("j", jobId);
            cmd.Parameters.AddWithValue("id", runId);
            return await cmd.ExecuteNonQueryAsync(t);
        }, ct);

    /// <summary>The run's priority (null when the run does not exist): the Hangfire queue variant it is enqueued on.</summary>
    public Task<string?> GetPriorityAsync(long runId, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var cmd = _t.DataSource.CreateCommand("SELECT priority FROM retok.runs WHERE id = @id");
            cmd.Parameters.AddWithValue("id", runId);
            return await cmd.ExecuteScalarAsync(t) as string;
        }, ct);

    /// <summary>
    /// Sets the priority of a run that has not started (Waiting or Queued; a started run keeps its device). Returns the
    /// run's status, queue and Hangfire job after the change, or null when the run is missing or already started.
    /// </summary>
    public Task<(RunStatus Status, string Queue, string? HangfireJobId)?> SetPriorityAsync(long runId, string priority, CancellationToken ct = default) =>
        _t.RetryAsync<(RunStatus, string, string?)?>(async t =>
        {
            if (!RunPriority.IsValid(priority)) throw new ArgumentException($"priority: expected high, normal or low, got '{priority}'");
            await using var cmd = _t.DataSource.CreateCommand(
                "UPDATE retok.runs SET priority = @p WHERE id = @id AND status IN ('Waiting', 'Queued') RETURNING status, queue, hangfire_job_id");
            cmd.Parameters.AddWithValue("p", priority);
            cmd.Parameters.AddWithValue("id", runId);
            await using var rd = await cmd.ExecuteReaderAsync(t);
            if (!await rd.ReadAsync(t)) return null;
            return (Enum.Parse<RunStatus>(rd.GetString(0)), rd.GetString(1), rd.IsDBNull(2) ? null : rd.GetString(2));
        }, ct);

    /// <summary>
    /// Resets a Failed or Cancelled run for another try (attempts, lease, job and failure cleared): Queued, or Waiting
    /// while its pipeline needs or shards are incomplete. Returns the new status and the run's queue; null if not retryable.
    /// </summary>
    public Task<(RunStatus Status, string Queue)?> ResetForRetryAsync(long runId, CancellationToken ct = default) =>
        _t.InTransactionAsync<(RunStatus, string)?>(null, async (c, tx, t) =>
        {
            var queue = Change([RunStatus.Failed, RunStatus.Cancelled], RunStatus.Queued);
            var wait = Change([RunStatus.Failed, RunStatus.Cancelled], RunStatus.Waiting);
            await using var cmd = new NpgsqlCommand($$"""
                WITH target AS (SELECT id, pipeline_id, depends_on, pending_children, queue FROM retok.runs WHERE id = @id AND {{queue.Where}} FOR UPDATE),
                     done AS (SELECT array_agg(DISTINCT pipeline_step) AS steps FROM retok.runs r, target
                              WHERE r.pipeline_id = target.pipeline_id AND r.status = 'Succeeded' AND r.fan_in_run_id IS NULL AND r.continued_by_run_id IS NULL)
                UPDATE retok.runs r SET
                    status = CASE WHEN target.pending_children = 0 AND (cardinality(target.depends_on) = 0 OR target.depends_on <@ coalesce(done.steps, '{}'))
                                  THEN {{queue.To}} ELSE {{wait.To}} END,
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
}

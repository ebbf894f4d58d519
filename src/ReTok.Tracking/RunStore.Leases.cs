using Npgsql;

namespace ReTok.Tracking;

/// <summary>Who wants to execute a run, and for how long a lease lasts without a heartbeat.</summary>
public sealed record LeaseRequest(string Owner, TimeSpan Ttl, string? Host = null, string? Device = null, string? HangfireJobId = null);

/// <summary>A held run lease. <see cref="Generation"/> is the fencing number: it grows by one at every acquisition.</summary>
public sealed record Lease(long RunId, long Generation, string Owner, int Attempt, bool CancelRequested)
{
    public Fence Fence => new(RunId, Generation);
}

public sealed record ProgressSnapshot(double Fraction, string? Message, double? EtaSeconds, DateTimeOffset At);

public sealed record LeaseRenewal(bool Held, bool CancelRequested);

public sealed record CancelOutcome(long RunId, List<long> CancelledNow, List<long> CancelRequested)
{
    public bool Any => CancelledNow.Count + CancelRequested.Count > 0;
}

/// <summary>
/// Run leases. Hangfire is at-least-once (a job can be fetched again after the invisibility timeout while the first
/// execution still runs, Hangfire.PostgreSql issues #130/#352/#381), so the run row carries its own lease: an owner,
/// an expiry renewed by heartbeats and a generation number. A second executor cannot acquire a live lease; after a
/// takeover every fenced write of the old executor fails with <see cref="LeaseLostException"/>.
/// </summary>
public sealed partial class RunStore
{
    /// <summary>The fence check of every fenced transaction (<see cref="Tracker.InTransactionAsync{T}"/>): the run's lease generation must still be <paramref name="f"/>'s.</summary>
    internal static async Task CheckFenceAsync(NpgsqlConnection conn, NpgsqlTransaction tx, Fence f, CancellationToken ct)
    {
        // FOR SHARE: a concurrent lease takeover (an UPDATE of this row) waits until we commit, so the check stays true for our writes.
        await using var cmd = new NpgsqlCommand("SELECT lease_generation FROM retok.runs WHERE id = @id FOR SHARE", conn, tx);
        cmd.Parameters.AddWithValue("id", f.RunId);
        var gen = await cmd.ExecuteScalarAsync(ct);
        if (gen is not long g) throw new LeaseLostException($"run {f.RunId} does not exist");
        if (g != f.Generation)
            throw new LeaseLostException($"run {f.RunId}: lease generation is {g}, this executor holds {f.Generation}; another executor took over, write refused");
    }

    /// <summary>Acquires the lease if the run is Queued/Running and no live lease exists; null otherwise.</summary>
    public Task<Lease?> TryAcquireLeaseAsync(long runId, LeaseRequest req, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            var run = Change([RunStatus.Queued, RunStatus.Running], RunStatus.Running);
            await using var cmd = _t.DataSource.CreateCommand($"""
                UPDATE retok.runs SET lease_owner = @owner, lease_generation = lease_generation + 1,
                       lease_takeovers = lease_takeovers + CASE WHEN lease_owner IS NOT NULL AND lease_owner <> @owner THEN 1 ELSE 0 END,
                       lease_expires_at = now() + make_interval(secs => @ttl), status = {run.To}, attempt = attempt + 1,
                       started_at = coalesce(started_at, now()), host = coalesce(@host, host), device = coalesce(@device, device),
                       hangfire_job_id = coalesce(@job, hangfire_job_id), progress_at = now()
                WHERE id = @id AND {run.Where}
                  AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at < now() OR lease_owner = @owner)
                RETURNING lease_generation, attempt, cancel_requested
                """);
            cmd.Parameters.AddWithValue("id", runId);
            cmd.Parameters.AddWithValue("owner", req.Owner);
            cmd.Parameters.AddWithValue("ttl", req.Ttl.TotalSeconds);
            cmd.Parameters.AddWithValue("host", (object?)req.Host ?? DBNull.Value);
            cmd.Parameters.AddWithValue("device", (object?)req.Device ?? DBNull.Value);
            cmd.Parameters.AddWithValue("job", (object?)req.HangfireJobId ?? DBNull.Value);
            await using var rd = await cmd.ExecuteReaderAsync(t);
            if (!await rd.ReadAsync(t)) return null;
            return new Lease(runId, rd.GetInt64(0), req.Owner, rd.GetInt32(1), rd.GetBoolean(2));
        }, ct);

    /// <summary>Heartbeat: extends the lease and publishes progress; tells whether the lease is still ours and whether a cancel was asked.</summary>
    public Task<LeaseRenewal> RenewLeaseAsync(Lease lease, TimeSpan ttl, ProgressSnapshot? progress = null, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var cmd = _t.DataSource.CreateCommand(progress is null
                ? """
                  UPDATE retok.runs SET lease_expires_at = now() + make_interval(secs => @ttl)
                  WHERE id = @id AND lease_generation = @gen AND lease_owner = @owner RETURNING cancel_requested
                  """
                : """
                  UPDATE retok.runs SET lease_expires_at = now() + make_interval(secs => @ttl),
                         progress = @p, progress_message = @m, eta_seconds = @eta, progress_at = @at
                  WHERE id = @id AND lease_generation = @gen AND lease_owner = @owner RETURNING cancel_requested
                  """);
            cmd.Parameters.AddWithValue("id", lease.RunId);
            cmd.Parameters.AddWithValue("gen", lease.Generation);
            cmd.Parameters.AddWithValue("owner", lease.Owner);
            cmd.Parameters.AddWithValue("ttl", ttl.TotalSeconds);
            if (progress is not null)
            {
                cmd.Parameters.AddWithValue("p", progress.Fraction);
                cmd.Parameters.AddWithValue("m", (object?)SafeText.CleanOrNull(progress.Message) ?? DBNull.Value);
                cmd.Parameters.AddWithValue("eta", (object?)progress.EtaSeconds ?? DBNull.Value);
                cmd.Parameters.AddWithValue("at", progress.At.ToUniversalTime());
            }
            var r = await cmd.ExecuteScalarAsync(t);
            return r is bool cancel ? new LeaseRenewal(true, cancel) : new LeaseRenewal(false, false);
        }, ct);

    /// <summary>
    /// Gives the run back to the queue (graceful shutdown, transient-failure retry): status Queued, lease cleared.
    /// <paramref name="refundAttempt"/> (graceful shutdown) un-counts this execution, so restarts of a fleet never use
    /// up a run's MaxAttempts, which only crashes and transient faults should.
    /// </summary>
    public Task<bool> ReleaseToQueueAsync(Lease lease, string? note = null, string? failure = null, bool refundAttempt = false, CancellationToken ct = default) =>
        _t.InTransactionAsync<bool>(null, async (c, tx, t) =>
        {
            var run = Change([RunStatus.Running], RunStatus.Queued);
            await using var cmd = new NpgsqlCommand($"""
                UPDATE retok.runs SET status = {run.To}, queued_at = now(), lease_owner = NULL, lease_expires_at = NULL,
                       failure_reason = @failure, progress_message = coalesce(@note, progress_message),
                       attempt = CASE WHEN @refund THEN greatest(attempt - 1, 0) ELSE attempt END
                WHERE id = @id AND lease_generation = @gen AND {run.Where}
                """, c, tx);
            cmd.Parameters.AddWithValue("id", lease.RunId);
            cmd.Parameters.AddWithValue("gen", lease.Generation);
            cmd.Parameters.AddWithValue("note", (object?)SafeText.CleanOrNull(note) ?? DBNull.Value);
            cmd.Parameters.AddWithValue("failure", failure is null ? DBNull.Value : SafeText.Clean(Redact.Secrets(failure)));
            cmd.Parameters.AddWithValue("refund", refundAttempt);
            return await cmd.ExecuteNonQueryAsync(t) == 1;
        }, ct);

    /// <summary>
    /// Cancels a run and everything that can no longer run without it: its shards and aggregator (descendants) and the
    /// waiting pipeline steps downstream of it. Runs not yet started become Cancelled at once; running ones get
    /// CancelRequested, which their executor sees at its next heartbeat.
    /// </summary>
    public Task<CancelOutcome> RequestCancelAsync(long runId, CancellationToken ct = default) =>
        _t.InTransactionAsync(null, async (c, tx, t) =>
        {
            var ids = new List<long> { runId };
            await using (var cmd = new NpgsqlCommand("""
                WITH RECURSIVE tree(id) AS (
                    SELECT @id::bigint
                    UNION
                    SELECT r.id FROM retok.runs r JOIN tree ON r.parent_run_id = tree.id OR r.fan_in_run_id = tree.id
                        OR r.id = (SELECT p.continued_by_run_id FROM retok.runs p WHERE p.id = tree.id))
                SELECT id FROM tree
                """, c, tx))
            {
                cmd.Parameters.AddWithValue("id", runId);
                await using var rd = await cmd.ExecuteReaderAsync(t);
                ids.Clear();
                while (await rd.ReadAsync(t)) ids.Add(rd.GetInt64(0));
            }
            ids.AddRange(await DownstreamWaitingAsync(c, tx, runId, t));
            var arr = ids.Distinct().ToArray();
            var now = new List<long>();
            var requested = new List<long>();
            var cancel = Change([RunStatus.Waiting, RunStatus.Queued], RunStatus.Cancelled);
            var active = await QueuedAmongAsync(c, tx, arr, t);   // webhooks: did this cancel end an active run (RunStore.Webhooks.cs)
            await using (var cmd = new NpgsqlCommand($"""
                UPDATE retok.runs SET status = {cancel.To}, finished_at = now(), cancel_requested = true,
                       failure_reason = 'cancelled before it started' WHERE id = ANY(@ids) AND {cancel.Where} RETURNING id
                """, c, tx))
            {
                cmd.Parameters.AddWithValue("ids", arr);
                await using var rd = await cmd.ExecuteReaderAsync(t);
                while (await rd.ReadAsync(t)) now.Add(rd.GetInt64(0));
            }
            await using (var cmd = new NpgsqlCommand("UPDATE retok.runs SET cancel_requested = true WHERE id = ANY(@ids) AND status = 'Running' RETURNING id", c, tx))
            {
                cmd.Parameters.AddWithValue("ids", arr);
                await using var rd = await cmd.ExecuteReaderAsync(t);
                while (await rd.ReadAsync(t)) requested.Add(rd.GetInt64(0));
            }
            // webhooks: the run asked to cancel reports, not what the cascade took with it (RunStore.Webhooks.cs)
            await OutboxAsync(c, tx, now.Contains(runId) ? [runId] : [], true, t, pipelineRuns: now.Where(active.Contains).ToArray());
            return new CancelOutcome(runId, now, requested);
        }, ct);

    /// <summary>Waiting runs of the same pipeline that (transitively) need the step of <paramref name="runId"/>.</summary>
    static async Task<List<long>> DownstreamWaitingAsync(NpgsqlConnection c, NpgsqlTransaction tx, long runId, CancellationToken t)
    {
        await using var cmd = new NpgsqlCommand("""
            WITH RECURSIVE down(id, step, pipeline_id) AS (
                SELECT id, pipeline_step, pipeline_id FROM retok.runs WHERE id = @id AND pipeline_id IS NOT NULL AND pipeline_step IS NOT NULL
                UNION SELECT r.id, r.pipeline_step, r.pipeline_id FROM retok.runs r JOIN down d
                      ON r.pipeline_id = d.pipeline_id AND d.step = ANY(r.depends_on) AND r.status = 'Waiting')
            SELECT id FROM down WHERE id <> @id
            """, c, tx);
        cmd.Parameters.AddWithValue("id", runId);
        await using var rd = await cmd.ExecuteReaderAsync(t);
        var ids = new List<long>();
        while (await rd.ReadAsync(t)) ids.Add(rd.GetInt64(0));
        return ids;
    }
}

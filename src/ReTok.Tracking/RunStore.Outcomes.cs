using Npgsql;

namespace ReTok.Tracking;

/// <summary>A run that became Queued inside a transaction and must be handed to the queue (Hangfire) after the commit.</summary>
public sealed record ReadyRun(long RunId, string Queue);

/// <summary>
/// Terminal transitions of a leased run. Each is one transaction guarded by the lease generation, so a stale executor
/// changes nothing. Success also does the fan-in and pipeline bookkeeping in the same transaction:
/// <list type="bullet">
/// <item>a shard decrements its aggregator's PendingChildren; the one decrement that reaches 0 queues the aggregator.
/// The row lock of the UPDATE serialises concurrent shards, and the shard's own Running->Succeeded update happens in the
/// same transaction, so a re-executed shard can never decrement twice (fan-in without Hangfire Pro batches).</item>
/// <item>a pipeline step's final run locks the pipeline row, then queues every Waiting step whose needs all succeeded; the
/// lock makes two steps finishing together see each other's success.</item>
/// </list>
/// </summary>
public sealed partial class RunStore
{
    public Task<List<ReadyRun>> SucceedAsync(Lease lease, CancellationToken ct = default) =>
        _t.InTransactionAsync(null, async (c, tx, t) =>
        {
            long? fanIn; Guid? pipeline; string? step; long? continuedBy;
            var run = Change([RunStatus.Running], RunStatus.Succeeded);
            await using (var cmd = new NpgsqlCommand($"""
                UPDATE retok.runs SET status = {run.To}, finished_at = now(), progress = 1, eta_seconds = 0,
                       lease_owner = NULL, lease_expires_at = NULL, failure_reason = NULL
                WHERE id = @id AND lease_generation = @gen AND {run.Where}
                RETURNING fan_in_run_id, pipeline_id, pipeline_step, continued_by_run_id
                """, c, tx))
            {
                cmd.Parameters.AddWithValue("id", lease.RunId);
                cmd.Parameters.AddWithValue("gen", lease.Generation);
                await using var rd = await cmd.ExecuteReaderAsync(t);
                if (!await rd.ReadAsync(t)) throw new LeaseLostException($"run {lease.RunId}: lease generation {lease.Generation} is no longer current; success not recorded");
                fanIn = rd.IsDBNull(0) ? null : rd.GetInt64(0);
                pipeline = rd.IsDBNull(1) ? null : rd.GetGuid(1);
                step = rd.IsDBNull(2) ? null : rd.GetString(2);
                continuedBy = rd.IsDBNull(3) ? null : rd.GetInt64(3);
            }
            var ready = new List<ReadyRun>();
            if (continuedBy is not null) return await OutboxAsync(c, tx, [lease.RunId], ready, t); // its aggregator finishes the work (and the step)
            if (fanIn is { } agg)
            {
                var queue = Change([RunStatus.Waiting], RunStatus.Queued);
                await using var cmd = new NpgsqlCommand($"""
                    UPDATE retok.runs SET pending_children = pending_children - 1,
                           status = CASE WHEN pending_children = 1 AND {queue.Where} THEN {queue.To} ELSE status END,
                           queued_at = CASE WHEN pending_children = 1 AND {queue.Where} THEN now() ELSE queued_at END,
                           failure_reason = CASE WHEN pending_children = 1 THEN NULL ELSE failure_reason END
                    WHERE id = @agg RETURNING pending_children, status, queue
                    """, c, tx);
                cmd.Parameters.AddWithValue("agg", agg);
                await using (var rd = await cmd.ExecuteReaderAsync(t))
                    if (await rd.ReadAsync(t) && rd.GetInt32(0) == 0 && rd.GetString(1) == "Queued") ready.Add(new ReadyRun(agg, rd.GetString(2)));
                return await OutboxAsync(c, tx, [lease.RunId], ready, t);
            }
            if (pipeline is { } p && step is not null) ready.AddRange(await AdvancePipelineAsync(c, tx, p, t));
            return await OutboxAsync(c, tx, [lease.RunId], ready, t);
        }, ct);

    static async Task<List<ReadyRun>> AdvancePipelineAsync(NpgsqlConnection c, NpgsqlTransaction tx, Guid pipeline, CancellationToken t)
    {
        await using (var lk = new NpgsqlCommand("SELECT id FROM retok.pipelines WHERE id = @p FOR UPDATE", c, tx))
        {
            lk.Parameters.AddWithValue("p", pipeline);
            await lk.ExecuteNonQueryAsync(t);
        }
        // pending_children = 0 keeps aggregators (which wait on shards, not on steps) out.
        var queue = Change([RunStatus.Waiting], RunStatus.Queued, "r.status");
        await using var cmd = new NpgsqlCommand($$"""
            WITH done AS (SELECT coalesce(array_agg(DISTINCT pipeline_step), '{}') AS steps FROM retok.runs
                          WHERE pipeline_id = @p AND status = 'Succeeded' AND fan_in_run_id IS NULL AND continued_by_run_id IS NULL AND pipeline_step IS NOT NULL)
            UPDATE retok.runs r SET status = {{queue.To}}, queued_at = now()
            FROM done WHERE r.pipeline_id = @p AND {{queue.Where}} AND r.pending_children = 0 AND r.fan_in_run_id IS NULL
                        AND r.depends_on <@ done.steps
            RETURNING r.id, r.queue
            """, c, tx);
        cmd.Parameters.AddWithValue("p", pipeline);
        await using var rd = await cmd.ExecuteReaderAsync(t);
        var ready = new List<ReadyRun>();
        while (await rd.ReadAsync(t)) ready.Add(new ReadyRun(rd.GetInt64(0), rd.GetString(1)));
        return ready;
    }

    public Task FailAsync(Lease lease, string reason, CancellationToken ct = default) =>
        _t.InTransactionAsync(null, async (c, tx, t) =>
        {
            long? fanIn;
            var run = Change([RunStatus.Running], RunStatus.Failed);
            await using (var cmd = new NpgsqlCommand($"""
                UPDATE retok.runs SET status = {run.To}, finished_at = now(), failure_reason = @r, lease_owner = NULL, lease_expires_at = NULL, eta_seconds = NULL
                WHERE id = @id AND lease_generation = @gen AND {run.Where} RETURNING fan_in_run_id
                """, c, tx))
            {
                cmd.Parameters.AddWithValue("id", lease.RunId);
                cmd.Parameters.AddWithValue("gen", lease.Generation);
                cmd.Parameters.AddWithValue("r", Truncate(reason));
                var r = await cmd.ExecuteScalarAsync(t);
                if (r is null) throw new LeaseLostException($"run {lease.RunId}: lease lost; failure not recorded");
                fanIn = r is long l ? l : null;
            }
            if (fanIn is { } agg)
            {
                // The aggregator keeps waiting (retry the shard alone); say why on it.
                await using var cmd = new NpgsqlCommand("UPDATE retok.runs SET failure_reason = @r WHERE id = @agg AND status = 'Waiting'", c, tx);
                cmd.Parameters.AddWithValue("agg", agg);
                cmd.Parameters.AddWithValue("r", Truncate($"waiting for shard run {lease.RunId}, which failed: {reason}"));
                await cmd.ExecuteNonQueryAsync(t);
            }
            await OutboxAsync(c, tx, [lease.RunId], true, t);
        }, ct);

    public Task CancelledAsync(Lease lease, string note, CancellationToken ct = default) =>
        _t.InTransactionAsync(null, async (c, tx, t) =>
        {
            var run = Change([RunStatus.Running], RunStatus.Cancelled);
            await using var cmd = new NpgsqlCommand($"""
                UPDATE retok.runs SET status = {run.To}, finished_at = now(), failure_reason = @r, lease_owner = NULL, lease_expires_at = NULL, eta_seconds = NULL
                WHERE id = @id AND lease_generation = @gen AND {run.Where}
                """, c, tx);
            cmd.Parameters.AddWithValue("id", lease.RunId);
            cmd.Parameters.AddWithValue("gen", lease.Generation);
            cmd.Parameters.AddWithValue("r", Truncate(note));
            if (await cmd.ExecuteNonQueryAsync(t) == 1) await OutboxAsync(c, tx, [lease.RunId], true, t);
        }, ct);

    /// <summary>Failure text as stored: credentials blanked (exception messages can carry connection strings), control
    /// characters replaced (<see cref="SafeText"/>), at most 4000 characters.</summary>
    static string Truncate(string reason)
    {
        var s = SafeText.Clean(Redact.Secrets(reason));
        return s.Length <= 4000 ? s : s[..4000] + "…";
    }
}

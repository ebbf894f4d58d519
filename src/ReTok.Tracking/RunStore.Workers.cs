using Npgsql;
using NpgsqlTypes;

namespace ReTok.Tracking;

/// <summary>A Queued run and the Hangfire job last recorded for it.</summary>
public sealed record QueuedRun(long RunId, string Queue, string? HangfireJobId);

/// <summary>Worker heartbeat rows and the statements behind the workers' reconciler (claims are optimistic, so concurrent reconcilers are harmless).</summary>
public sealed partial class RunStore
{
    /// <summary>Inserts the worker's row, or refreshes its slots and heartbeat.</summary>
    public async Task UpsertWorkerAsync(WorkerInfo w, CancellationToken ct = default)
    {
        await using var cmd = _t.DataSource.CreateCommand("""
            INSERT INTO retok.workers (id, host, queues, devices, slots, system, started_at, last_heartbeat) VALUES (@id, @h, @q, @d, @s, @sys, now(), now())
            ON CONFLICT (id) DO UPDATE SET slots = excluded.slots, system = excluded.system, last_heartbeat = now()
            """);
        cmd.Parameters.AddWithValue("id", w.Id);
        cmd.Parameters.AddWithValue("h", w.Host);
        cmd.Parameters.AddWithValue("q", w.Queues);
        cmd.Parameters.AddWithValue("d", w.Devices);
        cmd.Parameters.Add(new NpgsqlParameter("s", NpgsqlDbType.Jsonb) { Value = w.Slots });
        cmd.Parameters.Add(new NpgsqlParameter("sys", NpgsqlDbType.Jsonb) { Value = string.IsNullOrWhiteSpace(w.System) ? "{}" : w.System });
        await cmd.ExecuteNonQueryAsync(ct);
    }

    public async Task DeleteWorkerAsync(string id, CancellationToken ct = default)
    {
        await using var cmd = _t.DataSource.CreateCommand("DELETE FROM retok.workers WHERE id = @id");
        cmd.Parameters.AddWithValue("id", id);
        await cmd.ExecuteNonQueryAsync(ct);
    }

    /// <summary>Removes the rows of workers whose last heartbeat is older than <paramref name="silence"/>.</summary>
    public async Task DeleteSilentWorkersAsync(TimeSpan silence, CancellationToken ct = default)
    {
        await using var cmd = _t.DataSource.CreateCommand("DELETE FROM retok.workers WHERE last_heartbeat < now() - make_interval(secs => @silence)");
        cmd.Parameters.AddWithValue("silence", silence.TotalSeconds);
        await cmd.ExecuteNonQueryAsync(ct);
    }

    /// <summary>Up to 200 runs Queued for longer than <paramref name="after"/>, oldest first: candidates for a lost enqueue.</summary>
    public async Task<List<QueuedRun>> ListQueuedLongerThanAsync(TimeSpan after, CancellationToken ct = default)
    {
        await using var cmd = _t.DataSource.CreateCommand("""
            SELECT id, queue, hangfire_job_id FROM retok.runs
            WHERE status = 'Queued' AND coalesce(queued_at, created_at) < now() - make_interval(secs => @after) ORDER BY id LIMIT 200
            """);
        cmd.Parameters.AddWithValue("after", after.TotalSeconds);
        var runs = new List<QueuedRun>();
        await using var rd = await cmd.ExecuteReaderAsync(ct);
        while (await rd.ReadAsync(ct)) runs.Add(new QueuedRun(rd.GetInt64(0), rd.GetString(1), rd.IsDBNull(2) ? null : rd.GetString(2)));
        return runs;
    }

    /// <summary>Claims a Queued run for enqueueing again: true only for the one caller that finds its job still <paramref name="job"/>.</summary>
    public async Task<bool> ClaimForEnqueueAsync(long runId, string? job, CancellationToken ct = default)
    {
        await using var cmd = _t.DataSource.CreateCommand("""
            UPDATE retok.runs SET queued_at = now(), hangfire_job_id = NULL
            WHERE id = @id AND status = 'Queued' AND hangfire_job_id IS NOT DISTINCT FROM @job
            """);
        cmd.Parameters.AddWithValue("id", runId);
        cmd.Parameters.AddWithValue("job", (object?)job ?? DBNull.Value);
        return await cmd.ExecuteNonQueryAsync(ct) == 1;
    }

    /// <summary>Re-queues the Running runs whose lease expired more than <paramref name="grace"/> ago; they still need enqueueing.</summary>
    public async Task<List<ReadyRun>> RequeueExpiredLeasesAsync(TimeSpan grace, CancellationToken ct = default)
    {
        var run = Change([RunStatus.Running], RunStatus.Queued);
        await using var cmd = _t.DataSource.CreateCommand($"""
            UPDATE retok.runs SET status = {run.To}, queued_at = now(), lease_owner = NULL, lease_expires_at = NULL, hangfire_job_id = NULL,
                   lease_takeovers = lease_takeovers + 1,
                   progress_message = 're-queued by reconciler: lease of ' || coalesce(lease_owner, '?') || ' expired'
            WHERE {run.Where} AND lease_expires_at < now() - make_interval(secs => @grace) RETURNING id, queue
            """);
        cmd.Parameters.AddWithValue("grace", grace.TotalSeconds);
        var runs = new List<ReadyRun>();
        await using var rd = await cmd.ExecuteReaderAsync(ct);
        while (await rd.ReadAsync(ct)) runs.Add(new ReadyRun(rd.GetInt64(0), rd.GetString(1)));
        return runs;
    }
}

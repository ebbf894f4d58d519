namespace ReTok.Tracking;

/// <summary>Fleet totals for monitoring (the dashboard's Prometheus endpoint): one consistent read of the run table.</summary>
public sealed record FleetStats(
    IReadOnlyDictionary<string, long> QueuedByQueue,
    IReadOnlyDictionary<string, long> RunningByKind,
    IReadOnlyDictionary<(string Kind, RunStatus Status), long> FinishedByKind,
    long LeaseTakeovers,
    long ArtifactBytes,
    long LiveWorkers);

/// <summary>A run's first start: how long it waited in its queue (queued_at -> started_at).</summary>
public sealed record RunStart(long RunId, string Kind, string Queue, DateTimeOffset StartedAt, double WaitSeconds);

public sealed partial class RunStore
{
    /// <summary>Queued runs per queue, running per kind, finished per kind and status, lease takeovers, artifact bytes,
    /// workers with a heartbeat in the last <paramref name="workerSilence"/>.</summary>
    public Task<FleetStats> GetFleetStatsAsync(TimeSpan workerSilence, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            var queued = new Dictionary<string, long>();
            var running = new Dictionary<string, long>();
            var finished = new Dictionary<(string, RunStatus), long>();
            long takeovers = 0, bytes = 0, workers = 0;
            // one snapshot: a REPEATABLE READ transaction, so the totals agree with each other
            await using var conn = await _t.DataSource.OpenConnectionAsync(t);
            await using var tx = await conn.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, t);
            await using (var cmd = new Npgsql.NpgsqlCommand("""
                SELECT status, kind, queue, count(*), sum(lease_takeovers) FROM retok.runs GROUP BY status, kind, queue
                """, conn, tx))
            await using (var rd = await cmd.ExecuteReaderAsync(t))
                while (await rd.ReadAsync(t))
                {
                    var status = Enum.Parse<RunStatus>(rd.GetString(0));
                    string kind = rd.GetString(1), queue = rd.GetString(2);
                    long n = rd.GetInt64(3);
                    takeovers += rd.GetInt64(4);
                    if (status == RunStatus.Queued) queued[queue] = queued.GetValueOrDefault(queue) + n;
                    else if (status == RunStatus.Running) running[kind] = running.GetValueOrDefault(kind) + n;
                    else if (status.IsTerminal()) finished[(kind, status)] = finished.GetValueOrDefault((kind, status)) + n;
                }
            await using (var cmd = new Npgsql.NpgsqlCommand("""
                SELECT (SELECT coalesce(sum(size_bytes), 0)::bigint FROM retok.artifacts),
                       (SELECT count(*) FROM retok.workers WHERE last_heartbeat > now() - make_interval(secs => @silence))
                """, conn, tx))
            {
                cmd.Parameters.AddWithValue("silence", workerSilence.TotalSeconds);
                await using var rd = await cmd.ExecuteReaderAsync(t);
                await rd.ReadAsync(t);
                (bytes, workers) = (rd.GetInt64(0), rd.GetInt64(1));
            }
            await tx.CommitAsync(t);
            return new FleetStats(queued, running, finished, takeovers, bytes, workers);
        }, ct);

    /// <summary>Runs first started after <paramref name="after"/> (oldest first, at most <paramref name="limit"/>), with their
    /// queue wait; runs re-queued after their first start (queued_at later than started_at) are left out.</summary>
    public Task<List<RunStart>> ListStartsAfterAsync(DateTimeOffset after, int limit = 10_000, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var cmd = _t.DataSource.CreateCommand("""
                SELECT id, kind, queue, started_at, extract(epoch FROM started_at - coalesce(queued_at, created_at))::float8
                FROM retok.runs WHERE started_at > @after AND started_at >= coalesce(queued_at, created_at)
                ORDER BY started_at LIMIT @limit
                """);
            cmd.Parameters.AddWithValue("after", after);
            cmd.Parameters.AddWithValue("limit", limit);
            var list = new List<RunStart>();
            await using var rd = await cmd.ExecuteReaderAsync(t);
            while (await rd.ReadAsync(t))
                list.Add(new RunStart(rd.GetInt64(0), rd.GetString(1), rd.GetString(2), rd.GetFieldValue<DateTimeOffset>(3), rd.GetDouble(4)));
            return list;
        }, ct);

    /// <summary>The database's clock (monitoring watermarks are taken from it, not from this machine's).</summary>
    public Task<DateTimeOffset> DatabaseNowAsync(CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var cmd = _t.DataSource.CreateCommand("SELECT now()");
            await using var rd = await cmd.ExecuteReaderAsync(t);
            await rd.ReadAsync(t);
            return rd.GetFieldValue<DateTimeOffset>(0);
        }, ct);
}

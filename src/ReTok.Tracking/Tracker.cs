using System.Data;
using System.Text.Json;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using NpgsqlTypes;
using Polly;
using ReTok.Tracking.Artifacts;

namespace ReTok.Tracking;

/// <summary>A write token: the run and the lease generation the writer holds. Fenced writes fail once another executor took over.</summary>
public readonly record struct Fence(long RunId, long Generation);

public sealed record MetricValue(string Key, long Step, double Value, DateTimeOffset? Time = null);

public sealed record LogLine(string Level, string Message, DateTimeOffset? Time = null);

public sealed record ArtifactSaveOptions
{
    /// <summary>checkpoint, npz, image, plot, npy, json, yaml, safetensors, tar, other.</summary>
    public string Kind { get; init; } = "other";
    public string ContentType { get; init; } = "application/octet-stream";
    /// <summary>Replace an existing artifact of the same name with different bytes (e.g. "checkpoints/latest").</summary>
    public bool Overwrite { get; init; }
    /// <summary>jsonb metadata stored on the row, e.g. {"step": 40}.</summary>
    public string? MetadataJson { get; init; }
}

/// <summary>An input edge of the lineage graph: <see cref="Use"/> says which run consumed which artifact in which role.</summary>
public sealed record LineageEdge(ArtifactUse Use, Artifact Artifact);

/// <summary>
/// The tracking API used by the engine, the CLI and the dashboard: runs (through <see cref="Runs"/>), metrics (upserted by run+key+step, so a resumed
/// job never duplicates a point), artifacts (bytes first, row second: visible only once written and hashed), lineage and
/// logs. Transient database/blob faults are retried with backoff; deterministic ones surface at once. Writes that take a
/// <see cref="Fence"/> run in a transaction that share-locks the run row and checks the lease generation first, so an
/// executor that lost its lease cannot write.
/// </summary>
public sealed class Tracker : IAsyncDisposable
{
    readonly ResiliencePipeline _retry;

    public Tracker(string connectionString, IArtifactStore store, ResiliencePipeline? retry = null)
    {
        ConnectionString = connectionString;
        Store = store;
        DataSource = NpgsqlDataSource.Create(connectionString);
        _retry = retry ?? Faults.CreateRetry();
        Runs = new RunStore(this);
        Webhooks = new WebhookStore(this);
    }

    public string ConnectionString { get; }
    public IArtifactStore Store { get; }
    public NpgsqlDataSource DataSource { get; }
    /// <summary>Leases, status transitions, pipelines and workers, on this tracker's connections and retries.</summary>
    public RunStore Runs { get; }
    /// <summary>Webhook subscriptions per experiment and the delivery outbox (<see cref="WebhookDispatcher"/> sends it).</summary>
    public WebhookStore Webhooks { get; }

    /// <summary>A fresh EF context for queries (dispose it).</summary>
    public TrackingDb CreateDb() => TrackingDb.Create(ConnectionString);

    public ValueTask DisposeAsync() => DataSource.DisposeAsync();

    // ---------------------------------------------------------------- transactions

    /// <summary>Runs <paramref name="body"/> in a transaction (retried as a whole on transient faults), checking the fence first.</summary>
    public async Task<T> InTransactionAsync<T>(Fence? fence, Func<NpgsqlConnection, NpgsqlTransaction, CancellationToken, Task<T>> body, CancellationToken ct = default) =>
        await _retry.ExecuteAsync(async token =>
        {
            await using var conn = await DataSource.OpenConnectionAsync(token);
            await using var tx = await conn.BeginTransactionAsync(IsolationLevel.ReadCommitted, token);
            if (fence is { } f) await RunStore.CheckFenceAsync(conn, tx, f, token);
            var result = await body(conn, tx, token);
            await tx.CommitAsync(token);
            return result;
        }, ct);

    public Task InTransactionAsync(Fence? fence, Func<NpgsqlConnection, NpgsqlTransaction, CancellationToken, Task> body, CancellationToken ct = default) =>
        InTransactionAsync<bool>(fence, async (c, t, k) => { await body(c, t, k); return true; }, ct);

    /// <summary>Retries a single operation on transient faults.</summary>
    public async Task<T> RetryAsync<T>(Func<CancellationToken, Task<T>> op, CancellationToken ct = default) =>
        await _retry.ExecuteAsync(async t => await op(t), ct);

    // ---------------------------------------------------------------- experiments

    public Task<long> EnsureExperimentAsync(string name, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var cmd = DataSource.CreateCommand(
                "INSERT INTO retok.experiments (name, created_at) VALUES (@n, now()) ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id");
            cmd.Parameters.AddWithValue("n", SafeText.Clean(name));
            return (long)(await cmd.ExecuteScalarAsync(t))!;
        }, ct);

    // ---------------------------------------------------------------- metrics

    /// <summary>
    /// Upserts a batch: INSERT .. ON CONFLICT (run_id, key, step) DO UPDATE, so re-logging a step after a resume replaces
    /// the point instead of adding a second one. Within one batch the last value for a (key, step) wins.
    /// </summary>
    public Task LogMetricsAsync(long runId, IReadOnlyCollection<MetricValue> points, Fence? fence = null, CancellationToken ct = default)
    {
        if (points.Count == 0) return Task.CompletedTask;
        var now = DateTimeOffset.UtcNow;
        var last = new Dictionary<(string, long), MetricValue>();
        foreach (var p in points)
        {
            if (string.IsNullOrWhiteSpace(p.Key)) throw new ArgumentException($"run {runId}: metric key must not be empty");
            var key = SafeText.Clean(p.Key);
            last[(key, p.Step)] = p with { Key = key };
        }
        var keys = last.Values.Select(p => p.Key).ToArray();
        var steps = last.Values.Select(p => p.Step).ToArray();
        var values = last.Values.Select(p => p.Value).ToArray();
        var times = last.Values.Select(p => (p.Time ?? now).ToUniversalTime()).ToArray();
        return InTransactionAsync(fence, async (c, tx, t) =>
        {
            await using var cmd = new NpgsqlCommand("""
                INSERT INTO retok.metrics (run_id, key, step, value, time)
                SELECT @run, k, s, v, ts FROM unnest(@keys, @steps, @values, @times) AS u(k, s, v, ts)
                ON CONFLICT (run_id, key, step) DO UPDATE SET value = excluded.value, time = excluded.time
                """, c, tx);
            cmd.Parameters.AddWithValue("run", runId);
            cmd.Parameters.AddWithValue("keys", keys);
            cmd.Parameters.AddWithValue("steps", steps);
            cmd.Parameters.AddWithValue("values", values);
            cmd.Parameters.AddWithValue("times", times);
            await cmd.ExecuteNonQueryAsync(t);
        }, ct);
    }

    public Task<List<MetricPoint>> GetMetricsAsync(long runId, string? key = null, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var db = CreateDb();
            var q = db.Metrics.AsNoTracking().Where(m => m.RunId == runId);
            if (key is not null) q = q.Where(m => m.Key == key);
            return await q.OrderBy(m => m.Key).ThenBy(m => m.Step).ToListAsync(t);
        }, ct);

    /// <summary>
    /// One page of a run's metric points in (key, step) order, after the cursor (<paramref name="afterKey"/>,
    /// <paramref name="afterStep"/>); <paramref name="limit"/> + 1 rows are read so the caller knows whether more follow.
    /// </summary>
    public Task<List<MetricPoint>> GetMetricsPageAsync(long runId, string? key, string? afterKey, long afterStep, int limit, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var db = CreateDb();
            var q = db.Metrics.AsNoTracking().Where(m => m.RunId == runId);
            if (key is not null) q = q.Where(m => m.Key == key);
            if (afterKey is not null) q = q.Where(m => string.Compare(m.Key, afterKey) > 0 || (m.Key == afterKey && m.Step > afterStep));
            return await q.OrderBy(m => m.Key).ThenBy(m => m.Step).Take(limit + 1).ToListAsync(t);
        }, ct);

    /// <summary>
    /// Metric series for charts, downsampled in the database: a key whose steps span at most
    /// <paramref name="maxPointsPerKey"/> comes whole; a longer one is cut into maxPointsPerKey/2 - 1 step buckets and
    /// each bucket gives its lowest and its highest point (so spikes and dips survive), plus the key's first and last
    /// point. Keys and their step ranges come from the primary key index (a skip scan: no pass over the points); each
    /// long key is then one index range scan with a hash aggregate (min/max of ARRAY[value, step]). A run with 1M
    /// points sends about maxPointsPerKey rows a key instead of all of them. Times are not returned (charts plot step
    /// against value).
    /// </summary>
    public Task<Dictionary<string, List<(long Step, double Value)>>> GetMetricSeriesAsync(long runId, int maxPointsPerKey, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            var max = Math.Max(4, maxPointsPerKey);
            var buckets = max / 2 - 1; // two points a bucket plus the two ends
            await using var conn = await DataSource.OpenConnectionAsync(t);
            var keys = new List<(string Key, long S0, long S1)>();
            await using (var cmd = new NpgsqlCommand("""
                WITH RECURSIVE keys AS (
                    (SELECT key FROM retok.metrics WHERE run_id = @run ORDER BY key LIMIT 1)
                    UNION ALL
                    SELECT (SELECT m.key FROM retok.metrics m WHERE m.run_id = @run AND m.key > keys.key ORDER BY m.key LIMIT 1)
                    FROM keys WHERE keys.key IS NOT NULL)
                SELECT key, (SELECT min(step) FROM retok.metrics m WHERE m.run_id = @run AND m.key = keys.key),
                            (SELECT max(step) FROM retok.metrics m WHERE m.run_id = @run AND m.key = keys.key)
                FROM keys WHERE key IS NOT NULL
                """, conn))
            {
                cmd.Parameters.AddWithValue("run", runId);
                await using var r = await cmd.ExecuteReaderAsync(t);
                while (await r.ReadAsync(t)) keys.Add((r.GetString(0), r.GetInt64(1), r.GetInt64(2)));
            }
            var result = new Dictionary<string, List<(long, double)>>(StringComparer.Ordinal);
            foreach (var (key, s0, s1) in keys)
            {
                // steps are unique per key, so a span of at most `max` steps holds at most `max` points
                var whole = s1 - s0 < max;
                await using var cmd = new NpgsqlCommand(whole
                    ? "SELECT step, value FROM retok.metrics WHERE run_id = @run AND key = @key ORDER BY step"
                    : """
                      WITH b AS (
                          SELECT min(ARRAY[value, step::float8]) AS lo, max(ARRAY[value, step::float8]) AS hi
                          FROM retok.metrics WHERE run_id = @run AND key = @key
                          GROUP BY width_bucket(step::float8, @s0::float8, @s1::float8 + 1, @buckets))
                      SELECT lo[2]::bigint, lo[1] FROM b
                      UNION SELECT hi[2]::bigint, hi[1] FROM b
                      UNION SELECT step, value FROM retok.metrics WHERE run_id = @run AND key = @key AND step IN (@s0, @s1)
                      ORDER BY 1
                      """, conn);
                cmd.Parameters.AddWithValue("run", runId);
                cmd.Parameters.AddWithValue("key", key);
                if (!whole)
                {
                    cmd.Parameters.AddWithValue("s0", s0);
                    cmd.Parameters.AddWithValue("s1", s1);
                    cmd.Parameters.AddWithValue("buckets", buckets);
                }
                var list = new List<(long, double)>();
                await using (var r = await cmd.ExecuteReaderAsync(t))
                    while (await r.ReadAsync(t)) list.Add((r.GetInt64(0), r.GetDouble(1)));
                result[key] = list;
            }
            return result;
        }, ct);

    /// <summary>
    /// The last point (highest step) of each metric key of the given runs, ordered by run and key: the one "latest value
    /// per key" query (run pages, compare, results table, CLI). A skip scan over the primary key index (one probe a key of
    /// a run), not DISTINCT ON, which sorted every point of every run (seconds for a run with millions of points).
    /// </summary>
    public Task<List<MetricPoint>> GetLatestMetricsAsync(IReadOnlyCollection<long> runIds, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            var ids = runIds.Distinct().ToArray();
            await using var db = CreateDb();
            return await db.Metrics.FromSqlInterpolated($"""
                WITH RECURSIVE keys(run_id, key) AS (
                    SELECT r.id, (SELECT m.key FROM retok.metrics m WHERE m.run_id = r.id ORDER BY m.key LIMIT 1) FROM unnest({ids}) AS r(id)
                    UNION ALL
                    SELECT keys.run_id, (SELECT m.key FROM retok.metrics m WHERE m.run_id = keys.run_id AND m.key > keys.key ORDER BY m.key LIMIT 1)
                    FROM keys WHERE keys.key IS NOT NULL)
                SELECT l.run_id, l.key, l.step, l.value, l.time FROM keys CROSS JOIN LATERAL (
                    SELECT * FROM retok.metrics m WHERE m.run_id = keys.run_id AND m.key = keys.key ORDER BY m.step DESC LIMIT 1) l
                WHERE keys.key IS NOT NULL
                ORDER BY l.run_id, l.key
                """).AsNoTracking().ToListAsync(t);
        }, ct);

    // ---------------------------------------------------------------- metric provenance

    /// <summary>
    /// Records how the metrics <paramref name="keys"/> of a run were evaluated (one row per run and key, upserted: a
    /// resumed or re-aggregated run replaces its record). Fenced like metric writes.
    /// </summary>
    public Task RecordProvenanceAsync(long runId, IReadOnlyCollection<string> keys, EvalProvenance provenance, Fence? fence = null, CancellationToken ct = default)
    {
        var clean = keys.Where(k => !string.IsNullOrWhiteSpace(k)).Select(SafeText.Clean).Distinct().ToArray();
        if (clean.Length == 0) return Task.CompletedTask;
        var hash = provenance.ProtocolHash();
        var json = SafeText.Clean(provenance.ToJson());
        return InTransactionAsync(fence, async (c, tx, t) =>
        {
            await using var cmd = new NpgsqlCommand("""
                INSERT INTO retok.metric_provenance (run_id, key, protocol_hash, provenance, time)
                SELECT @run, k, @hash, @prov, now() FROM unnest(@keys) AS u(k)
                ON CONFLICT (run_id, key) DO UPDATE SET protocol_hash = excluded.protocol_hash, provenance = excluded.provenance, time = excluded.time
                """, c, tx);
            cmd.Parameters.AddWithValue("run", runId);
            cmd.Parameters.AddWithValue("hash", hash);
            cmd.Parameters.Add(new NpgsqlParameter("prov", NpgsqlDbType.Jsonb) { Value = json });
            cmd.Parameters.AddWithValue("keys", clean);
            await cmd.ExecuteNonQueryAsync(t);
        }, ct);
    }

    /// <summary>The provenance records of the given runs (all keys), ordered by run and key.</summary>
    public Task<List<MetricProvenance>> GetProvenanceAsync(IReadOnlyCollection<long> runIds, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            var ids = runIds.Distinct().ToArray();
            await using var db = CreateDb();
            return await db.MetricProvenance.AsNoTracking().Where(m => ids.Contains(m.RunId)).OrderBy(m => m.RunId).ThenBy(m => m.Key).ToListAsync(t);
        }, ct);

    // ---------------------------------------------------------------- logs

    public Task LogAsync(long runId, IReadOnlyCollection<LogLine> lines, Fence? fence = null, CancellationToken ct = default)
    {
        if (lines.Count == 0) return Task.CompletedTask;
        var now = DateTimeOffset.UtcNow;
        return InTransactionAsync(fence, async (c, tx, t) =>
        {
            await using var cmd = new NpgsqlCommand("""
                INSERT INTO retok.logs (run_id, time, level, message)
                SELECT @run, ts, l, m FROM unnest(@times, @levels, @messages) AS u(ts, l, m)
                """, c, tx);
            cmd.Parameters.AddWithValue("run", runId);
            cmd.Parameters.AddWithValue("times", lines.Select(l => (l.Time ?? now).ToUniversalTime()).ToArray());
            cmd.Parameters.AddWithValue("levels", lines.Select(l => SafeText.Clean(l.Level)).ToArray());
            cmd.Parameters.AddWithValue("messages", lines.Select(l => SafeText.Clean(Redact.Secrets(l.Message))).ToArray()); // error lines carry exception text
            await cmd.ExecuteNonQueryAsync(t);
        }, ct);
    }

    public Task LogAsync(long runId, string level, string message, Fence? fence = null, CancellationToken ct = default) =>
        LogAsync(runId, new[] { new LogLine(level, message) }, fence, ct);

    public Task<List<RunLog>> GetLogsAsync(long runId, long afterId = 0, int limit = 1000, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var db = CreateDb();
            return await db.Logs.AsNoTracking().Where(l => l.RunId == runId && l.Id > afterId).OrderBy(l => l.Id).Take(limit).ToListAsync(t);
        }, ct);

    // ---------------------------------------------------------------- artifacts

    /// <summary>
    /// Streams <paramref name="content"/> into the store under a fresh object key, then records the row. The row is the
    /// commit point: readers never see an artifact whose bytes are incomplete. Saving the same name with the same sha256
    /// again is a no-op; different bytes need <see cref="ArtifactSaveOptions.Overwrite"/> (else <see cref="ArtifactConflictException"/>).
    /// A seekable stream is re-sent on a transient store fault.
    /// </summary>
    public async Task<Artifact> SaveArtifactAsync(long runId, string name, Stream content, ArtifactSaveOptions? options = null, Fence? fence = null, CancellationToken ct = default)
    {
        ArtifactNames.Validate(name);
        var start = content.CanSeek ? content.Position : -1;
        var stored = content.CanSeek
            ? await RetryAsync(async t => { content.Position = start; return await Store.PutAsync(ObjectKey(runId, name), content, options?.ContentType ?? "application/octet-stream", t); }, ct)
            : await Store.PutAsync(ObjectKey(runId, name), content, options?.ContentType ?? "application/octet-stream", ct);
        return await RecordArtifactAsync(runId, name, stored, options ?? new ArtifactSaveOptions(), fence, ct);
    }

    public async Task<Artifact> SaveArtifactFileAsync(long runId, string name, string path, ArtifactSaveOptions? options = null, Fence? fence = null, CancellationToken ct = default)
    {
        ArtifactNames.Validate(name);
        if (!File.Exists(path)) throw new FileNotFoundException($"artifact '{name}' of run {runId}: file {path} does not exist", path);
        var stored = await RetryAsync(t => Store.PutFileAsync(ObjectKey(runId, name), path, options?.ContentType ?? "application/octet-stream", t), ct);
        return await RecordArtifactAsync(runId, name, stored, options ?? new ArtifactSaveOptions(), fence, ct);
    }

    /// <summary>Every put gets its own object key, so a stale writer can never clobber the bytes a current row points at.</summary>
    static string ObjectKey(long runId, string name) => $"runs/{runId}/{Guid.NewGuid().ToString("N")[..12]}/{name}";

    async Task<Artifact> RecordArtifactAsync(long runId, string name, StoredObject stored, ArtifactSaveOptions o, Fence? fence, CancellationToken ct) =>
        (await RecordArtifactsAsync(runId, [(name, stored, o)], fence, ct))[0];

    /// <summary>
    /// Records rows for objects already in the store, all in one transaction (all or none become visible). Objects
    /// that end up referenced by no row (failure, idempotent re-save, replaced bytes) are deleted.
    /// </summary>
    async Task<List<Artifact>> RecordArtifactsAsync(long runId, IReadOnlyList<(string Name, StoredObject Stored, ArtifactSaveOptions Options)> items, Fence? fence, CancellationToken ct)
    {
        var orphans = items.Select(i => i.Stored.Uri).ToList(); // deleted unless the rows end up pointing at them
        try
        {
            List<string> replaced;
            try { replaced = await InTransactionAsync(fence, (c, tx, t) => RecordRowsAsync(c, tx, runId, items, t), ct); }
            catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.UniqueViolation)
            {
                // A concurrent save of the same name won the insert: re-run the decisions against its row.
                replaced = await InTransactionAsync(fence, (c, tx, t) => RecordRowsAsync(c, tx, runId, items, t), ct);
            }
            orphans.Clear();
            var rows = new List<Artifact>();
            foreach (var (name, stored, _) in items)
            {
                var row = await GetArtifactAsync(runId, name, ct) ?? throw new InvalidOperationException($"artifact '{name}' of run {runId} vanished after save");
                if (row.StorageUri != stored.Uri) orphans.Add(stored.Uri); // same bytes were already recorded
                rows.Add(row);
            }
            foreach (var uri in replaced) await TryDeleteObjectAsync(uri);
            return rows;
        }
        finally
        {
            foreach (var uri in orphans) await TryDeleteObjectAsync(uri);
        }
    }

    /// <summary>Inserts or updates the rows; returns the storage URIs of replaced rows (to delete after the commit).</summary>
    static async Task<List<string>> RecordRowsAsync(NpgsqlConnection c, NpgsqlTransaction tx, long runId,
        IReadOnlyList<(string Name, StoredObject Stored, ArtifactSaveOptions Options)> items, CancellationToken t)
    {
        var replaced = new List<string>();
        foreach (var (name, stored, o) in items)
        {
            await using (var sel = new NpgsqlCommand("SELECT sha256, storage_uri FROM retok.artifacts WHERE run_id = @r AND name = @n FOR UPDATE", c, tx))
            {
                sel.Parameters.AddWithValue("r", runId);
                sel.Parameters.AddWithValue("n", name);
                await using var rd = await sel.ExecuteReaderAsync(t);
                if (await rd.ReadAsync(t))
                {
                    var (sha, uri) = (rd.GetString(0), rd.GetString(1));
                    await rd.CloseAsync();
                    if (string.Equals(sha, stored.Sha256, StringComparison.OrdinalIgnoreCase)) continue; // idempotent re-save
                    if (!o.Overwrite)
                        throw new ArtifactConflictException($"run {runId} already has artifact '{name}' with sha256 {sha}; the new bytes hash to {stored.Sha256}. Save with Overwrite to replace it.");
                    await using var up = new NpgsqlCommand("""
                        UPDATE retok.artifacts SET storage_uri = @u, size_bytes = @s, sha256 = @h, kind = @k, content_type = @ct,
                               metadata = @m, created_at = now() WHERE run_id = @r AND name = @n
                        """, c, tx);
                    AddArtifactParams(up, runId, name, stored, o);
                    await up.ExecuteNonQueryAsync(t);
                    replaced.Add(uri);
                    continue;
                }
            }
            await using var ins = new NpgsqlCommand("""
                INSERT INTO retok.artifacts (run_id, name, kind, storage_uri, size_bytes, sha256, content_type, metadata, created_at)
                VALUES (@r, @n, @k, @u, @s, @h, @ct, @m, now())
                """, c, tx);
            AddArtifactParams(ins, runId, name, stored, o);
            await ins.ExecuteNonQueryAsync(t);
        }
        return replaced;
    }

    /// <summary>
    /// Saves several files as artifacts that become visible together: every file is uploaded first, then all rows are
    /// recorded in one transaction. A failure (a conflict, a lost lease, a database fault) registers none of them and
    /// deletes the uploaded objects, so a failed run does not leave half of its outputs behind.
    /// </summary>
    public async Task<List<Artifact>> SaveArtifactFilesAsync(long runId, IReadOnlyList<(string Name, string Path, ArtifactSaveOptions Options)> files, Fence? fence = null, CancellationToken ct = default)
    {
        var stored = new List<(string, StoredObject, ArtifactSaveOptions)>();
        try
        {
            foreach (var (name, path, o) in files)
            {
                ArtifactNames.Validate(name);
                if (!File.Exists(path)) throw new FileNotFoundException($"artifact '{name}' of run {runId}: file {path} does not exist", path);
                stored.Add((name, await RetryAsync(t => Store.PutFileAsync(ObjectKey(runId, name), path, o.ContentType, t), ct), o));
            }
        }
        catch
        {
            foreach (var (_, obj, _) in stored) await TryDeleteObjectAsync(obj.Uri);
            throw;
        }
        return await RecordArtifactsAsync(runId, stored, fence, ct);
    }

    static void AddArtifactParams(NpgsqlCommand cmd, long runId, string name, StoredObject stored, ArtifactSaveOptions o)
    {
        cmd.Parameters.AddWithValue("r", runId);
        cmd.Parameters.AddWithValue("n", name);
        cmd.Parameters.AddWithValue("k", o.Kind);
        cmd.Parameters.AddWithValue("u", stored.Uri);
        cmd.Parameters.AddWithValue("s", stored.SizeBytes);
        cmd.Parameters.AddWithValue("h", stored.Sha256);
        cmd.Parameters.AddWithValue("ct", o.ContentType);
        cmd.Parameters.Add(new NpgsqlParameter("m", NpgsqlDbType.Jsonb) { Value = o.MetadataJson ?? "{}" });
    }

    /// <summary>
    /// Deletes store objects under runs/ that no artifact row references and that are older than <paramref name="grace"/>:
    /// uploads of an executor killed before its row was written, and deletions that failed. The grace period protects
    /// uploads whose rows are about to be recorded. Returns the number deleted.
    /// </summary>
    public async Task<int> SweepOrphanObjectsAsync(TimeSpan grace, CancellationToken ct = default)
    {
        var cutoff = DateTimeOffset.UtcNow - grace;
        var old = new List<string>();
        int deleted = 0;
        async Task FlushAsync()
        {
            var referenced = await RetryAsync(async t =>
            {
                await using var cmd = DataSource.CreateCommand("SELECT storage_uri FROM retok.artifacts WHERE storage_uri = ANY(@u)");
                cmd.Parameters.AddWithValue("u", old.ToArray());
                var set = new HashSet<string>(StringComparer.Ordinal);
                await using var rd = await cmd.ExecuteReaderAsync(t);
                while (await rd.ReadAsync(t)) set.Add(rd.GetString(0));
                return set;
            }, ct);
            foreach (var uri in old.Where(u => !referenced.Contains(u)))
            {
                await Store.DeleteAsync(uri, ct);
                deleted++;
            }
            old.Clear();
        }
        await foreach (var e in Store.ListEntriesAsync("runs/", ct))
        {
            if (e.LastModified > cutoff) continue;
            old.Add(e.Uri);
            if (old.Count >= 500) await FlushAsync();
        }
        if (old.Count > 0) await FlushAsync();
        return deleted;
    }

    async Task TryDeleteObjectAsync(string uri)
    {
        try { await Store.DeleteAsync(uri); } catch (Exception) { /* an orphan object costs space, not correctness */ }
    }

    public Task<Artifact?> GetArtifactAsync(long runId, string name, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var db = CreateDb();
            return await db.Artifacts.AsNoTracking().FirstOrDefaultAsync(a => a.RunId == runId && a.Name == name, t);
        }, ct);

    public Task<Artifact?> GetArtifactAsync(long artifactId, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var db = CreateDb();
            return await db.Artifacts.AsNoTracking().FirstOrDefaultAsync(a => a.Id == artifactId, t);
        }, ct);

    public Task<List<Artifact>> ListArtifactsAsync(long runId, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var db = CreateDb();
            return await db.Artifacts.AsNoTracking().Where(a => a.RunId == runId).OrderBy(a => a.Name).ToListAsync(t);
        }, ct);

    /// <summary>Opens the bytes; the stream throws <see cref="ArtifactIntegrityException"/> at its end if they do not hash to the row's sha256.</summary>
    public Task<Stream> OpenArtifactAsync(Artifact a, CancellationToken ct = default) =>
        RetryAsync(t => Store.OpenReadAsync(a.StorageUri, a.Sha256, t), ct);

    /// <summary>Downloads to <paramref name="path"/> (temp file + rename after the sha256 check: a corrupt object never lands there).</summary>
    public Task DownloadArtifactAsync(Artifact a, string path, CancellationToken ct = default) =>
        RetryAsync(async t => { await Store.DownloadToFileAsync(a.StorageUri, path, a.Sha256, t); return true; }, ct);

    /// <summary>Records lineage: run <paramref name="runId"/> consumed <paramref name="artifactId"/> as <paramref name="role"/>.</summary>
    public Task RecordUseAsync(long runId, long artifactId, string role, Fence? fence = null, CancellationToken ct = default) =>
        InTransactionAsync(fence, async (c, tx, t) =>
        {
            await using var cmd = new NpgsqlCommand("""
                INSERT INTO retok.artifact_uses (run_id, artifact_id, role, time) VALUES (@r, @a, @role, now())
                ON CONFLICT (run_id, artifact_id, role) DO NOTHING
                """, c, tx);
            cmd.Parameters.AddWithValue("r", runId);
            cmd.Parameters.AddWithValue("a", artifactId);
            cmd.Parameters.AddWithValue("role", role);
            await cmd.ExecuteNonQueryAsync(t);
        }, ct);

    /// <summary>What a run consumed (its inputs, with the producing artifact rows).</summary>
    public Task<List<LineageEdge>> GetInputsAsync(long runId, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var db = CreateDb();
            var uses = await db.ArtifactUses.AsNoTracking().Include(u => u.Artifact).Where(u => u.RunId == runId).OrderBy(u => u.Role).ToListAsync(t);
            return uses.Select(u => new LineageEdge(u, u.Artifact!)).ToList();
        }, ct);

    /// <summary>Which runs consumed an artifact.</summary>
    public Task<List<ArtifactUse>> GetConsumersAsync(long artifactId, CancellationToken ct = default) =>
        RetryAsync(async t =>
        {
            await using var db = CreateDb();
            return await db.ArtifactUses.AsNoTracking().Where(u => u.ArtifactId == artifactId).OrderBy(u => u.RunId).ToListAsync(t);
        }, ct);

    public static string Json(object value) => JsonSerializer.Serialize(value);
}

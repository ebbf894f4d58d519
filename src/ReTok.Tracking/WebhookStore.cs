using System.Text.RegularExpressions;
using Microsoft.EntityFrameworkCore;

namespace ReTok.Tracking;

/// <summary>A webhook URL is a secret (Slack and Teams URLs carry their token): validated once, shown only masked.</summary>
public static partial class WebhookUrl
{
    public const int MaxLength = 2048;

    /// <summary>Null when <paramref name="url"/> is an absolute http(s) URL without credentials; else an error naming <paramref name="field"/> (never echoing the URL).</summary>
    public static string? Validate(string? url, string field = "url")
    {
        if (string.IsNullOrWhiteSpace(url)) return $"{field}: required (an absolute http:// or https:// URL)";
        if (url.Length > MaxLength) return $"{field}: longer than {MaxLength} characters";
        if (url.Any(ch => char.IsControl(ch) || char.IsWhiteSpace(ch))) return $"{field}: must not contain spaces or control characters";
        // "/x" parses as file:///x on Unix: a path, not a URL someone meant
        if (!Uri.TryCreate(url, UriKind.Absolute, out var u) || (u.IsFile && !url.StartsWith("file:", StringComparison.OrdinalIgnoreCase)))
            return $"{field}: expected an absolute http:// or https:// URL";
        if (u.Scheme is not ("http" or "https")) return $"{field}: scheme '{SafeText.Clean(u.Scheme)}' is not allowed (http or https only)";
        if (string.IsNullOrEmpty(u.Host)) return $"{field}: expected an absolute http:// or https:// URL with a host";
        if (u.UserInfo.Length > 0) return $"{field}: must not carry user:password@ (put the token in the path or query, as Slack and Teams do)";
        return null;
    }

    /// <summary>https://hooks.slack.com/services/T0/B0/abcdWXYZ -> https://hooks.slack.com/…/WXYZ: scheme, host and port, then the last 4 characters.</summary>
    public static string Mask(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var u) || string.IsNullOrEmpty(u.Host)) return "…";
        var origin = $"{u.Scheme}://{u.Host}{(u.IsDefaultPort ? "" : ":" + u.Port)}";
        var rest = u.PathAndQuery.TrimEnd('/');
        if (rest.Length == 0) return origin + "/";
        var tail = rest.Length > 8 ? rest[^4..] : "";
        return $"{origin}/…{(tail.Length > 0 ? "/" + tail : "")}";
    }

    /// <summary>Any full URL of <paramref name="urls"/> in <paramref name="text"/> replaced by its mask (exception messages name the URL).</summary>
    public static string Scrub(string text, params string[] urls)
    {
        foreach (var u in urls.Where(u => !string.IsNullOrEmpty(u))) text = text.Replace(u, Mask(u), StringComparison.Ordinal);
        return SafeText.Clean(Redact.Secrets(text));
    }
}

public sealed record WebhookInfo(long Id, string Experiment, string? Name, string UrlMasked, IReadOnlyList<string> Events, DateTimeOffset CreatedAt, string? CreatedBy);

public sealed record DeliveryInfo(long Id, long SubscriptionId, string? Webhook, string UrlMasked, string Event, long? RunId, Guid? PipelineId, DeliveryStatus Status,
    int Attempts, int? LastStatus, string? LastError, DateTimeOffset CreatedAt, DateTimeOffset NextAttemptAt, DateTimeOffset? DeliveredAt);

/// <summary>A claimed outbox row with what the dispatcher needs to send it.</summary>
public sealed record ClaimedDelivery(long Id, long SubscriptionId, string Url, string? WebhookName, string Event, long? RunId, Guid? PipelineId, string Facts,
    Guid IdempotencyKey, int Attempts, DateTimeOffset CreatedAt);

/// <summary>A subscription request that cannot be stored; the message names the field.</summary>
public sealed class WebhookValidationException(string message) : ArgumentException(message);

/// <summary>
/// Webhook subscriptions (per experiment) and the delivery outbox: the run store inserts deliveries in the transactions
/// that end runs (RunStore.Webhooks.cs); dispatchers claim due rows with FOR UPDATE SKIP LOCKED and a lease, so several
/// dispatchers (each worker, the dashboard) never send one row at the same time.
/// </summary>
public sealed partial class WebhookStore(Tracker t)
{
    public const string TestEvent = "webhook.test";

    [GeneratedRegex(@"^[^\p{C}<>]{1,200}$")]
    private static partial Regex NameRx();

    public async Task<WebhookInfo> AddAsync(string experiment, string url, IReadOnlyCollection<string>? events, string? name, string? createdBy, CancellationToken ct = default)
    {
        if (string.IsNullOrWhiteSpace(experiment)) throw new WebhookValidationException("experiment: required");
        if (WebhookUrl.Validate(url) is { } bad) throw new WebhookValidationException(bad);
        var evs = (events is null || events.Count == 0 ? WebhookEvents.All : events.Select(e => e.Trim().ToLowerInvariant())).Distinct().ToList();
        if (evs.FirstOrDefault(e => !WebhookEvents.All.Contains(e)) is { } unknown)
            throw new WebhookValidationException($"events: unknown event '{SafeText.Clean(unknown)}'; expected some of {string.Join(", ", WebhookEvents.All)}");
        if (name is not null && !NameRx().IsMatch(name)) throw new WebhookValidationException("name: 1..200 characters, no control characters or < >");
        var expId = await t.EnsureExperimentAsync(experiment, ct);
        return await t.RetryAsync(async k =>
        {
            await using var db = t.CreateDb();
            var w = new WebhookSubscription { ExperimentId = expId, Url = url, Events = evs, Name = name, CreatedBy = createdBy };
            db.WebhookSubscriptions.Add(w);
            await db.SaveChangesAsync(k);
            return Info(w, experiment);
        }, ct);
    }

    /// <summary>The experiment's webhooks (masked), oldest first; null when the experiment does not exist.</summary>
    public Task<List<WebhookInfo>?> ListAsync(string experiment, CancellationToken ct = default) =>
        t.RetryAsync(async k =>
        {
            await using var db = t.CreateDb();
            var exp = await db.Experiments.AsNoTracking().FirstOrDefaultAsync(e => e.Name == experiment, k);
            if (exp is null) return null;
            var rows = await db.WebhookSubscriptions.AsNoTracking().Where(w => w.ExperimentId == exp.Id).OrderBy(w => w.Id).ToListAsync(k);
            return rows.Select(w => Info(w, exp.Name)).ToList();
        }, ct);

    /// <summary>Deletes webhook <paramref name="id"/> of the experiment (its deliveries go with it); false if there is none.</summary>
    public Task<bool> RemoveAsync(string experiment, long id, CancellationToken ct = default) =>
        t.RetryAsync(async k =>
        {
            await using var cmd = t.DataSource.CreateCommand("""
                DELETE FROM retok.webhooks w USING retok.experiments e WHERE w.id = @id AND e.id = w.experiment_id AND e.name = @e
                """);
            cmd.Parameters.AddWithValue("id", id);
            cmd.Parameters.AddWithValue("e", experiment);
            return await cmd.ExecuteNonQueryAsync(k) == 1;
        }, ct);

    /// <summary>
    /// Queues a test message to webhook <paramref name="id"/> of the experiment; returns the delivery id, null when there
    /// is no such webhook. With <paramref name="sender"/> the row starts leased to that dispatcher (the CLI sends it at
    /// once and reports the answer), else any dispatcher sends it.
    /// </summary>
    public Task<long?> EnqueueTestAsync(string experiment, long id, string? sender = null, CancellationToken ct = default) =>
        t.RetryAsync(async k =>
        {
            await using var cmd = t.DataSource.CreateCommand("""
                INSERT INTO retok.webhook_deliveries (subscription_id, event, facts, lease_owner, lease_until)
                SELECT w.id, @ev, jsonb_build_object('experiment', e.name, 'webhook', w.name), @o, CASE WHEN @o::text IS NOT NULL THEN now() + interval '1 minute' END
                FROM retok.webhooks w JOIN retok.experiments e ON e.id = w.experiment_id WHERE w.id = @id AND e.name = @e
                RETURNING id
                """);
            cmd.Parameters.AddWithValue("ev", TestEvent);
            cmd.Parameters.AddWithValue("o", NpgsqlTypes.NpgsqlDbType.Text, (object?)sender ?? DBNull.Value);
            cmd.Parameters.AddWithValue("id", id);
            cmd.Parameters.AddWithValue("e", experiment);
            return await cmd.ExecuteScalarAsync(k) is long d ? d : (long?)null;
        }, ct);

    /// <summary>The newest deliveries of an experiment's webhooks (or of one run / one delivery), URLs masked.</summary>
    public Task<List<DeliveryInfo>> DeliveriesAsync(string? experiment = null, long? runId = null, long? deliveryId = null, int limit = 50, CancellationToken ct = default) =>
        t.RetryAsync(async k =>
        {
            await using var cmd = t.DataSource.CreateCommand("""
                SELECT d.id, d.subscription_id, w.name, w.url, d.event, d.run_id, d.pipeline_id, d.status, d.attempts, d.last_status, d.last_error,
                       d.created_at, d.next_attempt_at, d.delivered_at
                FROM retok.webhook_deliveries d JOIN retok.webhooks w ON w.id = d.subscription_id JOIN retok.experiments e ON e.id = w.experiment_id
                WHERE (@e::text IS NULL OR e.name = @e) AND (@r::bigint IS NULL OR d.run_id = @r) AND (@d::bigint IS NULL OR d.id = @d)
                ORDER BY d.id DESC LIMIT @n
                """);
            cmd.Parameters.AddWithValue("e", NpgsqlTypes.NpgsqlDbType.Text, (object?)experiment ?? DBNull.Value);
            cmd.Parameters.AddWithValue("r", NpgsqlTypes.NpgsqlDbType.Bigint, (object?)runId ?? DBNull.Value);
            cmd.Parameters.AddWithValue("d", NpgsqlTypes.NpgsqlDbType.Bigint, (object?)deliveryId ?? DBNull.Value);
            cmd.Parameters.AddWithValue("n", Math.Clamp(limit, 1, 1000));
            await using var rd = await cmd.ExecuteReaderAsync(k);
            var list = new List<DeliveryInfo>();
            while (await rd.ReadAsync(k))
                list.Add(new DeliveryInfo(rd.GetInt64(0), rd.GetInt64(1), rd.IsDBNull(2) ? null : rd.GetString(2), WebhookUrl.Mask(rd.GetString(3)), rd.GetString(4),
                    rd.IsDBNull(5) ? null : rd.GetInt64(5), rd.IsDBNull(6) ? null : rd.GetGuid(6), Enum.Parse<DeliveryStatus>(rd.GetString(7)), rd.GetInt32(8),
                    rd.IsDBNull(9) ? null : rd.GetInt32(9), rd.IsDBNull(10) ? null : rd.GetString(10), rd.GetFieldValue<DateTimeOffset>(11),
                    rd.GetFieldValue<DateTimeOffset>(12), rd.IsDBNull(13) ? null : rd.GetFieldValue<DateTimeOffset>(13)));
            return list;
        }, ct);

    // ---------------------------------------------------------------- dispatching

    /// <summary>
    /// Claims up to <paramref name="batch"/> due Pending rows for <paramref name="owner"/> (FOR UPDATE SKIP LOCKED: dispatchers
    /// running at once take different rows) and leases them for <paramref name="lease"/>, so nobody else sends them meanwhile.
    /// <paramref name="only"/> restricts the claim to one delivery (a test sent from the CLI).
    /// </summary>
    public Task<List<ClaimedDelivery>> ClaimAsync(string owner, int batch, TimeSpan lease, long? only = null, CancellationToken ct = default) =>
        t.RetryAsync(async k =>
        {
            await using var cmd = t.DataSource.CreateCommand("""
                WITH due AS (SELECT id FROM retok.webhook_deliveries
                             WHERE status = 'Pending' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now() OR lease_owner = @o)
                               AND (@only::bigint IS NULL OR id = @only)
                             ORDER BY next_attempt_at, id LIMIT @n FOR UPDATE SKIP LOCKED)
                UPDATE retok.webhook_deliveries d SET lease_owner = @o, lease_until = now() + make_interval(secs => @ttl)
                FROM due, retok.webhooks w WHERE d.id = due.id AND w.id = d.subscription_id
                RETURNING d.id, d.subscription_id, w.url, w.name, d.event, d.run_id, d.pipeline_id, d.facts::text, d.idempotency_key, d.attempts, d.created_at
                """);
            cmd.Parameters.AddWithValue("o", owner);
            cmd.Parameters.AddWithValue("n", batch);
            cmd.Parameters.AddWithValue("ttl", lease.TotalSeconds);
            cmd.Parameters.AddWithValue("only", NpgsqlTypes.NpgsqlDbType.Bigint, (object?)only ?? DBNull.Value);
            await using var rd = await cmd.ExecuteReaderAsync(k);
            var list = new List<ClaimedDelivery>();
            while (await rd.ReadAsync(k))
                list.Add(new ClaimedDelivery(rd.GetInt64(0), rd.GetInt64(1), rd.GetString(2), rd.IsDBNull(3) ? null : rd.GetString(3), rd.GetString(4),
                    rd.IsDBNull(5) ? null : rd.GetInt64(5), rd.IsDBNull(6) ? null : rd.GetGuid(6), rd.GetString(7), rd.GetGuid(8), rd.GetInt32(9),
                    rd.GetFieldValue<DateTimeOffset>(10)));
            return list.OrderBy(d => d.Id).ToList();
        }, ct);

    /// <summary>
    /// Records one attempt of a claimed row: Delivered, Dead, or Pending again at <paramref name="retryAt"/>. Only the
    /// lease holder may (false: the lease expired and another dispatcher owns the row).
    /// </summary>
    public Task<bool> RecordAttemptAsync(long id, string owner, DeliveryStatus outcome, int? httpStatus, string? error, DateTimeOffset? retryAt, CancellationToken ct = default) =>
        t.RetryAsync(async k =>
        {
            await using var cmd = t.DataSource.CreateCommand("""
                UPDATE retok.webhook_deliveries SET attempts = attempts + 1, status = @s, last_status = @hs, last_error = @err,
                       next_attempt_at = coalesce(@at, next_attempt_at), delivered_at = CASE WHEN @s = 'Delivered' THEN now() END,
                       lease_owner = NULL, lease_until = NULL
                WHERE id = @id AND lease_owner = @o AND status = 'Pending'
                """);
            cmd.Parameters.AddWithValue("id", id);
            cmd.Parameters.AddWithValue("o", owner);
            cmd.Parameters.AddWithValue("s", outcome.ToString());
            cmd.Parameters.AddWithValue("hs", NpgsqlTypes.NpgsqlDbType.Integer, (object?)httpStatus ?? DBNull.Value);
            cmd.Parameters.AddWithValue("err", NpgsqlTypes.NpgsqlDbType.Text, error is null ? DBNull.Value : Short(error, 500));
            cmd.Parameters.AddWithValue("at", NpgsqlTypes.NpgsqlDbType.TimestampTz, (object?)retryAt?.ToUniversalTime() ?? DBNull.Value);
            return await cmd.ExecuteNonQueryAsync(k) == 1;
        }, ct);

    /// <summary>Deliveries per status (pending, delivered, dead) and the age in seconds of the oldest pending one (0: none), for /metrics.</summary>
    public Task<(IReadOnlyDictionary<string, long> ByStatus, double OldestPendingSeconds)> StatsAsync(CancellationToken ct = default) =>
        t.RetryAsync<(IReadOnlyDictionary<string, long>, double)>(async k =>
        {
            await using var cmd = t.DataSource.CreateCommand("""
                SELECT status, count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM retok.webhook_deliveries GROUP BY status
                """);
            await using var rd = await cmd.ExecuteReaderAsync(k);
            var by = Enum.GetNames<DeliveryStatus>().ToDictionary(n => n.ToLowerInvariant(), _ => 0L);
            double oldest = 0;
            while (await rd.ReadAsync(k))
            {
                by[rd.GetString(0).ToLowerInvariant()] = rd.GetInt64(1);
                if (rd.GetString(0) == nameof(DeliveryStatus.Pending)) oldest = rd.GetDouble(2);
            }
            return (by, oldest);
        }, ct);

    /// <summary>Deletes Delivered and Dead rows created more than <paramref name="olderThan"/> ago; returns how many.</summary>
    public Task<int> PruneAsync(TimeSpan olderThan, CancellationToken ct = default) =>
        t.RetryAsync(async k =>
        {
            await using var cmd = t.DataSource.CreateCommand(
                "DELETE FROM retok.webhook_deliveries WHERE status <> 'Pending' AND created_at < now() - make_interval(secs => @s)");
            cmd.Parameters.AddWithValue("s", olderThan.TotalSeconds);
            return await cmd.ExecuteNonQueryAsync(k);
        }, ct);

    static string Short(string s, int max)
    {
        s = SafeText.Clean(Redact.Secrets(s));
        return s.Length <= max ? s : s[..(max - 1)] + "…";
    }

    static WebhookInfo Info(WebhookSubscription w, string experiment) =>
        new(w.Id, experiment, w.Name, WebhookUrl.Mask(w.Url), w.Events, w.CreatedAt, w.CreatedBy);
}

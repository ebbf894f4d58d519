using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;

namespace ReTok.Tracking;

/// <summary>How webhook deliveries are sent; <see cref="FromEnvironment"/> reads RETOK_DASHBOARD_URL and RETOK_WEBHOOK_*.</summary>
public sealed record WebhookOptions
{
    /// <summary>The dashboard's public base URL (https://retok.lab.example): messages link to {base}/runs/{id}. Null: no link.</summary>
    public string? DashboardUrl { get; init; }
    /// <summary>Attempts per delivery before it is marked Dead.</summary>
    public int MaxAttempts { get; init; } = 8;
    /// <summary>Retry n waits BackoffBase · 2^(n-1) (capped at <see cref="MaxBackoff"/>), or the receiver's Retry-After when longer.</summary>
    public TimeSpan BackoffBase { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromMinutes(30);
    /// <summary>Per request; the claim lease is this plus a margin, so no other dispatcher sends the row meanwhile.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>How often an idle dispatcher looks for due deliveries.</summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>Delivered and dead rows older than this are deleted (hourly, by any dispatcher); pending ones are kept.</summary>
    public TimeSpan Retention { get; init; } = TimeSpan.FromDays(30);
    public int BatchSize { get; init; } = 20;
    /// <summary>RETOK_WEBHOOKS=0 turns the dispatcher off in this process (deliveries wait for another one).</summary>
    public bool Enabled { get; init; } = true;

    public TimeSpan Lease => Timeout + TimeSpan.FromSeconds(30);

    public static WebhookOptions FromEnvironment(Func<string, string?>? get = null)
    {
        get ??= Environment.GetEnvironmentVariable;
        double? D(string k) => get(k) is { Length: > 0 } v ? double.Parse(v, CultureInfo.InvariantCulture) : null;
        var o = new WebhookOptions();
        return o with
        {
            DashboardUrl = get("RETOK_DASHBOARD_URL") is { Length: > 0 } u ? u : null,
            MaxAttempts = (int?)D("RETOK_WEBHOOK_MAX_ATTEMPTS") ?? o.MaxAttempts,
            BackoffBase = D("RETOK_WEBHOOK_BACKOFF_MS") is { } b ? TimeSpan.FromMilliseconds(b) : o.BackoffBase,
            Timeout = D("RETOK_WEBHOOK_TIMEOUT_S") is { } s ? TimeSpan.FromSeconds(s) : o.Timeout,
            PollInterval = D("RETOK_WEBHOOK_POLL_MS") is { } p ? TimeSpan.FromMilliseconds(p) : o.PollInterval,
            Enabled = get("RETOK_WEBHOOKS") is not ("0" or "false"),
        };
    }
}

/// <summary>What one attempt came to (for the CLI's `webhooks test` and the log).</summary>
public sealed record DeliveryAttempt(long DeliveryId, DeliveryStatus Status, int? HttpStatus, string? Error, int Attempts, DateTimeOffset? RetryAt);

/// <summary>
/// Sends the webhook outbox: claims due deliveries (<see cref="WebhookStore.ClaimAsync"/>), POSTs a Slack- and
/// Teams-compatible JSON message (<c>{"text": …}</c> plus structured fields) with an Idempotency-Key header, and records
/// each attempt. Network errors, timeouts, 408, 429 and 5xx are retried with exponential backoff (a longer Retry-After
/// wins) up to <see cref="WebhookOptions.MaxAttempts"/>; other statuses are final. Runs in every worker and in the
/// dashboard; the claim's SKIP LOCKED and lease keep them from sending a row twice. Logs name the masked URL and the
/// status, never the response body.
/// </summary>
public sealed class WebhookDispatcher : IDisposable
{
    readonly Tracker _t;
    readonly HttpClient _http;
    readonly Action<string> _log;
    public WebhookOptions Options { get; }
    public string Owner { get; } = $"{Environment.MachineName}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..6]}";

    public WebhookDispatcher(Tracker tracker, WebhookOptions options, Action<string>? log = null)
    {
        _t = tracker;
        Options = options;
        _log = log ?? (_ => { });
        // No redirects: a redirect would carry the message (and our Idempotency-Key) somewhere the operator did not configure.
        _http = new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false, PooledConnectionLifetime = TimeSpan.FromMinutes(5), UseCookies = false })
        { Timeout = Timeout.InfiniteTimeSpan };
        _http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("ReTok.Jobs-webhooks", "1"));
    }

    /// <summary>Sends every due delivery until none is left (or <paramref name="ct"/>); returns how many attempts were made.</summary>
    public async Task<int> RunOnceAsync(CancellationToken ct = default)
    {
        var n = 0;
        while (!ct.IsCancellationRequested)
        {
            var batch = await _t.Webhooks.ClaimAsync(Owner, Options.BatchSize, Options.Lease, ct: ct);
            if (batch.Count == 0) return n;
            await Parallel.ForEachAsync(batch, new ParallelOptions { MaxDegreeOfParallelism = 4, CancellationToken = ct }, async (d, k) => await SendAsync(d, k));
            n += batch.Count;
        }
        return n;
    }

    /// <summary>Polls until <paramref name="ct"/> fires (the background loop of a worker or the dashboard).</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        var nextPrune = DateTimeOffset.UtcNow;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await RunOnceAsync(ct);
                if (DateTimeOffset.UtcNow >= nextPrune)
                {
                    nextPrune = DateTimeOffset.UtcNow.AddHours(1);
                    await _t.Webhooks.PruneAsync(Options.Retention, ct);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception ex) { _log($"webhooks: dispatcher pass failed: {ex.GetType().Name}: {Redact.Secrets(ex.Message)}"); }
            try { await Task.Delay(Options.PollInterval, ct); } catch (OperationCanceledException) { return; }
        }
    }

    /// <summary>A dispatcher that polls until <paramref name="ct"/> fires, then disposes itself (a host's background loop).</summary>
    public static async Task RunInBackgroundAsync(Tracker tracker, WebhookOptions options, Action<string>? log, CancellationToken ct)
    {
        using var d = new WebhookDispatcher(tracker, options, log);
        await Task.Yield();
        await d.RunAsync(ct);
    }

    /// <summary>Claims and sends one delivery now (the CLI's `webhooks test`); null when it is not due or another dispatcher holds it.</summary>
    public async Task<DeliveryAttempt?> SendNowAsync(long deliveryId, CancellationToken ct = default)
    {
        var d = (await _t.Webhooks.ClaimAsync(Owner, 1, Options.Lease, deliveryId, ct)).SingleOrDefault();
        return d is null ? null : await SendAsync(d, ct);
    }

    async Task<DeliveryAttempt> SendAsync(ClaimedDelivery d, CancellationToken ct)
    {
        int? status = null;
        string? error = null;
        TimeSpan? retryAfter = null;
        bool retryable;
        try
        {
            using var req = new HttpRequestMessage(HttpMethod.Post, d.Url) { Content = new StringContent(Payload(d), Encoding.UTF8, "application/json") };
            req.Headers.Add("Idempotency-Key", d.IdempotencyKey.ToString());
            req.Headers.Add("X-Retok-Event", d.Event);
            req.Headers.Add("X-Retok-Delivery", d.Id.ToString(CultureInfo.InvariantCulture));
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(Options.Timeout);
            using var res = await _http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
            status = (int)res.StatusCode;
            retryAfter = RetryAfter(res);
            retryable = status is 408 or 429 or >= 500;
            if (!res.IsSuccessStatusCode) error = $"HTTP {status} {res.ReasonPhrase}";   // the body is not read: receivers echo secrets
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            error = $"timed out after {Options.Timeout.TotalSeconds:F0} s";
            retryable = true;
        }
        catch (HttpRequestException ex)
        {
            error = WebhookUrl.Scrub($"{ex.HttpRequestError}: {ex.Message}", d.Url);
            retryable = true;
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            // anything else still counts as an attempt, so a row can never be retried forever without one
            error = WebhookUrl.Scrub($"{ex.GetType().Name}: {ex.Message}", d.Url);
            retryable = true;
        }
        var attempts = d.Attempts + 1;
        DeliveryStatus outcome;
        DateTimeOffset? retryAt = null;
        if (status is >= 200 and < 300) outcome = DeliveryStatus.Delivered;
        else if (retryable && attempts < Options.MaxAttempts)
        {
            outcome = DeliveryStatus.Pending;
            var backoff = Backoff(attempts);
            if (retryAfter is { } ra && ra > backoff) backoff = ra < TimeSpan.FromHours(1) ? ra : TimeSpan.FromHours(1);
            retryAt = DateTimeOffset.UtcNow + backoff;
        }
        else outcome = DeliveryStatus.Dead;
        if (outcome == DeliveryStatus.Dead && error is not null && retryable) error = $"gave up after {attempts} attempts: {error}";
        var mine = await _t.Webhooks.RecordAttemptAsync(d.Id, Owner, outcome, status ?? 0, error, retryAt, CancellationToken.None);
        var target = $"delivery {d.Id} ({d.Event}{(d.RunId is { } r ? $", run {r}" : "")}) to {WebhookUrl.Mask(d.Url)}";
        if (!mine) _log($"webhooks: {target}: lease lost before the attempt was recorded");
        else if (outcome == DeliveryStatus.Pending) _log($"webhooks: {target}: {error}; attempt {attempts} of {Options.MaxAttempts}, retry at {retryAt:HH:mm:ss}");
        else if (outcome == DeliveryStatus.Dead) _log($"webhooks: {target}: dead after attempt {attempts}: {error}");
        return new DeliveryAttempt(d.Id, outcome, status, error, attempts, retryAt);
    }

    TimeSpan Backoff(int attempts)
    {
        var ms = Options.BackoffBase.TotalMilliseconds * Math.Pow(2, Math.Min(attempts - 1, 30));
        return TimeSpan.FromMilliseconds(Math.Min(ms, Options.MaxBackoff.TotalMilliseconds));
    }

    static TimeSpan? RetryAfter(HttpResponseMessage res)
    {
        if (res.Headers.RetryAfter is not { } ra) return null;
        if (ra.Delta is { } delta) return delta;
        if (ra.Date is { } date) return date - DateTimeOffset.UtcNow is { } d && d > TimeSpan.Zero ? d : TimeSpan.Zero;
        return null;
    }

    /// <summary>The message: Slack and Teams incoming webhooks show <c>text</c>; the other fields are for programs.</summary>
    public string Payload(ClaimedDelivery d) => BuildPayload(d.Event, d.Id, d.IdempotencyKey, d.Facts, Options.DashboardUrl).ToJsonString();

    public static JsonObject BuildPayload(string ev, long deliveryId, Guid key, string factsJson, string? dashboardUrl)
    {
        var f = JsonNode.Parse(factsJson) as JsonObject ?? new JsonObject();
        string? S(string k) => f[k] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        long? L(string k) => f[k] is JsonValue v && v.TryGetValue<long>(out var l) ? l : null;
        DateTimeOffset? T(string k) => f[k] is JsonValue v && v.TryGetValue<string>(out var s) && DateTimeOffset.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var x) ? x : null;
        var baseUrl = dashboardUrl?.TrimEnd('/');
        var runId = L("run_id");
        var pipelineId = S("pipeline_id");
        var experiment = S("experiment");
        string? link = baseUrl is null ? null
            : runId is { } id ? $"{baseUrl}/runs/{id}"
            : ev == WebhookEvents.PipelineFinished && pipelineId is not null ? $"{baseUrl}/runs?pipeline={pipelineId}"
            : experiment is not null ? $"{baseUrl}/experiments/{Uri.EscapeDataString(experiment)}" : baseUrl;
        var start = T("started_at");
        var end = T("finished_at");
        double? duration = start is { } a && end is { } b && b >= a ? Math.Round((b - a).TotalSeconds, 1) : null;
        var error = ErrorSummary(S("error"));
        var status = S("status");
        string text;
        if (ev == WebhookStore.TestEvent) text = $"ReTok test message for experiment {experiment}{(link is null ? "" : $": {link}")}";
        else if (ev == WebhookEvents.PipelineFinished)
            text = $"{Icon(status)} pipeline {S("pipeline")} {status?.ToLowerInvariant()} ({L("succeeded")}/{L("runs")} runs succeeded)" +
                   $"{(duration is { } pd ? $" in {Human(pd)}" : "")} · experiment {experiment}{(link is null ? "" : $"\n{link}")}";
        else
            text = $"{Icon(status)} run {runId} {(S("name") is { } n ? $"'{n}' " : "")}({S("kind")}) {status?.ToLowerInvariant()}" +
                   $"{(duration is { } rd ? $" after {Human(rd)}" : "")} · experiment {experiment}{(error is null ? "" : $"\n{error}")}{(link is null ? "" : $"\n{link}")}";
        return new JsonObject
        {
            ["text"] = text,
            ["event"] = ev,
            ["run_id"] = runId,
            ["kind"] = S("kind"),
            ["name"] = S("name") ?? S("pipeline"),
            ["experiment"] = experiment,
            ["status"] = status,
            ["error"] = error,
            ["duration_seconds"] = duration,
            ["link"] = link,
            ["pipeline_id"] = pipelineId,
            ["pipeline"] = S("pipeline"),
            ["attempt"] = L("attempt"),
            ["finished_at"] = end?.ToString("O", CultureInfo.InvariantCulture),
            ["delivery_id"] = deliveryId,
            ["idempotency_key"] = key.ToString(),
        };
    }

    /// <summary>The first line of a failure reason, credentials blanked, at most 300 characters: failure reasons are public, but a chat channel is wider still.</summary>
    public static string? ErrorSummary(string? reason)
    {
        if (string.IsNullOrWhiteSpace(reason)) return null;
        var line = reason.Split('\n', 2)[0].Trim();
        line = SafeText.Clean(Redact.Secrets(line));
        return line.Length <= 300 ? line : line[..299] + "…";
    }

    static string Icon(string? status) => status switch { "Succeeded" => "✅", "Failed" => "❌", "Cancelled" => "⚪", _ => "ℹ️" };

    static string Human(double s) => s >= 3600 ? $"{(int)(s / 3600)}h{(int)(s % 3600 / 60):00}m" : s >= 60 ? $"{(int)(s / 60)}m{(int)(s % 60):00}s" : $"{s:F1}s";

    public void Dispose() => _http.Dispose();
}

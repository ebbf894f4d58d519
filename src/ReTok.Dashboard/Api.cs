using System.Security.Claims;
using System.Text;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using ReTok.Dashboard.Auth;
using ReTok.Engine;
using ReTok.Tracking;
using ReTok.Tracking.Artifacts;

namespace ReTok.Dashboard;

public sealed record SubmitRequest(string? Yaml, string? File, List<string>? Overrides);
public sealed record MeDto(string Name, UserRole Role, string Via);
public sealed record KindDto(string Name, string Queue, int MaxAttempts, string? Description);
public sealed record CancelDto(long RunId, IReadOnlyList<long> CancelledNow, IReadOnlyList<long> CancelRequested);
public sealed record RetryDto(long RunId, RunStatus Status);
public sealed record SpecErrorDto(string Title, IReadOnlyList<string> Errors);

/// <summary>The JSON API: everything the pages show and do. Auth: cookie (with CSRF header on writes) or Bearer token.</summary>
public static class Api
{
    public static void Map(WebApplication app)
    {
        var api = app.MapGroup("/api").RequireAuthorization(AuthSetup.ViewerPolicy).WithTags("retok");

        api.MapGet("/me", (ClaimsPrincipal u) => new MeDto(u.Identity!.Name!, AuthSetup.RoleOf(u)!.Value, u.Identity.AuthenticationType == AuthSetup.Bearer ? "token" : "cookie"))
            .WithSummary("the signed-in user and role");
        api.MapGet("/csrf", (HttpContext ctx) => new { token = ctx.RequestServices.GetRequiredService<IAntiforgery>().GetAndStoreTokens(ctx).RequestToken, header = AuthSetup.CsrfHeader })
            .WithSummary("antiforgery token for cookie-authenticated writes (send it as X-CSRF-TOKEN)");
        api.MapGet("/kinds", (JobClient c) => c.Kinds.All.Select(k => new KindDto(k.Name, k.Queue, k.MaxAttempts, k.Description)).ToList())
            .WithSummary("registered job kinds");

        api.MapGet("/runs", async (DashboardData d, string? experiment, string? kind, RunStatus? status, string? tag, Guid? pipeline, int? limit, CancellationToken ct) =>
                (await d.ListRunsAsync(experiment, kind, status, tag, pipeline, limit ?? 200, ct)).Select(RunDto.From).ToList())
            .WithSummary("runs, newest first, filtered by experiment name, kind, status, tag or pipeline");
        api.MapGet("/runs/live", async (DashboardData d, string? ids, CancellationToken ct) =>
                (await d.GetRunsAsync(ParseIds(ids), ct)).Select(DashboardData.Live).ToList())
            .WithSummary("status/progress/ETA of the given runs (ids=1,2,3), for polling");
        api.MapGet("/runs/{id:long}", async (DashboardData d, long id, CancellationToken ct) =>
                await d.GetRunAsync(id, ct) is { } r ? Results.Ok(RunDto.From(r)) : NotFound($"run {id}"))
            .WithSummary("one run with parameters and inputs");
        api.MapGet("/runs/{id:long}/metrics", async (HttpContext ctx, DashboardData d, long id, string? key, [Microsoft.AspNetCore.Mvc.FromQuery(Name = "after_key")] string? afterKey,
                [Microsoft.AspNetCore.Mvc.FromQuery(Name = "after_step")] long? afterStep, int? limit, [Microsoft.AspNetCore.Mvc.FromQuery(Name = "max_points")] int? maxPoints, CancellationToken ct) =>
            {
                if (await d.GetRunAsync(id, ct) is null) return NotFound($"run {id}");
                if (maxPoints is { } mp)
                {
                    // chart-sized: every key downsampled in SQL (min and max of each step bucket kept), no times
                    if (mp is < 4 or > MaxMetricPage) return Results.Problem(statusCode: 400, title: $"max_points: expected 4..{MaxMetricPage}, got {mp}");
                    var s = await d.Tracker.GetMetricSeriesAsync(id, mp, ct);
                    return Results.Ok(s.Where(kv => key is null || kv.Key == key).ToDictionary(kv => kv.Key, kv => kv.Value.Select(p => new { p.Step, p.Value }).ToList()));
                }
                var n = limit ?? DefaultMetricPage;
                if (n is < 1 or > MaxMetricPage) return Results.Problem(statusCode: 400, title: $"limit: expected 1..{MaxMetricPage}, got {n}");
                var pts = await d.Tracker.GetMetricsPageAsync(id, key, afterKey, afterStep ?? long.MinValue, n, ct);
                if (pts.Count > n)
                {
                    // more follow: the cursor of the next page is the last point of this one
                    pts.RemoveAt(n);
                    var last = pts[^1];
                    var next = $"/api/runs/{id}/metrics?limit={n}&after_key={Uri.EscapeDataString(last.Key)}&after_step={last.Step}{(key is null ? "" : "&key=" + Uri.EscapeDataString(key))}";
                    ctx.Response.Headers.Link = $"<{next}>; rel=\"next\"";
                }
                return Results.Ok(pts.GroupBy(m => m.Key).ToDictionary(g => g.Key, g => g.Select(m => new { m.Step, m.Value, m.Time }).ToList()));
            })
            .WithSummary($"metric points of a run: key -> [{{step, value, time}}] in (key, step) order, at most `limit` points a page " +
                         $"(default {DefaultMetricPage}, max {MaxMetricPage}); the next page is in the Link header (rel=next, via after_key/after_step). " +
                         "With max_points=N instead: every key downsampled to about N points (min/max per step bucket) for charts.");
        api.MapGet("/runs/{id:long}/metrics/latest", async (DashboardData d, long id, CancellationToken ct) =>
                (await d.Tracker.GetLatestMetricsAsync([id], ct)).Select(m => new MetricPointDto(m.Key, m.Step, m.Value, m.Time)).ToList())
            .WithSummary("the last point of each metric key");
        api.MapGet("/runs/{id:long}/artifacts", async (DashboardData d, long id, CancellationToken ct) =>
                await d.GetRunAsync(id, ct) is null ? NotFound($"run {id}") : Results.Ok((await d.Tracker.ListArtifactsAsync(id, ct)).Select(ArtifactDto.From).ToList()))
            .WithSummary("artifacts of a run with size and sha256");
        api.MapGet("/runs/{id:long}/artifacts/{**name}", (HttpContext ctx, long id, string name, bool? inline) => ServeArtifactAsync(ctx, id, name, inline == true))
            .WithSummary("download an artifact (looked up by run id and name; sha256 in the X-Checksum-Sha256 and Repr-Digest headers)");
        api.MapGet("/runs/{id:long}/lineage", async (DashboardData d, long id, CancellationToken ct) =>
                await d.GetRunAsync(id, ct) is { } r ? Results.Ok(await d.LineageAsync(r, ct)) : NotFound($"run {id}"))
            .WithSummary("inputs (with producing runs), consumers of outputs, parent/shards, pipeline");
        api.MapGet("/runs/{id:long}/logs", async (DashboardData d, long id, long? after, int? tail, CancellationToken ct) =>
                await d.GetRunAsync(id, ct) is null ? NotFound($"run {id}") : Results.Ok(await d.LogsAsync(id, after, tail ?? 1000, ct)))
            .WithSummary("log lines: the last `tail` (default 1000), or those after id `after`");
        api.MapGet("/compare", async (DashboardData d, string? ids, CancellationToken ct) => await Compare.BuildAsync(d, ParseIds(ids), ct))
            .WithSummary("parameter diff and last metric values of runs side by side (ids=1,2,3)");
        api.MapGet("/compare/images", async (DashboardData d, string? ids, CancellationToken ct) => await CompareImages.BuildAsync(d, ParseIds(ids), ct))
            .WithSummary("image tiles of runs side by side (ids=1,2): per run its K values, reconstruction and original tile URLs per source image, sample tiles per class");
        api.MapGet("/experiments", async (DashboardData d, CancellationToken ct) => await d.ExperimentsAsync(ct))
            .WithSummary("experiments with run counts");
        api.MapGet("/results", async (DashboardData d, string? experiment, CancellationToken ct) => await ResultsTable.BuildAsync(d.Tracker, experiment, ct))
            .WithSummary("the paper-shaped results table (all runs, or one experiment) from metric keys NAME@k=K");
        api.MapGet("/experiments/{name}/results", async (DashboardData d, string name, CancellationToken ct) => await ResultsTable.BuildAsync(d.Tracker, name, ct))
            .WithSummary("the results table of one experiment");
        api.MapGet("/results/export", (DashboardData d, string? experiment, string? format, CancellationToken ct) => ExportResultsAsync(d, experiment, format, ct))
            .WithSummary("the results table as a file: format=csv (default; full precision and the run id of each number), markdown or latex (booktabs)");
        api.MapGet("/experiments/{name}/results/export", (DashboardData d, string name, string? format, CancellationToken ct) => ExportResultsAsync(d, name, format, ct))
            .WithSummary("the results table of one experiment as csv, markdown or latex");
        api.MapGet("/runs/{id:long}/metrics.csv", async (DashboardData d, long id, CancellationToken ct) =>
                await d.GetRunAsync(id, ct) is null ? NotFound($"run {id}")
                    : Results.Text(Exports.MetricsCsv(await d.Tracker.GetMetricsAsync(id, ct: ct)), "text/csv; charset=utf-8"))
            .WithSummary("every metric point of a run as CSV: key, step, value, time");
        api.MapGet("/workers", async (DashboardData d, CancellationToken ct) => await d.WorkersAsync(ct))
            .WithSummary("worker machines, their device slots with the current run, last heartbeat");
        api.MapGet("/specs", (SpecSubmitter s) => s.JobFiles()).WithSummary("spec files offered from jobs/");

        api.MapPost("/submit", SubmitAsync).RequireAuthorization(AuthSetup.OperatorPolicy).RequireCsrfForCookies()
            .Accepts<SubmitRequest>("application/json", "application/yaml", "text/plain", "multipart/form-data")
            .WithSummary("submit a spec: JSON {yaml | file, overrides}, a raw YAML body (overrides as ?set=k=v), or multipart field 'spec'");
        api.MapPost("/runs/{id:long}/cancel", async (JobClient c, DashboardData d, long id, CancellationToken ct) =>
            {
                if (await d.GetRunAsync(id, ct) is not { } r) return NotFound($"run {id}");
                var o = await c.CancelAsync(id, ct);
                return o.Any ? Results.Ok(new CancelDto(id, o.CancelledNow, o.CancelRequested))
                    : Results.Problem(statusCode: 409, title: $"run {id} is {r.Status}: nothing to cancel");
            })
            .RequireAuthorization(AuthSetup.OperatorPolicy).RequireCsrfForCookies().WithSummary("cancel a run (and its shards / downstream waiting steps)");
        api.MapPost("/runs/{id:long}/retry", async (JobClient c, DashboardData d, long id, CancellationToken ct) =>
            {
                if (await d.GetRunAsync(id, ct) is not { } r) return NotFound($"run {id}");
                return await c.RetryAsync(id, ct) is { } s ? Results.Ok(new RetryDto(id, s))
                    : Results.Problem(statusCode: 409, title: $"run {id} is {r.Status}: only Failed or Cancelled runs can be retried");
            })
            .RequireAuthorization(AuthSetup.OperatorPolicy).RequireCsrfForCookies().WithSummary("re-queue a Failed or Cancelled run");
        api.MapPost("/runs/{id:long}/priority", async (JobClient c, DashboardData d, long id, PriorityRequest req, CancellationToken ct) =>
            {
                if (!RunPriority.IsValid(req.Priority)) return Results.Problem(statusCode: 400, title: $"priority: expected high, normal or low, got '{req.Priority}'");
                if (await d.GetRunAsync(id, ct) is not { } r) return NotFound($"run {id}");
                return await c.SetPriorityAsync(id, req.Priority!, ct) is { } s ? Results.Ok(new PriorityDto(id, req.Priority!, s))
                    : Results.Problem(statusCode: 409, title: $"run {id} is {r.Status}: only a Waiting or Queued run can change priority");
            })
            .RequireAuthorization(AuthSetup.OperatorPolicy).RequireCsrfForCookies().WithSummary("set the priority (high, normal, low) of a run that has not started");
        WebhookApi.Map(api);
    }

    public const int DefaultMetricPage = 10_000, MaxMetricPage = 100_000;

    public static IResult NotFound(string what) => Results.Problem(statusCode: 404, title: $"{what} not found");

    static async Task<IResult> ExportResultsAsync(DashboardData d, string? experiment, string? format, CancellationToken ct)
    {
        if (!Exports.TryParseFormat(format, out var f)) return Results.Problem(statusCode: 400, title: $"format: expected csv, markdown or latex, got '{format}'");
        var (body, type, ext) = Exports.Results(await ResultsTable.BuildAsync(d.Tracker, experiment, ct), f);
        var name = $"results-{(experiment is null ? "all" : new string(experiment.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' ? c : '_').ToArray()))}.{ext}";
        return Results.File(System.Text.Encoding.UTF8.GetBytes(body), type, name);
    }

    public static List<long> ParseIds(string? ids) => (ids ?? "").Split([',', ' ', ';'], StringSplitOptions.RemoveEmptyEntries)
        .Select(s => long.TryParse(s, out var v) ? v : -1).Where(v => v > 0).Distinct().Take(20).ToList();

    static async Task<IResult> SubmitAsync(HttpContext ctx, SpecSubmitter submitter, CancellationToken ct)
    {
        string? yaml = null, file = null;
        var overrides = ctx.Request.Query["set"].OfType<string>().ToList();
        try
        {
            var type = ctx.Request.ContentType ?? "";
            if (ctx.Request.HasFormContentType)
            {
                var form = await ctx.Request.ReadFormAsync(ct);
                if (form.Files.GetFile("spec") is { } f) { using var r = new StreamReader(f.OpenReadStream()); yaml = await r.ReadToEndAsync(ct); }
                yaml ??= form["yaml"].FirstOrDefault() is { Length: > 0 } y ? y : null;
                file = form["file"].FirstOrDefault() is { Length: > 0 } fn ? fn : null;
                overrides.AddRange(SpecSubmitter.ParseOverrides(form["overrides"].FirstOrDefault()));
            }
            else if (type.StartsWith("application/json", StringComparison.OrdinalIgnoreCase))
            {
                var req = await ctx.Request.ReadFromJsonAsync<SubmitRequest>(ctx.RequestServices.GetRequiredService<Microsoft.Extensions.Options.IOptions<Microsoft.AspNetCore.Http.Json.JsonOptions>>().Value.SerializerOptions, ct);
                (yaml, file) = (req?.Yaml, req?.File);
                overrides.AddRange(req?.Overrides ?? []);
            }
            else
            {
                using var r = new StreamReader(ctx.Request.Body, Encoding.UTF8);
                yaml = await r.ReadToEndAsync(ct);
            }
        }
        catch (Exception ex) when (IsTooLarge(ex)) { return TooLarge(ctx); }
        catch (System.Text.Json.JsonException ex) { return Results.Problem(statusCode: 400, title: "invalid JSON body", detail: ex.Message); }

        if (string.IsNullOrWhiteSpace(yaml) && file is not null)
        {
            yaml = submitter.ReadJobFile(file);
            if (yaml is null) return Results.Json(new SpecErrorDto("invalid spec", [$"file: '{file}' is not one of the specs in jobs/ ({string.Join(", ", submitter.JobFiles())})"]), statusCode: 400);
        }
        try
        {
            var plan = submitter.Validate(yaml ?? "", overrides);
            var result = await submitter.SubmitAsync(plan, ct);
            return Results.Json(result, statusCode: 201);
        }
        catch (SpecValidationException ex) { return Results.Json(new SpecErrorDto("invalid spec", ex.Errors), statusCode: 400); }
    }

    public static bool IsTooLarge(Exception ex) =>
        ex is BadHttpRequestException { StatusCode: 413 } || ex is InvalidDataException && ex.Message.Contains("limit", StringComparison.OrdinalIgnoreCase);

    public static IResult TooLarge(HttpContext ctx) =>
        Results.Problem(statusCode: 413, title: "request too large",
            detail: $"the limit is {ctx.RequestServices.GetRequiredService<DashboardOptions>().MaxUploadBytes} bytes");

    static readonly HashSet<string> InlineImages = ["image/png", "image/jpeg", "image/gif", "image/webp"];

    /// <summary>
    /// Streams an artifact found by (run id, name) in the database; the store URI never comes from the client, so there
    /// is no path to traverse. Images may be shown inline; everything else is an attachment, and types a browser could
    /// execute (html, svg, …) go out as octet-stream. A hash mismatch aborts the response instead of finishing it.
    /// </summary>
    public static async Task<IResult> ServeArtifactAsync(HttpContext ctx, long runId, string name, bool inline)
    {
        try { ArtifactNames.Validate(name); }
        catch (ArgumentException ex) { return Results.Problem(statusCode: 400, title: "invalid artifact name", detail: ex.Message); }
        var tracker = ctx.RequestServices.GetRequiredService<Tracker>();
        var a = await tracker.GetArtifactAsync(runId, name, ctx.RequestAborted);
        if (a is null) return NotFound($"artifact '{name}' of run {runId}");
        var isImage = InlineImages.Contains(a.ContentType);
        var type = isImage || a.ContentType is "application/json" or "text/plain" or "application/x-yaml" or "application/zip" or "application/x-tar"
            ? a.ContentType : "application/octet-stream";
        Stream stream;
        try { stream = await tracker.OpenArtifactAsync(a, ctx.RequestAborted); }
        catch (FileNotFoundException) { return Results.Problem(statusCode: 410, title: $"artifact '{name}' of run {runId} is recorded but its bytes are missing from the store"); }
        var res = ctx.Response;
        res.ContentType = type;
        res.ContentLength = a.SizeBytes;
        res.Headers["X-Checksum-Sha256"] = a.Sha256;
        res.Headers["Repr-Digest"] = $"sha-256=:{Convert.ToBase64String(Convert.FromHexString(a.Sha256))}:";
        res.Headers.ETag = $"\"{a.Sha256}\"";
        res.Headers.CacheControl = "private, max-age=3600";
        var fileName = name.Split('/')[^1];
        res.Headers.ContentDisposition = inline && isImage ? "inline" : $"attachment; filename=\"{fileName}\"";
        await using (stream)
        {
            try { await stream.CopyToAsync(res.Body, 1 << 16, ctx.RequestAborted); }
            catch (ArtifactIntegrityException) { ctx.Abort(); }
        }
        return Results.Empty;
    }
}

public sealed record PriorityRequest(string? Priority);
public sealed record PriorityDto(long RunId, string Priority, RunStatus Status);

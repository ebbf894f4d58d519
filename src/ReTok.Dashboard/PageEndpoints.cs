using System.Security.Claims;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using ReTok.Dashboard.Auth;
using ReTok.Dashboard.Pages;
using ReTok.Engine;
using ReTok.Plots;
using ReTok.Tracking;
using static ReTok.Dashboard.Html;

namespace ReTok.Dashboard;

/// <summary>
/// The page endpoints: each gathers its data and returns a Razor component (Pages/) rendered on the server
/// (<see cref="Html.Page{T}"/>). Forms post with an antiforgery token; reads need any role, writes operator or admin.
/// </summary>
public static class PageEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/static/site.css", () => Static("site.css", "text/css; charset=utf-8")).AllowAnonymous().ExcludeFromDescription();
        app.MapGet("/static/app.js", () => Static("app.js", "text/javascript; charset=utf-8")).AllowAnonymous().ExcludeFromDescription();
        app.MapGet("/login", LoginPageAsync).AllowAnonymous().ExcludeFromDescription();
        app.MapPost("/login", LoginAsync).AllowAnonymous().ExcludeFromDescription();
        app.MapPost("/logout", LogoutAsync).ExcludeFromDescription();
        app.MapGet("/forbidden", (HttpContext ctx) => Message(ctx, "Not allowed",
            "Your role does not allow this. Operators and admins can submit, cancel and retry runs.", 403)).ExcludeFromDescription();

        var pages = app.MapGroup("").RequireAuthorization(AuthSetup.ViewerPolicy).ExcludeFromDescription();
        pages.MapGet("/", () => Results.Redirect("/runs"));
        pages.MapGet("/runs", RunsPageAsync);
        pages.MapGet("/runs/{id:long}", RunPageAsync);
        pages.MapGet("/runs/{id:long}/artifacts/{**name}", (HttpContext ctx, long id, string name, bool? inline) => Api.ServeArtifactAsync(ctx, id, name, inline == true));
        pages.MapPost("/runs/{id:long}/cancel", CancelAsync).RequireAuthorization(AuthSetup.OperatorPolicy);
        pages.MapPost("/runs/{id:long}/retry", RetryAsync).RequireAuthorization(AuthSetup.OperatorPolicy);
        pages.MapGet("/compare", ComparePageAsync);
        pages.MapGet("/compare/images", async (HttpContext ctx, DashboardData d) =>
        {
            var ids = Api.ParseIds(string.Join(",", ctx.Request.Query["ids"].OfType<string>()));
            return Page<CompareImagesPage>(new CompareImagesModel(PageContext.Of(ctx), ids, await CompareImages.BuildAsync(d, ids, ctx.RequestAborted)));
        });
        pages.MapGet("/experiments", ExperimentsPageAsync);
        pages.MapGet("/experiments/{name}", ExperimentPageAsync);
        pages.MapGet("/workers", WorkersPageAsync);
        pages.MapGet("/submit", (HttpContext ctx, SpecSubmitter s, string? file) => SubmitPage(ctx, s, file, null, "", null))
            .RequireAuthorization(AuthSetup.OperatorPolicy);
        pages.MapPost("/submit", SubmitAsync).RequireAuthorization(AuthSetup.OperatorPolicy);
    }

    /// <summary>wwwroot/ files, embedded in this assembly: the same bytes whichever executable hosts the dashboard.</summary>
    static IResult Static(string name, string contentType)
    {
        using var stream = typeof(PageEndpoints).Assembly.GetManifestResourceStream("wwwroot/" + name)
            ?? throw new InvalidOperationException($"wwwroot/{name} is not embedded in {typeof(PageEndpoints).Assembly.GetName().Name}");
        using var ms = new MemoryStream();
        stream.CopyTo(ms);
        return Results.Bytes(ms.ToArray(), contentType);
    }

    // ------------------------------------------------------------------ login

    static async Task<IResult> LoginPageAsync(HttpContext ctx, UserStore users, string? returnUrl, string? error)
    {
        var noUsers = !await users.AnyUserAsync(ctx.RequestAborted);
        return Page<LoginPage>(new LoginModel(PageContext.Of(ctx), noUsers, error is not null, LocalUrl(returnUrl)), error is null ? 200 : 401);
    }

    static async Task<IResult> LoginAsync(HttpContext ctx, UserStore users, LoginThrottle throttle, IAntiforgery af)
    {
        if (await BadCsrfAsync(ctx, af) is { } bad) return bad;
        var form = await ctx.Request.ReadFormAsync(ctx.RequestAborted);
        var returnUrl = LocalUrl(form["returnUrl"]);
        var name = form["user"].ToString().Trim();
        var address = ctx.Connection.RemoteIpAddress?.ToString() ?? "unknown";
        using var attempt = throttle.TryBegin(name, address, out var wait);
        if (attempt is null)
        {
            var minutes = Math.Max(1, (int)Math.Ceiling(wait.TotalMinutes));
            ctx.Response.Headers.RetryAfter = ((int)Math.Ceiling(wait.TotalSeconds)).ToString();
            return Message(ctx, "Too many attempts",
                $"Too many failed log-in attempts for this user or from this address. Try again in {minutes} minute{(minutes == 1 ? "" : "s")}.", 429);
        }
        var p = await users.VerifyPasswordAsync(name, form["password"].ToString(), ctx.RequestAborted);
        if (p is null)
        {
            attempt.Failed();
            return Results.Redirect($"/login?error=1&returnUrl={U(returnUrl)}");
        }
        attempt.Succeeded();
        var sid = await users.CreateSessionAsync(p.UserId, address, ctx.RequestAborted);
        await ctx.SignInAsync(AuthSetup.Cookie, AuthSetup.ToClaims(p with { SessionId = sid }, AuthSetup.Cookie));
        return Results.Redirect(returnUrl);
    }

    static async Task<IResult> LogoutAsync(HttpContext ctx, UserStore users, IAntiforgery af)
    {
        if (await BadCsrfAsync(ctx, af) is { } bad) return bad;
        // Server-side: the cookie stays valid cryptographically, so the session it names is what gets revoked.
        if (ctx.User.FindFirstValue(AuthSetup.SessionClaim) is { } sid) await users.RevokeSessionAsync(sid, ctx.RequestAborted);
        await ctx.SignOutAsync(AuthSetup.Cookie);
        return Results.Redirect("/login");
    }

    /// <summary>
    /// Only local paths, by the framework's check: not "//host", "/\\host", nor "/\t/host" (browsers drop tabs and
    /// newlines from URLs, turning it into "//host"), so the login cannot be used as an open redirect.
    /// </summary>
    static string LocalUrl(string? url) =>
        url is { Length: > 0 } u && Microsoft.AspNetCore.Http.HttpResults.RedirectHttpResult.IsLocalUrl(u) && !u.StartsWith('~') ? u : "/runs";

    static async Task<IResult?> BadCsrfAsync(HttpContext ctx, IAntiforgery af)
    {
        try { await af.ValidateRequestAsync(ctx); return null; }
        catch (AntiforgeryValidationException)
        {
            return Message(ctx, "Form expired", "The form's security token is missing or expired. Go back, reload the page and try again.", 400);
        }
        catch (Exception ex) when (Api.IsTooLarge(ex)) { return Message(ctx, "Too large", "The request is larger than the upload limit.", 413); }
    }

    // ------------------------------------------------------------------ runs

    static async Task<IResult> RunsPageAsync(HttpContext ctx, DashboardData d, string? experiment, string? kind, string? status, string? tag, Guid? pipeline, int? limit)
    {
        RunStatus? st = Enum.TryParse<RunStatus>(status, true, out var s) ? s : null;
        var runs = await d.ListRunsAsync(experiment, kind, st, tag, pipeline, limit ?? 200, ctx.RequestAborted);
        var (kinds, exps, tags) = await d.FilterChoicesAsync(ctx.RequestAborted);
        return Page<RunsPage>(new RunsModel(PageContext.Of(ctx), runs, limit ?? 200, kinds, exps, tags, experiment, kind, st, tag, pipeline));
    }

    static async Task<IResult> RunPageAsync(HttpContext ctx, DashboardData d, long id, string? msg)
    {
        var ct = ctx.RequestAborted;
        if (await d.GetRunAsync(id, ct) is not { } r) return Message(ctx, "Not found", $"run {id} does not exist", 404);
        var series = await d.SeriesAsync(id, ct);
        var latest = await d.Tracker.GetLatestMetricsAsync([id], ct);
        var artifacts = await d.Tracker.ListArtifactsAsync(id, ct);
        var lineage = await d.LineageAsync(r, ct);
        var logs = await d.LogsAsync(id, null, 300, ct);
        return Page<RunPage>(new RunModel(PageContext.Of(ctx), r, msg, series, latest, artifacts, lineage, logs));
    }

    static async Task<IResult> CancelAsync(HttpContext ctx, JobClient c, DashboardData d, IAntiforgery af, long id)
    {
        if (await BadCsrfAsync(ctx, af) is { } bad) return bad;
        if (await d.GetRunAsync(id, ctx.RequestAborted) is null) return Message(ctx, "Not found", $"run {id} does not exist", 404);
        var o = await c.CancelAsync(id, ctx.RequestAborted);
        var msg = !o.Any ? "nothing to cancel: the run already finished"
            : $"cancelled {string.Join(", ", o.CancelledNow.Select(x => "#" + x))}" + (o.CancelRequested.Count > 0
                ? $"; cancel requested for running {string.Join(", ", o.CancelRequested.Select(x => "#" + x))} (they stop at their next heartbeat)" : "");
        return Results.Redirect($"/runs/{id}?msg={U(msg)}");
    }

    static async Task<IResult> RetryAsync(HttpContext ctx, JobClient c, DashboardData d, IAntiforgery af, long id)
    {
        if (await BadCsrfAsync(ctx, af) is { } bad) return bad;
        if (await d.GetRunAsync(id, ctx.RequestAborted) is null) return Message(ctx, "Not found", $"run {id} does not exist", 404);
        var s = await c.RetryAsync(id, ctx.RequestAborted);
        return Results.Redirect($"/runs/{id}?msg={U(s is { } st ? $"retry requested: the run is {st}" : "not retried: only Failed or Cancelled runs can be retried")}");
    }

    // ------------------------------------------------------------------ compare

    static async Task<IResult> ComparePageAsync(HttpContext ctx, DashboardData d, bool? all)
    {
        var ids = Api.ParseIds(string.Join(",", ctx.Request.Query["ids"].OfType<string>()));
        if (ids.Count == 0) return Page<ComparePage>(new CompareModel(PageContext.Of(ctx), ids, all == true, null, []));
        var c = await Compare.BuildAsync(d, ids, ctx.RequestAborted);
        // one chart per metric key with more than one point, one series per run
        var seriesByRun = new List<(RunDto Run, Dictionary<string, List<(long Step, double Value)>> S)>();
        foreach (var r in c.Runs) seriesByRun.Add((r, await d.SeriesAsync(r.Id, ctx.RequestAborted)));
        var charts = seriesByRun.SelectMany(x => x.S.Where(kv => kv.Value.Count > 1).Select(kv => kv.Key)).Distinct().Order(StringComparer.Ordinal).Take(30)
            .Select(key => new Chart(key, "step", "", seriesByRun.Where(x => x.S.ContainsKey(key))
                .Select(x => new Series($"#{x.Run.Id} {x.Run.Name}", x.S[key].Select(p => ((double)p.Step, p.Value)).ToList())).ToList())).ToList();
        return Page<ComparePage>(new CompareModel(PageContext.Of(ctx), ids, all == true, c, charts));
    }

    // ------------------------------------------------------------------ experiments

    static async Task<IResult> ExperimentsPageAsync(HttpContext ctx, DashboardData d)
    {
        var exps = await d.ExperimentsAsync(ctx.RequestAborted);
        var results = await ResultsTable.BuildAsync(d.Tracker, null, ctx.RequestAborted);
        return Page<ExperimentsPage>(new ExperimentsModel(PageContext.Of(ctx), exps, results));
    }

    static async Task<IResult> ExperimentPageAsync(HttpContext ctx, DashboardData d, string name)
    {
        var ct = ctx.RequestAborted;
        // one read of the experiment's last metric values serves the results table and the K curves
        var ids = await d.Tracker.Runs.ListIdsAsync(new RunFilter(Experiment: name, Limit: int.MaxValue), ct);
        var latest = await d.Tracker.GetLatestMetricsAsync(ids, ct);
        var results = await ResultsTable.FromLatestAsync(d.Tracker, latest, ct);
        // metric-vs-K overlaid for the newest ten runs that have any (more curves per chart are unreadable)
        var curves = latest.GroupBy(m => m.RunId).Select(g => (Id: g.Key, Curves: KCurves.From(g.Select(m => (m.Key, m.Value)))))
            .Where(x => x.Curves.Count > 0).OrderByDescending(x => x.Id).Take(10).ToList();
        var names = (await d.GetRunsAsync(curves.Select(x => x.Id).ToList(), ct)).ToDictionary(r => r.Id, r => r.Name);
        var kRuns = curves.Select(x => ($"#{x.Id} {names.GetValueOrDefault(x.Id)}", x.Curves)).ToList();
        // the "Notifications" section: masked webhooks and their recent deliveries
        var hooks = await d.Tracker.Webhooks.ListAsync(name, ct) ?? [];
        var deliveries = hooks.Count == 0 ? [] : await d.Tracker.Webhooks.DeliveriesAsync(name, limit: 20, ct: ct);
        return Page<ExperimentPage>(new ExperimentModel(PageContext.Of(ctx), name, results, kRuns, hooks, deliveries));
    }

    // ------------------------------------------------------------------ workers

    static async Task<IResult> WorkersPageAsync(HttpContext ctx, DashboardData d) =>
        Page<WorkersPage>(new WorkersModel(PageContext.Of(ctx), await d.WorkersAsync(ctx.RequestAborted)));

    // ------------------------------------------------------------------ submit

    static IResult SubmitPage(HttpContext ctx, SpecSubmitter s, string? file, string? yaml, string overrides, IReadOnlyList<string>? errors, int status = 200)
    {
        if (yaml is null && file is not null) yaml = s.ReadJobFile(file);
        var max = ctx.RequestServices.GetRequiredService<DashboardOptions>().MaxUploadBytes;
        return Page<SubmitPage>(new SubmitModel(PageContext.Of(ctx), s.JobFiles(), file, yaml, overrides, errors, max), status);
    }

    static async Task<IResult> SubmitAsync(HttpContext ctx, SpecSubmitter s, IAntiforgery af)
    {
        if (await BadCsrfAsync(ctx, af) is { } bad) return bad;
        IFormCollection form;
        try { form = await ctx.Request.ReadFormAsync(ctx.RequestAborted); }
        catch (Exception ex) when (Api.IsTooLarge(ex)) { return Message(ctx, "Too large", "The spec is larger than the upload limit.", 413); }
        var file = form["file"].FirstOrDefault() is { Length: > 0 } f ? f : null;
        var overridesText = form["overrides"].ToString();
        string? yaml = form["yaml"].FirstOrDefault() is { } y && !string.IsNullOrWhiteSpace(y) ? y : null;
        if (yaml is null && form.Files.GetFile("spec") is { Length: > 0 } up)
        {
            using var r = new StreamReader(up.OpenReadStream());
            yaml = await r.ReadToEndAsync(ctx.RequestAborted);
        }
        if (yaml is null && file is not null)
        {
            yaml = s.ReadJobFile(file);
            if (yaml is null) return SubmitPage(ctx, s, null, "", overridesText, [$"file: '{file}' is not one of the specs in jobs/"], 400);
        }
        try
        {
            var plan = s.Validate(yaml ?? "", SpecSubmitter.ParseOverrides(overridesText));
            var result = await s.SubmitAsync(plan, ctx.RequestAborted);
            var first = result.Runs[0].RunId;
            return result.PipelineId is { } pid ? Results.Redirect($"/runs?pipeline={pid}")
                : Results.Redirect($"/runs/{first}?msg={U($"submitted run {first} ({result.Runs[0].Kind}, {result.Runs[0].Status})")}");
        }
        catch (SpecValidationException ex) { return SubmitPage(ctx, s, file, yaml ?? "", overridesText, ex.Errors, 400); }
    }
}

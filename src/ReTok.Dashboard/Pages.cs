using System.Globalization;
using System.Security.Claims;
using System.Text;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using ReTok.Dashboard.Auth;
using ReTok.Engine;
using ReTok.Plots;
using ReTok.Tracking;
using static ReTok.Dashboard.Html;

namespace ReTok.Dashboard;

/// <summary>Server-rendered pages. Forms post with an antiforgery token; reads need any role, writes operator or admin.</summary>
public static class Pages
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/static/site.css", () => Results.Text(Css, "text/css")).AllowAnonymous().ExcludeFromDescription();
        app.MapGet("/static/app.js", () => Results.Text(Js, "text/javascript")).AllowAnonymous().ExcludeFromDescription();
        app.MapGet("/login", LoginPageAsync).AllowAnonymous().ExcludeFromDescription();
        app.MapPost("/login", LoginAsync).AllowAnonymous().ExcludeFromDescription();
        app.MapPost("/logout", LogoutAsync).ExcludeFromDescription();
        app.MapGet("/forbidden", (HttpContext ctx) => Page(ctx, "Not allowed",
            "<p class=\"error\">Your role does not allow this. Operators and admins can submit, cancel and retry runs.</p>", 403)).ExcludeFromDescription();

        var pages = app.MapGroup("").RequireAuthorization(AuthSetup.ViewerPolicy).ExcludeFromDescription();
        pages.MapGet("/", () => Results.Redirect("/runs"));
        pages.MapGet("/runs", RunsPageAsync);
        pages.MapGet("/runs/{id:long}", RunPageAsync);
        pages.MapGet("/runs/{id:long}/artifacts/{**name}", (HttpContext ctx, long id, string name, bool? inline) => Api.ServeArtifactAsync(ctx, id, name, inline == true));
        pages.MapPost("/runs/{id:long}/cancel", CancelAsync).RequireAuthorization(AuthSetup.OperatorPolicy);
        pages.MapPost("/runs/{id:long}/retry", RetryAsync).RequireAuthorization(AuthSetup.OperatorPolicy);
        pages.MapGet("/compare", ComparePageAsync);
        pages.MapGet("/experiments", ExperimentsPageAsync);
        pages.MapGet("/experiments/{name}", ExperimentPageAsync);
        pages.MapGet("/workers", WorkersPageAsync);
        pages.MapGet("/submit", (HttpContext ctx, SpecSubmitter s, string? file) => SubmitPage(ctx, s, file, null, "", null))
            .RequireAuthorization(AuthSetup.OperatorPolicy);
        pages.MapPost("/submit", SubmitAsync).RequireAuthorization(AuthSetup.OperatorPolicy);
    }

    // ------------------------------------------------------------------ login

    static async Task<IResult> LoginPageAsync(HttpContext ctx, UserStore users, string? returnUrl, string? error)
    {
        var hint = await users.AnyUserAsync(ctx.RequestAborted) ? ""
            : "<p class=\"error\">No users exist yet. Create the first one on the server: <code>retok users add NAME --role admin</code></p>";
        var err = error is null ? "" : "<p class=\"error\">Wrong user name or password.</p>";
        return Page(ctx, "Log in", $"""
            {hint}{err}
            <form method="post" action="/login" id="login">{Csrf(ctx)}
            <input type="hidden" name="returnUrl" value="{E(LocalUrl(returnUrl))}">
            <p><label>User <input name="user" autocomplete="username" required autofocus></label></p>
            <p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
            <p><button type="submit">Log in</button></p></form>
            """, error is null ? 200 : 401);
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
            return Page(ctx, "Too many attempts",
                $"<p class=\"error\">Too many failed log-in attempts for this user or from this address. Try again in {minutes} minute{(minutes == 1 ? "" : "s")}.</p>", 429);
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
            return Page(ctx, "Form expired", "<p class=\"error\">The form's security token is missing or expired. Go back, reload the page and try again.</p>", 400);
        }
        catch (Exception ex) when (Api.IsTooLarge(ex)) { return Page(ctx, "Too large", "<p class=\"error\">The request is larger than the upload limit.</p>", 413); }
    }

    // ------------------------------------------------------------------ runs

    static async Task<IResult> RunsPageAsync(HttpContext ctx, DashboardData d, string? experiment, string? kind, string? status, string? tag, Guid? pipeline, int? limit)
    {
        RunStatus? st = Enum.TryParse<RunStatus>(status, true, out var s) ? s : null;
        var runs = await d.ListRunsAsync(experiment, kind, st, tag, pipeline, limit ?? 200, ctx.RequestAborted);
        var (kinds, exps, tags) = await d.FilterChoicesAsync(ctx.RequestAborted);
        string Select(string name, IEnumerable<string> options, string? current) =>
            $"<select name=\"{name}\"><option value=\"\">all {name}s</option>{string.Concat(options.Select(o => $"<option{(o == current ? " selected" : "")}>{E(o)}</option>"))}</select>";
        var filters = $"""
            <form method="get" action="/runs" class="filters" id="filters">
            {Select("experiment", exps, experiment)}{Select("kind", kinds, kind)}{Select("status", Enum.GetNames<RunStatus>(), st?.ToString())}{Select("tag", tags, tag)}
            {(pipeline is { } p ? $"<input type=\"hidden\" name=\"pipeline\" value=\"{p}\"><span class=\"muted\">pipeline {p}</span> " : "")}
            <button type="submit">Filter</button> <a href="/runs">clear</a></form>
            """;
        var rows = runs.Select(r => RunRow(r));
        var table = Table(["", "run", "kind", "experiment", "status", "progress", "ETA", "message", "tags", "created", "duration"], rows, "runs", "no runs match");
        var body = $"""
            {filters}
            <form method="get" action="/compare" id="compare-form">
            {table}
            <button type="submit">Compare selected</button></form>
            <p class="muted">{runs.Count} run(s){(runs.Count >= (limit ?? 200) ? $" (showing the newest {limit ?? 200})" : "")}. Status, progress and ETA refresh every 3 s.</p>
            """;
        return Page(ctx, "Runs", body);
    }

    /// <summary>A runs-table row; the data-run attribute lets the polling script update status/progress/ETA in place.</summary>
    static IEnumerable<string> RunRow(Run r)
    {
        var active = r.Status.IsTerminal() ? "0" : "1";
        var dur = r.StartedAt is { } a ? Duration(((r.FinishedAt ?? DateTimeOffset.UtcNow) - a).TotalSeconds) : "";
        // The first cell opens the row's data-run span used by the live updater (cells are matched by class).
        yield return $"<input type=\"checkbox\" name=\"ids\" value=\"{r.Id}\" aria-label=\"select run {r.Id}\">";
        yield return RunLink(r.Id, r.Name ?? r.PipelineStep);
        yield return E(r.Kind) + (r.Priority == RunPriority.Normal ? "" : $" <span class=\"prio prio-{E(r.Priority)}\" title=\"priority\">{E(r.Priority)}</span>");
        yield return r.Experiment is { } e ? $"<a href=\"/experiments/{U(e.Name)}\">{E(e.Name)}</a>" : "";
        yield return $"<span data-run=\"{r.Id}\" data-active=\"{active}\"><span class=\"c-status\">{Status(r.Status)}</span></span>";
        yield return $"<span data-run=\"{r.Id}\" data-active=\"{active}\"><span class=\"c-progress\">{Progress(r)}</span></span>";
        yield return $"<span data-run=\"{r.Id}\" data-active=\"{active}\"><span class=\"c-eta\">{Eta(r)}</span></span>";
        yield return $"<span data-run=\"{r.Id}\" data-active=\"{active}\"><span class=\"c-message\">{E(r.FailureReason ?? r.ProgressMessage)}</span></span>";
        yield return string.Join(" ", r.Tags.Select(t => $"<a href=\"/runs?tag={U(t)}\">{E(t)}</a>"));
        yield return Time(r.CreatedAt);
        yield return dur;
    }

    static async Task<IResult> RunPageAsync(HttpContext ctx, DashboardData d, long id, string? msg)
    {
        var ct = ctx.RequestAborted;
        if (await d.GetRunAsync(id, ct) is not { } r) return Page(ctx, "Not found", $"<p class=\"error\">run {id} does not exist</p>", 404);
        var series = await d.SeriesAsync(id, ct);
        var latest = await d.Tracker.GetLatestMetricsAsync([id], ct);
        var artifacts = await d.Tracker.ListArtifactsAsync(id, ct);
        var lineage = await d.LineageAsync(r, ct);
        var logs = await d.LogsAsync(id, null, 300, ct);
        var canOperate = ctx.User.Can(UserRole.Operator);
        var active = r.Status.IsTerminal() ? "0" : "1";

        var actions = new StringBuilder();
        if (canOperate && !r.Status.IsTerminal()) actions.Append(PostButton(ctx, $"/runs/{id}/cancel", "Cancel run", $"Cancel run {id}?", "danger"));
        if (canOperate && r.Status is RunStatus.Failed or RunStatus.Cancelled) actions.Append(PostButton(ctx, $"/runs/{id}/retry", "Retry run"));
        if (r.HangfireJobId is { } job) actions.Append($" <a href=\"/hangfire/jobs/details/{U(job)}\">Hangfire job {E(job)}</a>");
        actions.Append($" <a href=\"/compare?ids={id}\">compare…</a> <a href=\"/api/runs/{id}\">JSON</a>");

        var header = $"""
            {(msg is null ? "" : $"<p class=\"ok\">{E(msg)}</p>")}
            <div data-run="{id}" data-active="{active}" data-reload="1" id="run-live">
            <p><span class="c-status">{Status(r.Status)}</span> <span class="c-progress">{Progress(r)}</span>
            <span class="muted">ETA</span> <span class="c-eta">{(Eta(r) is { Length: > 0 } eta ? eta : "—")}</span> <span class="c-message muted">{E(r.ProgressMessage)}</span></p></div>
            <p>{actions}</p>
            {(r.FailureReason is { } fr ? $"<h2>Failure reason</h2><pre class=\"error\" id=\"failure\">{E(fr)}</pre>" : "")}
            """;
        var details = Table(["", ""], new[]
        {
            Kv("kind", E(r.Kind)), Kv("experiment", r.Experiment is { } e ? $"<a href=\"/experiments/{U(e.Name)}\">{E(e.Name)}</a>" : ""),
            Kv("tags", string.Join(" ", r.Tags.Select(t => $"<a href=\"/runs?tag={U(t)}\">{E(t)}</a>"))), Kv("priority", E(r.Priority)),
            Kv(r.Gpus > 1 ? $"queue / host / {r.Gpus} devices" : "queue / host / device", $"{E(r.Queue)} / {E(r.Host)} / {E(r.Device)}"), Kv("attempt", E(r.Attempt)),
            Kv("created / started / finished", $"{Time(r.CreatedAt)} / {Time(r.StartedAt)} / {Time(r.FinishedAt)}"),
            Kv("config hash / seed", $"<code>{E(r.ConfigHash)}</code> / {(r.Seed is { } seed ? E(seed) : "—")}"), Kv("code version", $"<code>{E(r.CodeVersion)}</code>"),
            Kv("pipeline", r.PipelineId is { } pid ? $"<a href=\"/runs?pipeline={pid}\">{pid}</a> step {E(r.PipelineStep)}" : ""),
            Kv("shard", r.ShardIndex is { } si ? E(si) : ""),
        }.Where(row => row.Skip(1).First().Length > 0), "kv", null);

        // NAME@k=K keys are one point each: drawn together as NAME against K, not as single-dot step charts
        var kCurves = KCurves.From(latest.Select(m => (m.Key, m.Value)));
        var charts = new StringBuilder(kCurves.Count == 0 ? "" : $"<div class=\"charts\" id=\"k-curves\">{KCurves.Charts([("", kCurves)])}</div>");
        charts.Append("<div class=\"charts\" id=\"charts\">");
        static bool IsSystem(string key) => key.StartsWith("sys/", StringComparison.Ordinal);
        string Figure(string key, IEnumerable<(long Step, double Value)> pts) =>
            $"<figure data-key=\"{E(key)}\">{new Chart(key, "step", "", [new Series("", pts.Select(p => ((double)p.Step, p.Value)).ToList())]).ToSvg()}</figure>";
        foreach (var (key, pts) in series.Where(kv => !KCurves.TryParseKey(kv.Key, out _, out _, out _) && !IsSystem(kv.Key)).OrderBy(kv => kv.Key, StringComparer.Ordinal).Take(40))
            charts.Append(Figure(key, pts));
        charts.Append("</div>");
        // sys/* (the run's GPUs, process CPU/RSS, host memory) beside the training curves, against seconds since the start
        var system = series.Where(kv => IsSystem(kv.Key)).OrderBy(kv => kv.Key, StringComparer.Ordinal).Take(24).ToList();
        if (system.Count > 0)
        {
            charts.Append("<h3>System (x: seconds since the execution started)</h3><div class=\"charts\" id=\"system\">");
            foreach (var (key, pts) in system) charts.Append(Figure(key, pts));
            charts.Append("</div>");
        }
        var latestTable = Table(["metric", "last step", "value"], latest.Select(m => new[] { E(m.Key), E(m.Step), $"<span class=\"num\">{E(m.Value)}</span>" }), "metrics", "no metrics");

        var artRows = artifacts.Select(a =>
        {
            var url = $"/runs/{id}/artifacts/{a.Name}";
            return new[] { $"<a href=\"{E(url)}\" download>{E(a.Name)}</a>", E(a.Kind), $"<span title=\"{a.SizeBytes} bytes\">{Size(a.SizeBytes)}</span>",
                $"<code title=\"{E(a.Sha256)}\">{E(a.Sha256[..Math.Min(16, a.Sha256.Length)])}…</code>", E(a.ContentType), Time(a.CreatedAt) };
        });
        var previews = string.Concat(artifacts.Where(a => a.ContentType is "image/png" or "image/jpeg" || a.Name.EndsWith(".png", StringComparison.OrdinalIgnoreCase))
            .Take(12).Select(a => $"<figure class=\"preview\"><img src=\"{E($"/runs/{id}/artifacts/{a.Name}?inline=true")}\" alt=\"{E(a.Name)}\" loading=\"lazy\"><figcaption>{E(a.Name)}</figcaption></figure>"));

        var body = $"""
            {header}
            {details}
            <h2>Parameters</h2><pre id="params">{E(Compare.ToYaml(r.Parameters))}</pre>
            <h2>Metrics</h2>{latestTable}<p class="exports"><a href="/api/runs/{id}/metrics.csv" download>metrics.csv</a> (every point)</p>{charts}
            <h2>Artifacts</h2>{Table(["name", "kind", "size", "sha256", "type", "created"], artRows, "artifacts", "no artifacts")}
            <div class="charts" id="previews">{previews}</div>
            <h2>Lineage</h2>{LineageHtml(lineage)}
            <h2>Logs</h2><pre id="logs">{E(string.Join("\n", logs.Select(l => $"{l.Time.UtcDateTime:HH:mm:ss.fff} {l.Level,-5} {l.Message}")))}</pre>
            <p class="muted">last {logs.Count} line(s); all of them: <a href="/api/runs/{id}/logs?tail=5000">/api/runs/{id}/logs</a></p>
            """;
        return Page(ctx, $"Run #{id}{(r.Name is { } n ? " " + n : "")}", body);
    }

    static string[] Kv(string k, string v) => [E(k), v];

    static string RefHtml(RunRef r) => $"{RunLink(r.Id, r.Name)} <span class=\"muted\">{E(r.Kind)}</span> {Status(r.Status)}";

    static string LineageHtml(LineageDto l)
    {
        var sb = new StringBuilder();
        if (l.DeclaredInputs.Count > 0)
            sb.Append("<p>declared inputs: ").Append(string.Join(", ", l.DeclaredInputs.Select(kv => $"<code>{E(kv.Key)}</code> = <code>{E(kv.Value)}</code>"))).Append("</p>");
        sb.Append(Table(["input role", "artifact", "sha256", "produced by"], l.Inputs.Select(i => new[]
        {
            E(i.Role), $"<a href=\"/runs/{i.Producer.Id}/artifacts/{E(i.Artifact)}\">{E(i.Artifact)}</a>", $"<code>{E(i.Sha256[..Math.Min(12, i.Sha256.Length)])}</code>", RefHtml(i.Producer),
        }), "lineage-in", "no recorded inputs"));
        if (l.Outputs.Count > 0)
            sb.Append(Table(["output", "consumed by"], l.Outputs.Select(o => new[] { E(o.Artifact), string.Join("<br>", o.ConsumedBy.Select(c => $"{RefHtml(c.Run)} as <code>{E(c.Role)}</code>")) }), "lineage-out"));
        var rel = new List<string>();
        if (l.Parent is { } p) rel.Add($"parent: {RefHtml(p)}");
        if (l.FanIn is { } f) rel.Add($"aggregated by: {RefHtml(f)}");
        if (l.ContinuedBy is { } c) rel.Add($"continued by: {RefHtml(c)}");
        if (l.Children.Count > 0) rel.Add($"children: {string.Join(", ", l.Children.Select(RefHtml))}");
        if (l.Pipeline.Count > 0) rel.Add($"pipeline: {string.Join(" → ", l.Pipeline.Select(RefHtml))}");
        if (rel.Count > 0) sb.Append("<ul>").Append(string.Concat(rel.Select(x => $"<li>{x}</li>"))).Append("</ul>");
        return sb.ToString();
    }

    static async Task<IResult> CancelAsync(HttpContext ctx, JobClient c, DashboardData d, IAntiforgery af, long id)
    {
        if (await BadCsrfAsync(ctx, af) is { } bad) return bad;
        if (await d.GetRunAsync(id, ctx.RequestAborted) is null) return Page(ctx, "Not found", $"<p class=\"error\">run {id} does not exist</p>", 404);
        var o = await c.CancelAsync(id, ctx.RequestAborted);
        var msg = !o.Any ? "nothing to cancel: the run already finished"
            : $"cancelled {string.Join(", ", o.CancelledNow.Select(x => "#" + x))}" + (o.CancelRequested.Count > 0
                ? $"; cancel requested for running {string.Join(", ", o.CancelRequested.Select(x => "#" + x))} (they stop at their next heartbeat)" : "");
        return Results.Redirect($"/runs/{id}?msg={U(msg)}");
    }

    static async Task<IResult> RetryAsync(HttpContext ctx, JobClient c, DashboardData d, IAntiforgery af, long id)
    {
        if (await BadCsrfAsync(ctx, af) is { } bad) return bad;
        if (await d.GetRunAsync(id, ctx.RequestAborted) is null) return Page(ctx, "Not found", $"<p class=\"error\">run {id} does not exist</p>", 404);
        var s = await c.RetryAsync(id, ctx.RequestAborted);
        return Results.Redirect($"/runs/{id}?msg={U(s is { } st ? $"retry requested: the run is {st}" : "not retried: only Failed or Cancelled runs can be retried")}");
    }

    // ------------------------------------------------------------------ compare

    static async Task<IResult> ComparePageAsync(HttpContext ctx, DashboardData d, bool? all)
    {
        var ids = Api.ParseIds(string.Join(",", ctx.Request.Query["ids"].OfType<string>()));
        var pick = $"""
            <form method="get" action="/compare"><label>Run ids <input name="ids" value="{E(string.Join(",", ids))}" placeholder="12,15,17"></label>
            <label><input type="checkbox" name="all" value="true"{(all == true ? " checked" : "")}> all parameters</label> <button type="submit">Compare</button></form>
            <p class="muted">Or tick runs on the <a href="/runs">runs list</a> and press "Compare selected".</p>
            """;
        if (ids.Count == 0) return Page(ctx, "Compare runs", pick);
        var c = await Compare.BuildAsync(d, ids, ctx.RequestAborted);
        var heads = c.Runs.Select(r => $"{RunLink(r.Id, r.Name)}<br>{Status(r.Status)}").ToList();
        var prows = c.Params.Where(p => all == true || p.Differs || c.Runs.Count == 1)
            .Select(p => (Cells: new[] { $"<code>{E(p.Key)}</code>" }.Concat(p.Values.Select(v => $"<code>{E(v ?? "—")}</code>")).ToArray(), p.Differs));
        var ptable = new StringBuilder(Table(new[] { "parameter" }.Concat(heads), prows.Select(x => x.Cells), "params-diff", "no differing parameters"));
        // mark differing rows for the reader
        var pt = ptable.ToString();
        foreach (var p in c.Params.Where(p => p.Differs)) pt = pt.Replace($"<tr><td><code>{E(p.Key)}</code>", $"<tr class=\"diff\"><td><code>{E(p.Key)}</code>");
        var mtable = Table(new[] { "metric (last value)" }.Concat(heads), c.Metrics.Select(m =>
            new[] { $"<code>{E(m.Key)}</code>" }.Concat(m.Values.Select((v, i) => v is { } x ? $"<span title=\"step {m.Steps[i]}\">{E(x)}</span>" : "—")).ToArray()), "metrics-compare", "no metrics");

        var charts = new StringBuilder("<div class=\"charts\" id=\"charts\">");
        var seriesByRun = new List<(RunDto Run, Dictionary<string, List<(long Step, double Value)>> S)>();
        foreach (var r in c.Runs) seriesByRun.Add((r, await d.SeriesAsync(r.Id, ctx.RequestAborted)));
        foreach (var key in seriesByRun.SelectMany(x => x.S.Where(kv => kv.Value.Count > 1).Select(kv => kv.Key)).Distinct().Order(StringComparer.Ordinal).Take(30))
            charts.Append("<figure>").Append(new Chart(key, "step", "", seriesByRun.Where(x => x.S.ContainsKey(key))
                .Select(x => new Series($"#{x.Run.Id} {x.Run.Name}", x.S[key].Select(p => ((double)p.Step, p.Value)).ToList())).ToList()).ToSvg()).Append("</figure>");
        charts.Append("</div>");
        var kRuns = c.Runs.Select((r, i) => ($"#{r.Id} {r.Name}", KCurves.From(c.Metrics.Where(m => m.Values[i] is not null).Select(m => (m.Key, m.Values[i]!.Value))))).ToList();
        var kCharts = kRuns.Any(r => r.Item2.Count > 0) ? $"<h2>Metrics vs K</h2><div class=\"charts\" id=\"k-curves\">{KCurves.Charts(kRuns)}</div>" : "";
        return Page(ctx, "Compare runs", $"{pick}<h2>Parameters{(all == true ? "" : " that differ")}</h2>{pt}<h2>Metrics</h2>{mtable}{kCharts}<h2>Curves</h2>{charts}");
    }

    // ------------------------------------------------------------------ experiments

    static async Task<IResult> ExperimentsPageAsync(HttpContext ctx, DashboardData d)
    {
        var exps = await d.ExperimentsAsync(ctx.RequestAborted);
        var list = Table(["experiment", "runs", "active", "created", ""], exps.Select(e => new[]
        {
            $"<a href=\"/experiments/{U(e.Name)}\">{E(e.Name)}</a>", E(e.Runs), E(e.Active), Time(e.CreatedAt), $"<a href=\"/runs?experiment={U(e.Name)}\">runs</a>",
        }), "experiments", "no experiments yet");
        var results = await ResultsTable.BuildAsync(d.Tracker, null, ctx.RequestAborted);
        return Page(ctx, "Experiments", $"{list}<h2>Results (all experiments)</h2>{ResultsHtml(results)}{ExportLinks("/api/results/export")}");
    }

    static async Task<IResult> ExperimentPageAsync(HttpContext ctx, DashboardData d, string name)
    {
        // one read of the experiment's last metric values serves the results table and the K curves
        var ids = await d.Tracker.Runs.ListIdsAsync(new RunFilter(Experiment: name, Limit: int.MaxValue), ctx.RequestAborted);
        var latest = await d.Tracker.GetLatestMetricsAsync(ids, ctx.RequestAborted);
        var results = await ResultsTable.FromLatestAsync(d.Tracker, latest, ctx.RequestAborted);
        // metric-vs-K overlaid for the newest ten runs that have any (more curves per chart are unreadable)
        var curves = latest.GroupBy(m => m.RunId).Select(g => (Id: g.Key, Curves: KCurves.From(g.Select(m => (m.Key, m.Value)))))
            .Where(x => x.Curves.Count > 0).OrderByDescending(x => x.Id).Take(10).ToList();
        var names = (await d.GetRunsAsync(curves.Select(x => x.Id).ToList(), ctx.RequestAborted)).ToDictionary(r => r.Id, r => r.Name);
        var kRuns = curves.Select(x => ($"#{x.Id} {names.GetValueOrDefault(x.Id)}", x.Curves)).ToList();
        var kCharts = kRuns.Count > 0 ? $"<h2>Metrics vs K</h2><div class=\"charts\" id=\"k-curves\">{KCurves.Charts(kRuns)}</div>" : "";
        return Page(ctx, $"Experiment {name}", $"<p><a href=\"/runs?experiment={U(name)}\">all runs of {E(name)}</a></p><h2>Results</h2>{ResultsHtml(results)}{ExportLinks($"/api/experiments/{U(name)}/results/export")}{kCharts}" +
            await WebhookSection.HtmlAsync(d.Tracker, name, ctx.RequestAborted));
    }

    static string ExportLinks(string url) =>
        $"<p class=\"exports\">Export: <a href=\"{E(url)}?format=csv\" download>CSV</a> · <a href=\"{E(url)}?format=markdown\" download>Markdown</a> · " +
        $"<a href=\"{E(url)}?format=latex\" download>LaTeX</a></p>";

    static string ResultsHtml(List<ResultRow> rows)
    {
        static string Cell(ResultCell? c, string fmt) => c is null ? "" :
            $"<a href=\"/runs/{c.RunId}\" title=\"{E(c.Key)} of run {c.RunId}\">{E(c.Value.ToString(fmt, System.Globalization.CultureInfo.InvariantCulture))}</a>" +
            (c.Protocol is { } p ? $" <sup class=\"protocol\" title=\"protocol {E(p)}: {E(c.Provenance?.Describe())}\">{E(p)}</sup>" : "");
        static string Head(string name, ResultCell? c) => c?.Protocol is { } p ? $"{name} <sup class=\"protocol\">{E(p)}</sup>" : name;
        // the column's protocol is the one its cells share (ResultsTable.ColumnProtocol; the others are in "other protocol")
        var rp = rows.Select(r => r.RFid).FirstOrDefault(c => c is not null);
        var gp = rows.Select(r => r.GFid).FirstOrDefault(c => c is not null);
        bool rOther = rows.Any(r => r.RFidOther is not null), gOther = rows.Any(r => r.GFidOther is not null);
        var heads = new List<string> { "tokenizer", Head("rFID↓", rp), "generator", "tokens", Head("gFID↓", gp), "IS↑", "Prec.↑", "Rec.↑", "variant" };
        if (rOther) heads.Add("rFID, other protocol");
        if (gOther) heads.Add("gFID, other protocol");
        var table = Table(heads.ToArray(), rows.Select(r =>
        {
            var cells = new List<string>
            {
                E(r.Tokenizer), Cell(r.RFid, "0.00"), E(r.Generator), E(r.Tokens), Cell(r.GFid, "0.00"), Cell(r.IS, "0.0"), Cell(r.Precision, "0.00"), Cell(r.Recall, "0.00"), E(r.Variant),
            };
            if (rOther) cells.Add(Cell(r.RFidOther, "0.00"));
            if (gOther) cells.Add(Cell(r.GFidOther, "0.00"));
            return cells.ToArray();
        }), "results", "no metrics of the form rfid@k=K / gfid@k=K yet");
        return table + "<p class=\"muted\">From metric keys <code>rfid|gfid|is|precision|recall@k=K[,variant]</code> (last step); " +
            "gFID is the best variant (e.g. with/without CFG), IS/Prec./Rec. from that same variant. Each number links to its run; " +
            "the superscript is its evaluation protocol (hover for evaluator, weights, reference, preprocessing, samples, precision, seed). " +
            "A column holds one protocol: numbers measured otherwise are in the \"other protocol\" columns, never compared with it.</p>";
    }

    // ------------------------------------------------------------------ workers

    static async Task<IResult> WorkersPageAsync(HttpContext ctx, DashboardData d)
    {
        var ws = await d.WorkersAsync(ctx.RequestAborted);
        var rows = ws.Select(w => new[]
        {
            E(w.Host), $"<code>{E(w.Id)}</code>", E(w.Queues),
            string.Join("<br>", w.Slots.Select(s => $"<code>{E(s.Device)}</code>: {(s.Run is { } r ? $"{RefHtml(r)}{(s.Progress is { } p ? $" {p * 100:F0}%" : "")}" : "<span class=\"muted\">idle</span>")}")),
            SystemHtml(w.System), Time(w.StartedAt), $"{Time(w.LastHeartbeat)} <span class=\"{(w.Stale ? "stale" : "muted")}\">({w.SecondsSinceHeartbeat:F0} s ago{(w.Stale ? ", stale" : "")})</span>",
        });
        return Page(ctx, "Workers", Table(["host", "worker", "queues", "devices (current run)", "system", "started", "last heartbeat"], rows, "workers",
            "no workers have reported; start one with `retok worker`") + "<p class=\"muted\">One row per worker process; GPUs appear as cuda:N slots.</p>");
    }

    /// <summary>"gpu0 87% · 39.6/79.6 GiB · 61 °C · 312 W" per GPU, then the process and host lines, from a worker's sys/* readings.</summary>
    static string SystemHtml(IReadOnlyDictionary<string, double>? s)
    {
        if (s is null || s.Count == 0) return "<span class=\"muted\">—</span>";
        string V(string k, string fmt, string unit, double div = 1) => s.TryGetValue(k, out var v) ? (v / div).ToString(fmt, CultureInfo.InvariantCulture) + unit : "?";
        var lines = s.Keys.Where(k => k.StartsWith("sys/gpu", StringComparison.Ordinal)).Select(k => k.Split('/')[1]).Distinct().Order()
            .Select(g => $"<code>{E(g)}</code> {V($"sys/{g}/util_pct", "F0", "%")} · {V($"sys/{g}/mem_used_mib", "F1", "", 1024)}/{V($"sys/{g}/mem_total_mib", "F1", " GiB", 1024)}" +
                         $" · {V($"sys/{g}/temp_c", "F0", " °C")} · {V($"sys/{g}/power_w", "F0", " W")}").ToList();
        lines.Add($"CPU {V("sys/cpu_pct", "F0", "%")} · RSS {V("sys/rss_mib", "F1", " GiB", 1024)} · host {V("sys/host_mem_used_mib", "F1", "", 1024)}/{V("sys/host_mem_total_mib", "F1", " GiB", 1024)}");
        return string.Join("<br>", lines.Select(l => $"<span class=\"sys\">{l}</span>"));
    }

    // ------------------------------------------------------------------ submit

    static IResult SubmitPage(HttpContext ctx, SpecSubmitter s, string? file, string? yaml, string overrides, IReadOnlyList<string>? errors, int status = 200)
    {
        var files = s.JobFiles();
        if (yaml is null && file is not null) yaml = s.ReadJobFile(file);
        var options = string.Concat(files.Select(f => $"<option value=\"{E(f)}\"{(f == file ? " selected" : "")}>{E(f)}</option>"));
        var err = errors is null ? "" : $"<div class=\"error\" id=\"spec-errors\"><b>The spec is invalid; nothing was queued.</b><ul>{string.Concat(errors.Select(e => $"<li><code>{E(e)}</code></li>"))}</ul></div>";
        var body = $"""
            {err}
            <form method="post" action="/submit" enctype="multipart/form-data" id="submit-form">{Csrf(ctx)}
            <p><label>Spec from jobs/: <select name="file"><option value="">(none)</option>{options}</select></label>
            or upload <input type="file" name="spec" accept=".yaml,.yml,text/yaml"></p>
            <p><label>or paste YAML (wins over the file):<br><textarea name="yaml" rows="16" spellcheck="false">{E(yaml)}</textarea></label></p>
            <p><label>Overrides, one <code>KEY=VALUE</code> per line (like <code>--set</code>):<br><textarea name="overrides" rows="3" spellcheck="false">{E(overrides)}</textarea></label></p>
            <p><button type="submit">Validate and submit</button></p></form>
            <p class="muted">The spec is validated (keys, parameter types, inputs) before anything is queued. Limit: {Size(ctx.RequestServices.GetRequiredService<DashboardOptions>().MaxUploadBytes)}.</p>
            """;
        return Page(ctx, "Submit a job", body, status);
    }

    static async Task<IResult> SubmitAsync(HttpContext ctx, SpecSubmitter s, IAntiforgery af)
    {
        if (await BadCsrfAsync(ctx, af) is { } bad) return bad;
        IFormCollection form;
        try { form = await ctx.Request.ReadFormAsync(ctx.RequestAborted); }
        catch (Exception ex) when (Api.IsTooLarge(ex)) { return Page(ctx, "Too large", "<p class=\"error\">The spec is larger than the upload limit.</p>", 413); }
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

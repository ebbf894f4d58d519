using System.Globalization;
using System.Net;
using System.Text;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using ReTok.Dashboard.Auth;
using ReTok.Tracking;

namespace ReTok.Dashboard;

/// <summary>
/// The whole view layer: HTML built from interpolated strings, every dynamic value through <see cref="E"/>. Small enough
/// to read in one sitting and to test as plain text; no Razor compilation in the host.
/// </summary>
public static class Html
{
    public static string E(object? v) => WebUtility.HtmlEncode(v switch
    {
        null => "",
        double d => Num(d),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString(),
    });

    /// <summary>A value for a URL query component.</summary>
    public static string U(object? v) => Uri.EscapeDataString(v?.ToString() ?? "");

    public static string Num(double d) => ReTok.Plots.Chart.Num(d);

    public static string Size(long b) => b >= 1 << 30 ? $"{b / (double)(1 << 30):F2} GiB" : b >= 1 << 20 ? $"{b / (double)(1 << 20):F1} MiB"
        : b >= 1 << 10 ? $"{b / 1024.0:F1} KiB" : $"{b} B";

    public static string Duration(double seconds)
    {
        var t = TimeSpan.FromSeconds(Math.Max(0, seconds));
        return t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:00}m" : t.TotalMinutes >= 1 ? $"{t.Minutes}m{t.Seconds:00}s" : $"{t.TotalSeconds:F0}s";
    }

    public static string Time(DateTimeOffset? t) => t is { } v ? $"<time datetime=\"{v.UtcDateTime:O}\">{v.UtcDateTime:yyyy-MM-dd HH:mm:ss}</time>" : "";

    public static string Status(RunStatus s) => $"<span class=\"st st-{s.ToString().ToLowerInvariant()}\">{s}</span>";

    public static string Progress(Run r) => r.Status is RunStatus.Running or RunStatus.Succeeded || r.Progress > 0
        ? $"<progress max=\"1\" value=\"{r.Progress.ToString(CultureInfo.InvariantCulture)}\"></progress> {r.Progress * 100:F0}%" : "";

    public static string Eta(Run r) => r.Status == RunStatus.Running && r.EtaSeconds is { } e ? Duration(e) : "";

    public static string RunLink(long id, string? name = null) => $"<a href=\"/runs/{id}\">#{id}{(name is null ? "" : " " + E(name))}</a>";

    /// <summary>The hidden antiforgery field every state-changing form carries.</summary>
    public static string Csrf(HttpContext ctx)
    {
        var t = ctx.RequestServices.GetRequiredService<IAntiforgery>().GetAndStoreTokens(ctx);
        return $"<input type=\"hidden\" name=\"{E(t.FormFieldName)}\" value=\"{E(t.RequestToken)}\">";
    }

    /// <summary>A one-button POST form (cancel, retry, logout).</summary>
    public static string PostButton(HttpContext ctx, string action, string label, string? confirm = null, string cls = "") =>
        $"<form method=\"post\" action=\"{E(action)}\" class=\"inline\"{(confirm is null ? "" : $" data-confirm=\"{E(confirm)}\"")}>{Csrf(ctx)}<button type=\"submit\" class=\"{cls}\">{E(label)}</button></form>";

    public static IResult Page(HttpContext ctx, string title, string body, int status = 200)
    {
        var user = ctx.User;
        var nav = new StringBuilder();
        if (user.Identity?.IsAuthenticated == true)
        {
            nav.Append("<a href=\"/runs\">Runs</a><a href=\"/compare\">Compare</a><a href=\"/experiments\">Experiments</a>");
            if (user.Can(UserRole.Operator)) nav.Append("<a href=\"/submit\">Submit</a>");
            nav.Append("<a href=\"/workers\">Workers</a><a href=\"/hangfire\">Hangfire</a><a href=\"/openapi/v1.json\">API</a>");
            nav.Append($"<span class=\"user\">{E(user.Identity.Name)} ({E(AuthSetup.RoleOf(user))})</span>");
            nav.Append(PostButton(ctx, "/logout", "Log out", cls: "link"));
        }
        var html = $"""
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>{E(title)} · ReTok</title><link rel="stylesheet" href="/static/site.css"><script src="/static/app.js" defer></script></head>
            <body><header><a class="brand" href="/">ReTok.Jobs</a><nav>{nav}</nav></header>
            <main><h1>{E(title)}</h1>
            {body}
            </main></body></html>
            """;
        return Results.Content(html, "text/html; charset=utf-8", Encoding.UTF8, status);
    }

    public static string Table(IEnumerable<string> headers, IEnumerable<IEnumerable<string>> rows, string cls = "", string? emptyText = "nothing yet")
    {
        var sb = new StringBuilder($"<table class=\"{cls}\">");
        if (headers.Any(h => h.Length > 0))
        {
            sb.Append("<thead><tr>");
            foreach (var h in headers) sb.Append($"<th>{h}</th>");
            sb.Append("</tr></thead>");
        }
        sb.Append("<tbody>");
        var any = false;
        foreach (var r in rows)
        {
            any = true;
            sb.Append("<tr>");
            foreach (var c in r) sb.Append($"<td>{c}</td>");
            sb.Append("</tr>");
        }
        if (!any && emptyText is not null) sb.Append($"<tr><td colspan=\"{headers.Count()}\" class=\"empty\">{E(emptyText)}</td></tr>");
        return sb.Append("</tbody></table>").ToString();
    }

    public const string Css = """
        *{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1d2330;background:#f6f7f9}
        header{display:flex;align-items:center;gap:24px;padding:8px 20px;background:#1d2330;color:#fff}
        header a{color:#cfd6e4;text-decoration:none;margin-right:14px}header a:hover{color:#fff}.brand{font-weight:700;color:#fff}
        nav{display:flex;align-items:center;flex:1}nav .user{margin-left:auto;margin-right:10px;color:#9aa4b8}
        main{padding:16px 24px;max-width:1400px}h1{font-size:20px;margin:4px 0 14px}h2{font-size:16px;margin:22px 0 8px}
        table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}
        th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}td.empty{color:#888;font-style:italic}
        tr.diff td{background:#fff7e0}code,pre{font:12px/1.4 ui-monospace,Consolas,monospace}pre{background:#fff;border:1px solid #dde1e8;padding:8px;overflow:auto;max-height:480px}
        .st{padding:1px 6px;border-radius:8px;font-size:12px;background:#e3e6eb}.st-running{background:#cfe3ff}.st-succeeded{background:#d3f3d8}
        .st-failed{background:#ffd6d6}.st-cancelled{background:#eee;color:#666}.st-queued{background:#fff0c2}.st-waiting{background:#f0e6ff}
        form.inline{display:inline}button{cursor:pointer}button.link{background:none;border:none;color:#cfd6e4;padding:0;font:inherit}
        button.danger{color:#a00}.error{background:#ffe9e9;border:1px solid #f3b3b3;padding:8px 12px;white-space:pre-wrap}.ok{background:#e8f7ea;border:1px solid #b5e0bc;padding:8px 12px}
        .filters input,.filters select{margin-right:8px}.charts{display:flex;flex-wrap:wrap;gap:12px}.charts figure{margin:0;background:#fff;border:1px solid #dde1e8;padding:6px}
        .charts figcaption{font-size:12px;color:#555}.preview img{max-width:480px;max-height:480px;image-rendering:pixelated;border:1px solid #ccc;background:#fff}
        .muted{color:#777}.kv td:first-child{color:#555;white-space:nowrap}textarea{width:100%;max-width:900px;font:12px ui-monospace,monospace}
        .stale{color:#a00}
        """;

    /// <summary>Live status/progress/ETA on the runs list and run page: polls /api/runs/live every 3 s while anything is active; confirm dialogs.</summary>
    public const string Js = """
        document.addEventListener('submit', e => { const m = e.target.dataset.confirm; if (m && !confirm(m)) e.preventDefault(); });
        (function () {
          const rows = () => [...document.querySelectorAll('[data-run][data-active="1"]')];
          async function poll() {
            const r = rows(); if (!r.length) return;
            const ids = [...new Set(r.map(x => x.dataset.run))].join(',');
            try {
              const res = await fetch('/api/runs/live?ids=' + ids, { credentials: 'same-origin' });
              if (!res.ok) return;
              for (const run of await res.json()) {
                for (const el of document.querySelectorAll('[data-run="' + run.id + '"]')) {
                  const set = (sel, html) => { const c = el.querySelector(sel); if (c) c.innerHTML = html; };
                  set('.c-status', '<span class="st st-' + run.status.toLowerCase() + '">' + run.status + '</span>');
                  set('.c-progress', run.progress_html);
                  set('.c-eta', run.eta);
                  set('.c-message', run.progress_message ? run.progress_message.replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])) : '');
                  if (run.terminal) { el.dataset.active = '0'; if (el.dataset.reload === '1') location.reload(); }
                }
              }
            } catch (e) { }
          }
          setInterval(poll, 3000);
        })();
        """;
}

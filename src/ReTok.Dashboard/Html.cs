using System.Globalization;
using System.Net;
using System.Security.Claims;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Components;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.DependencyInjection;
using ReTok.Dashboard.Auth;
using ReTok.Dashboard.Pages;
using ReTok.Tracking;

namespace ReTok.Dashboard;

/// <summary>
/// What every page needs from the request: the user (navigation, role-dependent buttons) and the antiforgery token for
/// its forms, read once in the handler before anything is written (the token sets its cookie).
/// </summary>
public sealed record PageContext(ClaimsPrincipal User, string CsrfField, string CsrfToken)
{
    public static PageContext Of(HttpContext ctx)
    {
        var t = ctx.RequestServices.GetRequiredService<IAntiforgery>().GetAndStoreTokens(ctx);
        return new(ctx.User, t.FormFieldName, t.RequestToken ?? "");
    }

    public bool Can(UserRole role) => User.Can(role);
}

/// <summary>Text formatting shared by the Razor components (Pages/) and the JSON API; the markup itself lives in the components.</summary>
public static class Html
{
    /// <summary>HTML-encoded text, for the few strings built outside components (the live API's progress_html).</summary>
    public static string E(object? v) => WebUtility.HtmlEncode(Text(v));

    /// <summary>A value as the pages show it: doubles via <see cref="Num"/>, numbers invariant.</summary>
    public static string Text(object? v) => v switch
    {
        null => "",
        double d => Num(d),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "",
    };

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

    public static bool ShowsProgress(Run r) => r.Status is RunStatus.Running or RunStatus.Succeeded || r.Progress > 0;

    /// <summary>The progress bar as HTML for the polling script (same markup as the ProgressBar component).</summary>
    public static string Progress(Run r) => ShowsProgress(r)
        ? $"<progress max=\"1\" value=\"{r.Progress.ToString(CultureInfo.InvariantCulture)}\"></progress> {r.Progress * 100:F0}%" : "";

    public static string Eta(Run r) => r.Status == RunStatus.Running && r.EtaSeconds is { } e ? Duration(e) : "";

    /// <summary>A page: the component <typeparamref name="T"/> rendered on the server with <paramref name="model"/> as its Model parameter.</summary>
    public static RazorComponentResult<T> Page<T>(object model, int status = 200) where T : IComponent =>
        new(new Dictionary<string, object?> { ["Model"] = model }) { StatusCode = status, ContentType = "text/html; charset=utf-8" };

    /// <summary>A page with a title and one message paragraph (errors, not found, forbidden).</summary>
    public static RazorComponentResult<MessagePage> Message(HttpContext ctx, string title, string message, int status, string cls = "error") =>
        Page<MessagePage>(new MessageModel(PageContext.Of(ctx), title, message, cls), status);
}

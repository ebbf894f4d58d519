using System.Security.Claims;
using System.Text.Encodings.Web;
using Hangfire.Dashboard;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using ReTok.Tracking;

namespace ReTok.Dashboard.Auth;

/// <summary>
/// Two ways in, one set of roles: a cookie for people (login form) and "Authorization: Bearer rtk_…" for the CLI and
/// automation. A policy scheme picks the handler per request. Unauthenticated API calls get 401, pages redirect to /login.
/// </summary>
public static class AuthSetup
{
    public const string Smart = "retok";
    public const string Bearer = "Bearer";
    public const string Cookie = CookieAuthenticationDefaults.AuthenticationScheme;
    public const string ViewerPolicy = "viewer";
    public const string OperatorPolicy = "operator";
    public const string AdminPolicy = "admin";
    public const string TokenIdClaim = "retok:token";
    public const string SessionClaim = "retok:sid";
    public const string StampClaim = "retok:stamp";
    public const string CsrfHeader = "X-CSRF-TOKEN";
    public const string CsrfField = "__RequestVerificationToken";

    public static bool IsApi(HttpRequest r) => r.Path.StartsWithSegments("/api") || r.Path.StartsWithSegments("/openapi");

    public static void AddRetokAuth(this IServiceCollection services, DashboardOptions o)
    {
        var dp = services.AddDataProtection().SetApplicationName("retok-dashboard");
        if (o.KeysDir is { } dir)
        {
            // The keys encrypt the auth cookies: keep the folder private to the service account (no XML encryptor on Linux).
            var info = Directory.CreateDirectory(dir);
            if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(info.FullName, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            dp.PersistKeysToFileSystem(info);
        }
        services.AddAntiforgery(a =>
        {
            a.HeaderName = CsrfHeader;
            a.FormFieldName = CsrfField;
            a.Cookie.Name = "retok.csrf";
            a.Cookie.SameSite = SameSiteMode.Strict;
            // SameAsRequest: behind a trusted proxy the forwarded scheme (https) makes it Secure; Always would make
            // antiforgery throw on a plain-http request instead of answering it.
            a.Cookie.SecurePolicy = CookieSecurePolicy.SameAsRequest;
        });
        services.AddAuthentication(Smart)
            .AddPolicyScheme(Smart, "cookie or bearer", p => p.ForwardDefaultSelector = ctx =>
                ctx.Request.Headers.Authorization.ToString().StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? Bearer : Cookie)
            .AddScheme<AuthenticationSchemeOptions, BearerTokenHandler>(Bearer, _ => { })
            .AddCookie(Cookie, c =>
            {
                c.Cookie.Name = "retok.auth";
                c.Cookie.HttpOnly = true;
                c.Cookie.SameSite = SameSiteMode.Lax;
                // Behind a TLS-terminating proxy the session cookie is Secure even if the proxy forgets X-Forwarded-Proto.
                c.Cookie.SecurePolicy = o.TrustForwardedHeaders ? CookieSecurePolicy.Always : CookieSecurePolicy.SameAsRequest;
                c.ExpireTimeSpan = TimeSpan.FromHours(12);
                c.SlidingExpiration = true;
                c.LoginPath = "/login";
                c.LogoutPath = "/logout";
                c.AccessDeniedPath = "/forbidden";
                c.Events.OnRedirectToLogin = ctx =>
                {
                    if (IsApi(ctx.Request)) ctx.Response.StatusCode = StatusCodes.Status401Unauthorized;
                    else ctx.Response.Redirect(ctx.RedirectUri);
                    return Task.CompletedTask;
                };
                c.Events.OnRedirectToAccessDenied = ctx =>
                {
                    if (IsApi(ctx.Request)) ctx.Response.StatusCode = StatusCodes.Status403Forbidden;
                    else ctx.Response.Redirect(ctx.RedirectUri);
                    return Task.CompletedTask;
                };
                // Re-read the session and user on every request: logout (session revoked), a password change or disable
                // (security stamp changed) and a changed role take effect at once, also for copies of the cookie.
                c.Events.OnValidatePrincipal = async ctx =>
                {
                    var users = ctx.HttpContext.RequestServices.GetRequiredService<UserStore>();
                    var id = long.TryParse(ctx.Principal?.FindFirstValue(ClaimTypes.NameIdentifier), out var v) ? v : -1;
                    var sid = ctx.Principal?.FindFirstValue(SessionClaim);
                    var stamp = ctx.Principal?.FindFirstValue(StampClaim);
                    var p = id < 0 || sid is null || stamp is null ? null : await users.GetSessionAsync(id, sid, stamp, ctx.HttpContext.RequestAborted);
                    if (p is null) { ctx.RejectPrincipal(); await ctx.HttpContext.SignOutAsync(Cookie); return; }
                    if (ctx.Principal!.FindFirstValue(ClaimTypes.Role) != p.Role.ToString()) ctx.ReplacePrincipal(ToClaims(p, Cookie));
                };
            });
        services.AddAuthorizationBuilder()
            .AddPolicy(ViewerPolicy, p => p.RequireAuthenticatedUser())
            .AddPolicy(OperatorPolicy, p => p.RequireRole(nameof(UserRole.Operator), nameof(UserRole.Admin)))
            .AddPolicy(AdminPolicy, p => p.RequireRole(nameof(UserRole.Admin)))
            .SetFallbackPolicy(new Microsoft.AspNetCore.Authorization.AuthorizationPolicyBuilder().RequireAuthenticatedUser().Build());
    }

    public static ClaimsPrincipal ToClaims(Principal p, string scheme)
    {
        var claims = new List<Claim>
        {
            new(ClaimTypes.NameIdentifier, p.UserId.ToString()),
            new(ClaimTypes.Name, p.Name),
            new(ClaimTypes.Role, p.Role.ToString()),
        };
        if (p.TokenId is { } t) claims.Add(new Claim(TokenIdClaim, t.ToString()));
        if (p.SessionId is { } sid) claims.Add(new Claim(SessionClaim, sid));
        if (p.Stamp is { } stamp) claims.Add(new Claim(StampClaim, stamp));
        return new ClaimsPrincipal(new ClaimsIdentity(claims, scheme));
    }

    public static UserRole? RoleOf(ClaimsPrincipal u) =>
        u.Identity?.IsAuthenticated == true && Enum.TryParse<UserRole>(u.FindFirstValue(ClaimTypes.Role), out var r) ? r : null;

    public static bool Can(this ClaimsPrincipal u, UserRole needed) => RoleOf(u) is { } r && r >= needed;

    /// <summary>
    /// CSRF guard for state-changing API calls: a cookie-authenticated request must carry the antiforgery token
    /// (header X-CSRF-TOKEN or form field); Bearer requests cannot be forged by a browser and need none.
    /// </summary>
    public static RouteHandlerBuilder RequireCsrfForCookies(this RouteHandlerBuilder b) => b.AddEndpointFilter(async (ctx, next) =>
    {
        var http = ctx.HttpContext;
        if (http.User.Identity?.AuthenticationType == Cookie)
        {
            try { await http.RequestServices.GetRequiredService<IAntiforgery>().ValidateRequestAsync(http); }
            catch (AntiforgeryValidationException)
            {
                return Results.Problem(statusCode: 400, title: "missing or invalid CSRF token",
                    detail: $"cookie-authenticated requests that change state must send the {CsrfHeader} header (or use a Bearer token)");
            }
        }
        return await next(ctx);
    });
}

/// <summary>Authenticates "Authorization: Bearer rtk_…" against the hashed, revocable tokens in the database.</summary>
public sealed class BearerTokenHandler(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder, UserStore users)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
{
    protected override async Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        var header = Request.Headers.Authorization.ToString();
        if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) return AuthenticateResult.NoResult();
        var p = await users.VerifyTokenAsync(header["Bearer ".Length..].Trim(), Context.RequestAborted);
        if (p is null) return AuthenticateResult.Fail("invalid, expired or revoked token");
        return AuthenticateResult.Success(new AuthenticationTicket(AuthSetup.ToClaims(p, AuthSetup.Bearer), AuthSetup.Bearer));
    }

    protected override Task HandleChallengeAsync(AuthenticationProperties properties)
    {
        Response.StatusCode = 401;
        Response.Headers.WWWAuthenticate = "Bearer realm=\"retok\"";
        return Task.CompletedTask;
    }
}

/// <summary>
/// Hangfire's dashboard behind our login: any signed-in user may look (read-only for viewers), operators and admins
/// may act. Replaces Hangfire's LocalRequestsOnly default, which locks everyone out behind a proxy (anchors §1),
/// without ever opening it to anonymous requests.
/// </summary>
public sealed class HangfireAuthFilter : IDashboardAuthorizationFilter
{
    public bool Authorize(DashboardContext context) => context.GetHttpContext().User.Identity?.IsAuthenticated == true;

    public static bool IsReadOnly(DashboardContext context) => !context.GetHttpContext().User.Can(UserRole.Operator);
}

using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Unicode;
using Hangfire;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using ReTok.Dashboard.Auth;
using ReTok.Dashboard.Monitoring;
using ReTok.Engine;
using ReTok.Tracking;
using HangfireDashboardOptions = Hangfire.DashboardOptions;

namespace ReTok.Dashboard;

/// <summary>
/// The dashboard host: Kestrel + pages + JSON API + OpenAPI + Hangfire's dashboard under /hangfire, all behind one
/// login. It only reads tracking and talks to the engine through <see cref="JobClient"/>; it runs no jobs itself.
/// </summary>
public sealed class DashboardServer : IAsyncDisposable
{
    readonly JobClient _client;
    public WebApplication App { get; }
    public IReadOnlyList<string> Addresses { get; private set; } = [];

    DashboardServer(WebApplication app, JobClient client) { App = app; _client = client; }

    /// <summary>Migrates/checks the database, applies the bind rule (loopback, or an admin must exist) and starts listening.</summary>
    public static async Task<DashboardServer> StartAsync(DashboardOptions o, JobKindRegistry? kinds = null, CancellationToken ct = default)
    {
        var client = new JobClient(o.Engine, kinds);
        try
        {
            await client.EnsureSchemaAsync(ct);
            var users = new UserStore(o.Engine.Db);
            var exposed = o.Urls.Where(u => !DashboardOptions.IsLoopback(u)).ToList();
            if (exposed.Count > 0 && !await users.AnyAdminAsync(ct))
                throw new DashboardConfigException(
                    $"refusing to listen on {string.Join(", ", exposed)}: not a loopback address and no admin user exists, so nobody could log in " +
                    "and the Hangfire dashboard would be unguarded. Create one first with `retok users add NAME --role admin`, " +
                    "or bind to loopback (--urls http://127.0.0.1:5080).");
            // Probe first: a failed Kestrel start logs a stack trace before we could fall back.
            if (o.FreePortFallback && o.Urls.Any(u => DashboardOptions.IsLoopback(u) && PortTaken(u)))
                o = o with { Urls = o.Urls.Select(u => DashboardOptions.IsLoopback(u) ? WithPortZero(u) : u).ToList() };
            var app = Build(o, client, users);
            try { await app.StartAsync(ct); }
            catch (IOException ex) when (o.FreePortFallback && ex.InnerException is Microsoft.AspNetCore.Connections.AddressInUseException)
            {
                await app.DisposeAsync();
                o = o with { Urls = o.Urls.Select(u => DashboardOptions.IsLoopback(u) ? WithPortZero(u) : u).ToList() };
                app = Build(o, client, users);
                await app.StartAsync(ct);
            }
            var server = new DashboardServer(app, client);
            server.Addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.ToList() ?? [];
            return server;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    static bool PortTaken(string url)
    {
        var u = new Uri(url);
        if (u.Port == 0) return false;
        var ip = u.Host == "localhost" ? System.Net.IPAddress.Loopback : System.Net.IPAddress.Parse(u.Host.Trim('[', ']'));
        using var probe = new System.Net.Sockets.Socket(ip.AddressFamily, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        try { probe.Bind(new System.Net.IPEndPoint(ip, u.Port)); return false; }
        catch (System.Net.Sockets.SocketException e) when (e.SocketErrorCode == System.Net.Sockets.SocketError.AddressAlreadyInUse) { return true; }
    }

    /// <summary>http://127.0.0.1:5080/x -> http://127.0.0.1:0/x (Kestrel picks a free port).</summary>
    static string WithPortZero(string url)
    {
        var b = new UriBuilder(url) { Port = 0 };
        if (b.Host == "localhost") b.Host = "127.0.0.1";   // Kestrel binds port 0 on an address, not on "localhost"
        return b.Uri.ToString().TrimEnd('/');
    }

    static WebApplication Build(DashboardOptions o, JobClient client, UserStore users)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(DashboardServer).Assembly.GetName().Name, ContentRootPath = AppContext.BaseDirectory,
            EnvironmentName = Environments.Production,
        });
        builder.WebHost.UseUrls(o.Urls.ToArray());
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = o.MaxUploadBytes + 64 * 1024; // the multipart envelope around a spec of MaxUploadBytes
        });
        builder.Logging.SetMinimumLevel(o.LogLevel);
        // One console format, with credentials blanked from messages and exceptions (Redact).
        builder.Logging.ClearProviders();
        builder.Logging.AddConsole(c => c.FormatterName = RedactingConsoleFormatter.Name)
            .AddConsoleFormatter<RedactingConsoleFormatter, Microsoft.Extensions.Logging.Console.ConsoleFormatterOptions>();
        // "No XML encryptor configured": expected on Linux; the key folder is made owner-only instead (AuthSetup).
        builder.Logging.AddFilter("Microsoft.AspNetCore.DataProtection", LogLevel.Error);
        var s = builder.Services;
        s.AddSingleton(o);
        s.AddSingleton(client);
        s.AddSingleton(client.Tracker);
        s.AddSingleton(users);
        s.AddSingleton<LoginThrottle>();
        s.AddSingleton<DashboardData>();
        s.AddSingleton<SpecSubmitter>();
        if (o.Engine.Webhooks.Enabled) s.AddHostedService(sp => new WebhookService(client.Tracker, WebhookLinks(o), sp.GetRequiredService<ILoggerFactory>().CreateLogger("ReTok.Webhooks")));
        var fleet = new FleetMetrics(client.Tracker);
        s.AddSingleton(_ => fleet);   // a factory registration: the container disposes the meter with the host
        s.AddOpenTelemetry().WithMetrics(m => m.AddMeter(fleet.MeterName).AddPrometheusExporter());
        s.Configure<FormOptions>(f => { f.MultipartBodyLengthLimit = o.MaxUploadBytes; f.ValueLengthLimit = (int)o.MaxUploadBytes; });
        s.ConfigureHttpJsonOptions(j =>
        {
            j.SerializerOptions.PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower;
            j.SerializerOptions.DictionaryKeyPolicy = null;
            j.SerializerOptions.Converters.Add(new JsonStringEnumConverter());
            j.SerializerOptions.NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals;
        });
        s.AddRetokAuth(o);
        // Pages are Razor components rendered on the server (RazorComponentResult); no interactivity, no circuits.
        s.AddRazorComponents();
        // Components encode every value; non-ASCII text (·, →, …, °C) stays as is instead of becoming &#x…; entities.
        s.AddSingleton(HtmlEncoder.Create(UnicodeRanges.All));
        s.AddOpenApi(a => a.AddDocumentTransformer((doc, _, _) =>
        {
            doc.Info.Title = "ReTok.Jobs dashboard API";
            doc.Info.Description = "Runs, metrics, artifacts, lineage, logs, experiments, workers; submit/cancel/retry. " +
                                   "Authenticate with `Authorization: Bearer rtk_…` (create with `retok tokens create`).";
            return Task.CompletedTask;
        }));
        var storage = client.Storage;
        // Only what UseHangfireDashboard needs. Not AddHangfire(): its IGlobalConfiguration factory swaps Hangfire's
        // process-wide log provider and job activator for this host's, which breaks any other Hangfire user in the
        // process (a worker, parallel tests) with ObjectDisposedException once this host stops.
        s.AddSingleton<IGlobalConfiguration>(GlobalConfiguration.Configuration);
        s.AddSingleton(Hangfire.Dashboard.DashboardRoutes.Routes);

        var forwarded = ForwardedHeaders(o);
        var app = builder.Build();
        if (forwarded is not null) app.UseForwardedHeaders(forwarded);
        app.Use(async (ctx, next) =>
        {
            // Every response, /hangfire included: Hangfire's pages load their scripts from files (no inline script),
            // so the same policy fits them; without it they could be framed (clickjacking the operator buttons).
            var h = ctx.Response.Headers;
            h.XContentTypeOptions = "nosniff";
            h["Referrer-Policy"] = "same-origin";
            h.XFrameOptions = "DENY";
            h.ContentSecurityPolicy = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'";
            if (ctx.Request.IsHttps) h.StrictTransportSecurity = "max-age=31536000";
            await next();
        });
        app.UseAuthentication();
        // Hangfire's dashboard is middleware, not an endpoint: send anonymous visitors to the login first.
        app.Use(async (ctx, next) =>
        {
            if (ctx.Request.Path.StartsWithSegments("/hangfire") && ctx.User.Identity?.IsAuthenticated != true)
            {
                await ctx.ChallengeAsync(AuthSetup.Smart);
                return;
            }
            await next();
        });
        app.UseHangfireDashboard("/hangfire", new HangfireDashboardOptions
        {
            Authorization = [new HangfireAuthFilter()],
            IsReadOnlyFunc = HangfireAuthFilter.IsReadOnly,
            AppPath = "/runs",
            DashboardTitle = "ReTok.Jobs · Hangfire",
            DisplayStorageConnectionString = false,
            DisplayNameFunc = new HangfireRunNames(client.Tracker.Runs).DisplayName,
        }, storage);
        HangfireRunNames.RegisterRunLink();
        app.UseAuthorization();
        // after authorization: an anonymous scrape is refused before it can cost a database read
        app.Use(async (ctx, next) =>
        {
            if (ctx.Request.Path == "/metrics") await ctx.RequestServices.GetRequiredService<FleetMetrics>().RefreshAsync(ctx.RequestAborted);
            await next();
        });

        app.MapGet("/healthz", async (DashboardData d, CancellationToken ct) =>
                await d.DatabaseOkAsync(ct) ? Results.Text("ok") : Results.Text("database unreachable", statusCode: 503))
            .AllowAnonymous().WithSummary("liveness/readiness probe (no auth): 200 when PostgreSQL answers");
        app.MapOpenApi("/openapi/{documentName}.json").RequireAuthorization(AuthSetup.ViewerPolicy);
        // Prometheus scrapes with an API token (viewer): `authorization: {credentials: rtk_…}` in the scrape config
        app.MapPrometheusScrapingEndpoint("/metrics").RequireAuthorization(AuthSetup.ViewerPolicy);
        Api.Map(app);
        PageEndpoints.Map(app);
        return app;
    }

    /// <summary>
    /// Forwarded-header handling when <see cref="DashboardOptions.TrustForwardedHeaders"/>: X-Forwarded-For/-Proto are
    /// taken only from loopback and the configured proxies (IPs or CIDR networks), so nobody else can fake the client
    /// address (login throttling) or the scheme.
    /// </summary>
    static ForwardedHeadersOptions? ForwardedHeaders(DashboardOptions o)
    {
        if (!o.TrustForwardedHeaders) return null;
        var f = new ForwardedHeadersOptions { ForwardedHeaders = Microsoft.AspNetCore.HttpOverrides.ForwardedHeaders.XForwardedFor | Microsoft.AspNetCore.HttpOverrides.ForwardedHeaders.XForwardedProto };
        foreach (var p in o.KnownProxies)
        {
            if (System.Net.IPAddress.TryParse(p, out var ip)) f.KnownProxies.Add(ip);
            else if (System.Net.IPNetwork.TryParse(p, out var net)) f.KnownIPNetworks.Add(net);
            else throw new DashboardConfigException($"known proxy '{p}': expected an IP address or a CIDR network (10.0.0.0/8)");
        }
        return f;
    }

    /// <summary>Webhook options of this host: links go to RETOK_DASHBOARD_URL, else to the first URL it listens on (loopback
    /// links are only useful on this machine: set RETOK_DASHBOARD_URL to the public address behind the proxy).</summary>
    static WebhookOptions WebhookLinks(DashboardOptions o) =>
        o.Engine.Webhooks.DashboardUrl is not null ? o.Engine.Webhooks
            : o.Engine.Webhooks with { DashboardUrl = o.Urls.FirstOrDefault(u => Uri.TryCreate(u.Replace("*", "0.0.0.0").Replace("+", "0.0.0.0"), UriKind.Absolute, out var x)
                && x.Port != 0 && x.Host is not ("0.0.0.0" or "[::]"))?.TrimEnd('/') };

    /// <summary>The dashboard's webhook dispatcher (workers run one each too; the outbox claim keeps them from sending a row twice).</summary>
    sealed class WebhookService(Tracker tracker, WebhookOptions options, ILogger log) : BackgroundService
    {
        protected override Task ExecuteAsync(CancellationToken ct) =>
            WebhookDispatcher.RunInBackgroundAsync(tracker, options, m => log.LogWarning("{Message}", m), ct);
    }

    public Task WaitForShutdownAsync(CancellationToken ct = default) => App.WaitForShutdownAsync(ct);

    public async ValueTask DisposeAsync()
    {
        try { await App.StopAsync(); } catch (Exception) { /* already stopped */ }
        await App.DisposeAsync();
        await _client.DisposeAsync();
    }
}

using System.Net;
using ReTok.Engine;

namespace ReTok.Dashboard;

/// <summary>How `retok dashboard` runs: where tracking lives (via <see cref="EngineOptions"/>), where it listens, which specs it offers.</summary>
public sealed record DashboardOptions
{
    public required EngineOptions Engine { get; init; }
    /// <summary>Kestrel URLs. Loopback by default; a non-loopback address needs at least one admin user.</summary>
    public IReadOnlyList<string> Urls { get; init; } = ["http://127.0.0.1:5080"];
    /// <summary>
    /// When a loopback URL's port is taken (another checkout's quickstart), listen on a free port instead of failing;
    /// <see cref="DashboardServer.Addresses"/> tells where. For the quickstart's default URL only: an explicit URL fails.
    /// </summary>
    public bool FreePortFallback { get; init; }
    /// <summary>The jobs/ folder whose *.yaml specs the submit page offers.</summary>
    public string JobsDir { get; init; } = Path.GetFullPath("jobs");
    /// <summary>params_from of a submitted spec must resolve inside this folder (default: the parent of <see cref="JobsDir"/>).</summary>
    public string? SpecRoot { get; init; }
    /// <summary>Upper bound of any request body (spec uploads, forms).</summary>
    public long MaxUploadBytes { get; init; } = 1 << 20;
    /// <summary>Where the cookie-encryption keys persist (so a restart keeps people logged in); null = in memory.</summary>
    public string? KeysDir { get; init; }
    /// <summary>Minimum log level of the ASP.NET host (tests pass Warning).</summary>
    public Microsoft.Extensions.Logging.LogLevel LogLevel { get; init; } = Microsoft.Extensions.Logging.LogLevel.Information;
    /// <summary>A worker silent for longer than this is shown as stale.</summary>
    public TimeSpan WorkerStaleAfter { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>
    /// Behind a TLS-terminating reverse proxy: honour X-Forwarded-For/-Proto from <see cref="KnownProxies"/> (client
    /// address for login throttling, https scheme) and mark cookies Secure. Off by default: forwarded headers from
    /// anyone else could fake the client address.
    /// </summary>
    public bool TrustForwardedHeaders { get; init; }
    /// <summary>Addresses (IPs or CIDR networks) of the proxies whose forwarded headers count; loopback is always trusted.</summary>
    public IReadOnlyList<string> KnownProxies { get; init; } = [];
    /// <summary>Failed logins per user name, and per client address, before a lockout; the window and lockout length.</summary>
    public LoginThrottleOptions LoginThrottle { get; init; } = new();

    public string ResolvedSpecRoot => Path.GetFullPath(SpecRoot ?? Path.GetDirectoryName(Path.GetFullPath(JobsDir)) ?? JobsDir);

    /// <summary>True for http(s)://127.x.x.x, [::1] and localhost; false for 0.0.0.0, *, + and any other host.</summary>
    public static bool IsLoopback(string url)
    {
        var u = url.Trim();
        var scheme = u.IndexOf("://", StringComparison.Ordinal);
        if (scheme < 0) return false;
        var rest = u[(scheme + 3)..];
        var end = rest.IndexOf('/');
        var hostPort = end < 0 ? rest : rest[..end];
        string host;
        if (hostPort.StartsWith('['))
        {
            var close = hostPort.IndexOf(']');
            if (close < 0) return false;
            host = hostPort[1..close];
        }
        else
        {
            var colon = hostPort.LastIndexOf(':');
            host = colon < 0 ? hostPort : hostPort[..colon];
        }
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) return true;
        return IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip);
    }
}

/// <summary>
/// Login throttling: after <see cref="FailuresPerUser"/> failed logins for one user name, or <see cref="FailuresPerAddress"/>
/// from one client address, within <see cref="Window"/>, further attempts are refused (without checking the password)
/// for <see cref="Lockout"/>. Attempts in flight count, so parallel guesses cannot overshoot the limit.
/// </summary>
public sealed record LoginThrottleOptions
{
    public int FailuresPerUser { get; init; } = 5;
    public int FailuresPerAddress { get; init; } = 20;
    public TimeSpan Window { get; init; } = TimeSpan.FromMinutes(15);
    public TimeSpan Lockout { get; init; } = TimeSpan.FromMinutes(15);
}

/// <summary>A setting that stops the dashboard from starting (printed as one line by the CLI).</summary>
public sealed class DashboardConfigException(string message) : Exception(message);

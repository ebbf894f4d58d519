using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using ReTok.Dashboard;
using ReTok.Engine;
using ReTok.Plots;
using ReTok.Tests.Infra;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>
/// Regression tests of issue 14 (hardening), against a real Kestrel + PostgreSQL: each reproduces an attack or fault
/// that used to kill the process, leak, or let a request through.
/// </summary>
public sealed class DashboardHardeningTests(DashboardFixture f, Xunit.Abstractions.ITestOutputHelper log) : IClassFixture<DashboardFixture>
{
    static async Task<JsonElement> Json(HttpResponseMessage r) => JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;

    static async Task<List<string>> Errors(HttpResponseMessage r) =>
        (await Json(r)).GetProperty("errors").EnumerateArray().Select(e => e.GetString()!).ToList();

    /// <summary>`params: {n: [[[[…]]]]}` nested <paramref name="levels"/> deep (2 bytes a level).</summary>
    static string Nested(int levels) => "kind: selftest\nparams: {n: " + new string('[', levels) + new string(']', levels) + "}\n";

    // ------------------------------------------------------------------ 2. requests and parsing

    [Fact]
    public async Task A_100k_level_spec_is_400_naming_the_limit_and_the_service_stays_up()
    {
        // Before: YamlDotNet recursed once per level while building nodes; the stack overflowed and the process died.
        using var op = f.Client(UserRole.Operator);
        var spec = Nested(100_000);
        Assert.InRange(spec.Length, 190_000, 210_000);
        var r = await op.PostAsync("/api/submit", new StringContent(spec, Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        var e = Assert.Single(await Errors(r));
        Assert.Contains($"nested deeper than the limit of {SpecYaml.MaxDepth} levels", e);
        Assert.StartsWith("spec: line 2, column", e);

        // the same through the submit page (form post with a cookie)
        using var c = await f.LoginAsync("operator");
        var page = await c.GetStringAsync("/submit");
        var form = await c.PostAsync("/submit", new FormUrlEncodedContent(new Dictionary<string, string>
            { ["__RequestVerificationToken"] = DashboardFixture.CsrfToken(page), ["yaml"] = spec }));
        Assert.Equal(HttpStatusCode.BadRequest, form.StatusCode);
        Assert.Contains($"limit of {SpecYaml.MaxDepth} levels", await form.Content.ReadAsStringAsync());

        // still serving, and a spec at the limit's edge still binds (the limit is not off by one against real specs)
        Assert.Equal("ok", await op.GetStringAsync("/healthz"));
        var edge = await op.PostAsync("/api/submit", new StringContent(Nested(SpecYaml.MaxDepth - 2), Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.BadRequest, edge.StatusCode);
        Assert.StartsWith("params.n: expected an integer (int), got a list", Assert.Single(await Errors(edge)));
    }

    [Fact]
    public async Task A_list_or_mapping_as_a_mapping_key_is_400_not_500()
    {
        using var op = f.Client(UserRole.Operator);
        foreach (var spec in new[]
                 {
                     "kind: selftest\nparams:\n  ? [n]\n  : 3\n",
                     "pipeline: p\nsteps:\n  ? [a, b]\n  : {kind: selftest}\n",
                     "kind: selftest\ninputs:\n  ? {a: 1}\n  : run:1/x\n",
                 })
        {
            var r = await op.PostAsync("/api/submit", new StringContent(spec, Encoding.UTF8, "application/yaml"));
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.Contains("a mapping key must be a plain value", Assert.Single(await Errors(r)));
        }
    }

    [Fact]
    public async Task Alias_expansion_and_overrides_are_bounded_too()
    {
        using var op = f.Client(UserRole.Operator);
        // "billion laughs": 9 levels of 10 aliases is 10^9 nodes once bound to parameters, from a few hundred bytes
        var sb = new StringBuilder("kind: selftest\nx0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n");
        for (var i = 1; i < 9; i++) sb.Append($"x{i}: &a{i} [{string.Join(", ", Enumerable.Repeat($"*a{i - 1}", 10))}]\n");
        var bomb = await op.PostAsync("/api/submit", new StringContent(sb.ToString(), Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.BadRequest, bomb.StatusCode);
        Assert.Contains($"more than the limit of {SpecYaml.MaxExpandedNodes} nodes", Assert.Single(await Errors(bomb)));

        // a --set value goes through the same loader
        var deep = await op.PostAsync("/api/submit?set=n=" + Uri.EscapeDataString(new string('[', 1000) + new string(']', 1000)), new StringContent("kind: selftest\n", Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.BadRequest, deep.StatusCode);
        Assert.StartsWith("--set n: line 1, column", Assert.Single(await Errors(deep)));
        Assert.Equal("ok", await op.GetStringAsync("/healthz"));
    }

    // ------------------------------------------------------------------ 5. authentication and sessions

    /// <summary>
    /// Logs in through the form on <paramref name="baseUrl"/>, carrying cookies by hand (a cookie jar would not send
    /// Secure cookies back over http, which the forwarded-https case needs); returns status, Location and the
    /// Cookie header of the new session.
    /// </summary>
    static async Task<(HttpStatusCode Status, string? Location, HttpResponseMessage Response, string Cookies)> PostLoginAsync(
        string baseUrl, string user, string password, string returnUrl = "/runs", Dictionary<string, string>? headers = null)
    {
        using var c = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false, UseCookies = false }) { BaseAddress = new Uri(baseUrl) };
        foreach (var (k, v) in headers ?? []) c.DefaultRequestHeaders.Add(k, v);
        var get = await c.GetAsync("/login");
        var form = await get.Content.ReadAsStringAsync();
        var req = new HttpRequestMessage(HttpMethod.Post, "/login")
        {
            Content = new FormUrlEncodedContent(new Dictionary<string, string>
                { ["__RequestVerificationToken"] = DashboardFixture.CsrfToken(form), ["user"] = user, ["password"] = password, ["returnUrl"] = returnUrl }),
        };
        req.Headers.Add("Cookie", CookieHeader(get));
        var res = await c.SendAsync(req);
        return (res.StatusCode, res.Headers.Location?.OriginalString, res, CookieHeader(res));
    }

    static string CookieHeader(HttpResponseMessage r) =>
        string.Join("; ", (r.Headers.TryGetValues("Set-Cookie", out var v) ? v : []).Select(h => h.Split(';')[0]));

    /// <summary>A client that sends exactly the given Cookie header (a copy of someone's session), no jar of its own.</summary>
    HttpClient WithCookies(string cookieHeader)
    {
        var c = f.Client();
        c.DefaultRequestHeaders.Add("Cookie", cookieHeader);
        return c;
    }

    [Fact]
    public async Task Login_returnUrl_cannot_send_the_browser_to_another_origin()
    {
        // "/\t/evil.example/phish": browsers drop the tab and go to //evil.example/phish
        foreach (var evil in new[] { "/\t/evil.example/phish", "/\n/evil.example/phish", "//evil.example/phish", "/\\evil.example/phish", "https://evil.example/phish", "~//evil.example" })
        {
            using var c = f.Client(cookies: true);
            Assert.DoesNotContain("evil.example", await c.GetStringAsync("/login?returnUrl=" + Uri.EscapeDataString(evil)));
            var (status, location, _, _) = await PostLoginAsync(f.BaseUrl, "viewer", DashboardFixture.Password, evil);
            Assert.Equal(HttpStatusCode.Redirect, status);
            Assert.Equal("/runs", location);
        }
        var (_, local, _, _) = await PostLoginAsync(f.BaseUrl, "viewer", DashboardFixture.Password, "/compare?ids=1,2");
        Assert.Equal("/compare?ids=1,2", local);
    }

    [Fact]
    public async Task Logout_kills_copies_of_the_cookie_and_a_password_change_kills_sessions_and_tokens()
    {
        await f.Users.AddAsync("stamp-user", DashboardFixture.Password, UserRole.Operator);
        var (_, _, _, cookies) = await PostLoginAsync(f.BaseUrl, "stamp-user", DashboardFixture.Password);
        using var mine = WithCookies(cookies);
        using var copy = WithCookies(cookies);
        Assert.Equal(HttpStatusCode.OK, (await copy.GetAsync("/runs")).StatusCode);

        // log out through the page's form (its antiforgery cookie comes with the page)
        var runs = await mine.GetAsync("/runs");
        var req = new HttpRequestMessage(HttpMethod.Post, "/logout")
            { Content = new FormUrlEncodedContent(new Dictionary<string, string> { ["__RequestVerificationToken"] = DashboardFixture.CsrfToken(await runs.Content.ReadAsStringAsync()) }) };
        req.Headers.Add("Cookie", cookies + "; " + CookieHeader(runs));
        using var plain = f.Client();
        var logout = await plain.SendAsync(req);
        Assert.Equal("/login", logout.Headers.Location?.OriginalString);
        // before: the copied cookie was still a valid ticket until it expired (12 h, sliding)
        var after = await copy.GetAsync("/runs");
        Assert.Equal(HttpStatusCode.Redirect, after.StatusCode);
        Assert.StartsWith("/login", after.Headers.Location!.AbsolutePath);
        Assert.Equal(HttpStatusCode.Unauthorized, (await copy.GetAsync("/api/me")).StatusCode);

        // a password change ends every session and every token created before it
        var (_, _, _, cookies2) = await PostLoginAsync(f.BaseUrl, "stamp-user", DashboardFixture.Password);
        using var session = WithCookies(cookies2);
        var old = await f.Users.CreateTokenAsync("stamp-user", "before-change");
        using var bearer = f.Client();
        bearer.DefaultRequestHeaders.Authorization = new("Bearer", old.Token);
        Assert.Equal(HttpStatusCode.OK, (await bearer.GetAsync("/api/me")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await session.GetAsync("/runs")).StatusCode);
        await f.Users.AddAsync("stamp-user", "a-new-password-2", UserRole.Operator, update: true);
        Assert.Equal(HttpStatusCode.Unauthorized, (await bearer.GetAsync("/api/me")).StatusCode);
        Assert.Equal(HttpStatusCode.Redirect, (await session.GetAsync("/runs")).StatusCode);

        // and what is issued after it works
        var fresh = await f.Users.CreateTokenAsync("stamp-user", "after-change");
        using var bearer2 = f.Client();
        bearer2.DefaultRequestHeaders.Authorization = new("Bearer", fresh.Token);
        Assert.Equal(HttpStatusCode.OK, (await bearer2.GetAsync("/api/me")).StatusCode);
        var (_, _, _, cookies3) = await PostLoginAsync(f.BaseUrl, "stamp-user", "a-new-password-2");
        using var again = WithCookies(cookies3);
        Assert.Equal(HttpStatusCode.OK, (await again.GetAsync("/runs")).StatusCode);
    }

    [Fact]
    public async Task Failed_logins_lock_out_the_user_then_the_address_and_parallel_guesses_do_not_overshoot()
    {
        foreach (var u in new[] { "throttle-a", "throttle-b", "throttle-c" }) await f.Users.AddAsync(u, DashboardFixture.Password, UserRole.Viewer);
        // its own server: the address lockout would otherwise lock the other tests (all on 127.0.0.1) out
        await using var server = await DashboardServer.StartAsync(new DashboardOptions
        {
            Engine = new EngineOptions { Db = f.Db.ConnectionString, Artifacts = f.Db.ArtifactRoot },
            Urls = ["http://127.0.0.1:0"], JobsDir = f.JobsDir, LogLevel = LogLevel.Warning,
            LoginThrottle = new LoginThrottleOptions { FailuresPerUser = 3, FailuresPerAddress = 6 },
        });
        var url = server.Addresses.Single().TrimEnd('/');

        for (var i = 0; i < 3; i++)
            Assert.StartsWith("/login?error=1", (await PostLoginAsync(url, "throttle-a", "wrong-password")).Location);
        // locked: even the right password is refused, without being checked
        var locked = await PostLoginAsync(url, "throttle-a", DashboardFixture.Password);
        Assert.Equal((HttpStatusCode)429, locked.Status);
        Assert.InRange(int.Parse(locked.Response.Headers.GetValues("Retry-After").Single()), 1, 15 * 60);
        Assert.Contains("Too many failed log-in attempts", await locked.Response.Content.ReadAsStringAsync());
        // other users from the same address are not locked yet (3 of 6)
        Assert.Equal("/runs", (await PostLoginAsync(url, "throttle-c", DashboardFixture.Password)).Location);

        // ten guesses at once: attempts in flight count, so exactly 3 passwords are checked
        var burst = await Task.WhenAll(Enumerable.Range(0, 10).Select(_ => PostLoginAsync(url, "throttle-b", "wrong-password")));
        Assert.Equal(3, burst.Count(r => r.Status == HttpStatusCode.Redirect));
        Assert.Equal(7, burst.Count(r => r.Status == (HttpStatusCode)429));

        // 6 failures from 127.0.0.1: the address is locked for every user now
        Assert.Equal((HttpStatusCode)429, (await PostLoginAsync(url, "throttle-c", DashboardFixture.Password)).Status);
        // the fixture's own server keeps its own count
        Assert.Equal("/runs", (await PostLoginAsync(f.BaseUrl, "throttle-c", DashboardFixture.Password)).Location);
    }

    // ------------------------------------------------------------------ 7. secrets and headers

    const string AzureSecret = "c2VjcmV0LWFjY291bnQta2V5LWRvLW5vdC1sZWFr==";
    const string AzureConn = $"DefaultEndpointsProtocol=https;AccountName=retokacct;AccountKey={AzureSecret};EndpointSuffix=core.windows.net";

    [Fact]
    public void Redact_blanks_credentials_and_keeps_the_rest()
    {
        Assert.Equal("DefaultEndpointsProtocol=https;AccountName=retokacct;AccountKey=***;EndpointSuffix=core.windows.net", Redact.Secrets(AzureConn));
        Assert.Equal("BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=***", Redact.Secrets("BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&ss=b&sig=AbC%2Bd"));
        Assert.Equal("GET https://a.blob.core.windows.net/c/x?sv=2022-11-02&se=2030-01-01&sig=*** failed", Redact.Secrets("GET https://a.blob.core.windows.net/c/x?sv=2022-11-02&se=2030-01-01&sig=AbC%2Bd%3D failed"));
        Assert.Equal("Host=db;Username=retok;Password=***;Database=retok", Redact.Secrets("Host=db;Username=retok;Password=hunter2;Database=retok"));
        Assert.Equal("Host=db;password = ***;Database=x", Redact.Secrets("Host=db;password = 'a b;c';Database=x"));
        Assert.Equal("postgres://retok:***@db:5432/retok", Redact.Secrets("postgres://retok:hunter2@db:5432/retok"));
        Assert.Equal("token rtk_***", Redact.Secrets("token rtk_" + new string('A', 43)));
        Assert.Equal("step 10: loss 0.25, signal=3", Redact.Secrets("step 10: loss 0.25, signal=3"));
    }

    [Fact]
    public async Task Failure_reasons_and_run_logs_are_stored_with_credentials_blanked()
    {
        var run = await f.Tracker.Runs.InsertAsync(new Run { Name = "leaky", Kind = "selftest", Status = RunStatus.Queued, Parameters = "{}" });
        var lease = await f.Tracker.Runs.TryAcquireLeaseAsync(run.Id, new LeaseRequest("test-owner", TimeSpan.FromMinutes(1)));
        Assert.NotNull(lease);
        var error = new FormatException($"No valid combination of account information found in '{AzureConn}'");
        await f.Tracker.LogAsync(run.Id, "error", error.ToString(), lease!.Fence);
        await f.Tracker.Runs.FailAsync(lease, $"{error.GetType().Name}: {error.Message}");

        using var c = f.Client(UserRole.Viewer);
        var dto = await c.GetStringAsync($"/api/runs/{run.Id}");
        var logs = await c.GetStringAsync($"/api/runs/{run.Id}/logs");
        var page = await c.GetStringAsync($"/runs/{run.Id}");
        foreach (var text in new[] { dto, logs, page })
        {
            Assert.DoesNotContain(AzureSecret[..20], text);
            Assert.Contains("AccountKey=***", text);
        }
        Assert.Contains("No valid combination of account information", dto); // the reason itself stays readable
    }

    [Fact]
    public async Task The_cli_prints_an_unhandled_error_without_the_account_key()
    {
        // RETOK_ARTIFACTS without a container: the store parser's ArgumentException quotes the whole setting
        using var p = await Proc.RunAsync("dotnet", [Path.Combine(AppContext.BaseDirectory, "retok.dll"), "runs", "list"],
            new Dictionary<string, string?> { ["RETOK_DB"] = f.Db.ConnectionString, ["RETOK_ARTIFACTS"] = "blob:;" + AzureConn },
            TimeSpan.FromSeconds(120), cwd: Directory.GetCurrentDirectory());
        var output = p.Stdout + p.Stderr;
        Assert.NotEqual(0, p.ExitCode);
        Assert.Contains("AccountKey=***", output);
        Assert.DoesNotContain(AzureSecret[..20], output);
    }

    [Fact]
    public void The_dashboard_log_format_blanks_credentials_in_messages_and_exceptions()
    {
        var w = new StringWriter();
        var ex = new InvalidOperationException($"cannot open store '{AzureConn}'", new Exception("Password=hunter2"));
        new RedactingConsoleFormatter().Write(new LogEntry<string>(LogLevel.Error, "Microsoft.AspNetCore.Server.Kestrel", new EventId(13), "unhandled",
            ex, (s, _) => $"{s}: Host=db;Password=hunter2"), null, w);
        var text = w.ToString();
        Assert.Contains("fail: Microsoft.AspNetCore.Server.Kestrel[13] unhandled: Host=db;Password=***", text);
        Assert.Contains("AccountKey=***", text);
        Assert.DoesNotContain(AzureSecret[..20], text);
        Assert.DoesNotContain("hunter2", text);
    }

    [Fact]
    public async Task Hangfire_pages_cannot_be_framed_and_carry_a_csp()
    {
        var (_, _, _, cookies) = await PostLoginAsync(f.BaseUrl, "operator", DashboardFixture.Password);
        using var c = WithCookies(cookies);
        foreach (var path in new[] { "/hangfire", "/hangfire/jobs/enqueued", "/runs" })
        {
            var r = await c.GetAsync(path);
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Equal("DENY", r.Headers.GetValues("X-Frame-Options").Single());
            var csp = r.Headers.GetValues("Content-Security-Policy").Single();
            Assert.Contains("frame-ancestors 'none'", csp);
            Assert.Contains("script-src 'self'", csp);
        }
    }

    [Fact]
    public async Task Forwarded_headers_count_only_when_configured_and_then_cookies_are_secure()
    {
        var https = new Dictionary<string, string> { ["X-Forwarded-Proto"] = "https", ["X-Forwarded-For"] = "203.0.113.7" };
        // default: a client cannot claim https (nor another address); cookies follow the real scheme
        var plain = await PostLoginAsync(f.BaseUrl, "viewer", DashboardFixture.Password, headers: https);
        Assert.DoesNotContain(plain.Response.Headers.GetValues("Set-Cookie"), h => h.StartsWith("retok.auth") && h.Contains("secure", StringComparison.OrdinalIgnoreCase));

        await using var server = await DashboardServer.StartAsync(new DashboardOptions
        {
            Engine = new EngineOptions { Db = f.Db.ConnectionString, Artifacts = f.Db.ArtifactRoot },
            Urls = ["http://127.0.0.1:0"], JobsDir = f.JobsDir, LogLevel = LogLevel.Warning, TrustForwardedHeaders = true,
        });
        var url = server.Addresses.Single().TrimEnd('/');
        var proxied = await PostLoginAsync(url, "viewer", DashboardFixture.Password, headers: https);
        Assert.Equal("/runs", proxied.Location);
        Assert.Contains(proxied.Response.Headers.GetValues("Set-Cookie"), h => h.StartsWith("retok.auth") && h.Contains("secure", StringComparison.OrdinalIgnoreCase));
        Assert.StartsWith("max-age=", proxied.Response.Headers.GetValues("Strict-Transport-Security").Single());
        await using var db = f.Tracker.CreateDb();
        Assert.Contains(db.UserSessions.Where(s => s.Address != null).Select(s => s.Address).ToList(), a => a == "203.0.113.7");

        var bad = await Assert.ThrowsAsync<DashboardConfigException>(() => DashboardServer.StartAsync(new DashboardOptions
        {
            Engine = new EngineOptions { Db = f.Db.ConnectionString, Artifacts = f.Db.ArtifactRoot },
            Urls = ["http://127.0.0.1:0"], TrustForwardedHeaders = true, KnownProxies = ["10.0.0.0/8", "not-an-ip"],
        }));
        Assert.Contains("'not-an-ip'", bad.Message);
    }

    // ------------------------------------------------------------------ 6. metric reads

    [Fact]
    public async Task A_run_with_1M_points_is_downsampled_for_pages_and_paginated_in_the_api()
    {
        var run = await f.Tracker.Runs.InsertAsync(new Run { Name = "long-run", Kind = "selftest", Status = RunStatus.Succeeded, Parameters = "{}" });
        var sw = Stopwatch.StartNew();
        await using (var cmd = f.Tracker.DataSource.CreateCommand("""
            INSERT INTO retok.metrics (run_id, key, step, value, time)
            SELECT @r, k, g, CASE WHEN k = 'train/loss' AND g = 377777 THEN 100 WHEN k = 'train/loss' AND g = 123457 THEN -50 ELSE sin(g / 1000.0) END, now()
            FROM generate_series(1, 500000) g, (VALUES ('train/loss'), ('train/lr')) AS keys(k)
            """))
        {
            cmd.Parameters.AddWithValue("r", run.Id);
            cmd.CommandTimeout = 300;
            await cmd.ExecuteNonQueryAsync();
        }
        log.WriteLine($"seeded 1M points in {sw.Elapsed.TotalSeconds:F1} s");
        await using (var an = f.Tracker.DataSource.CreateCommand("VACUUM ANALYZE retok.metrics")) await an.ExecuteNonQueryAsync(); // as autovacuum would
        // for comparison on the same machine and data: what every page and API call used to read
        sw.Restart();
        var all = await f.Tracker.GetMetricsAsync(run.Id);
        log.WriteLine($"old path (every point): {all.Count} points in {sw.ElapsedMilliseconds} ms");
        all = null;

        // pages: SQL min/max buckets keep the spike and the dip, the first and last point, and stay small
        sw.Restart();
        var series = await f.Tracker.GetMetricSeriesAsync(run.Id, 1000);
        log.WriteLine($"downsampled series of 1M points: {sw.ElapsedMilliseconds} ms");
        var loss = series["train/loss"];
        Assert.InRange(loss.Count, 900, 1000);
        Assert.Contains((377777L, 100.0), loss);
        Assert.Contains((123457L, -50.0), loss);
        Assert.Equal(1, loss[0].Step);
        Assert.Equal(500000, loss[^1].Step);
        Assert.True(loss.Zip(loss.Skip(1)).All(p => p.First.Step < p.Second.Step));
        Assert.InRange(series["train/lr"].Count, 900, 1000);

        sw.Restart();
        var latest = await f.Tracker.GetLatestMetricsAsync([run.Id]);
        log.WriteLine($"latest values of 1M points: {sw.ElapsedMilliseconds} ms");
        Assert.Equal([("train/loss", 500000L), ("train/lr", 500000L)], latest.Select(m => (m.Key, m.Step)).Order().ToList());

        using var c = f.Client(UserRole.Viewer);
        sw.Restart();
        var page = await c.GetAsync($"/runs/{run.Id}");
        var html = await page.Content.ReadAsStringAsync();
        log.WriteLine($"run page: {sw.ElapsedMilliseconds} ms, {html.Length / 1024} KiB");
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.InRange(html.Length, 1, 1 << 20);

        // API: pages of 10 000 points with a Link to the next; max_points gives chart-sized series
        sw.Restart();
        var first = await c.GetAsync($"/api/runs/{run.Id}/metrics");
        var body = await first.Content.ReadAsStringAsync();
        log.WriteLine($"metrics API first page: {sw.ElapsedMilliseconds} ms, {body.Length / 1024} KiB");
        var j = JsonDocument.Parse(body).RootElement;
        Assert.Equal(Api.DefaultMetricPage, j.GetProperty("train/loss").GetArrayLength());
        Assert.False(j.TryGetProperty("train/lr", out _));
        var next = first.Headers.GetValues("Link").Single();
        Assert.EndsWith("; rel=\"next\"", next);
        var nextUrl = next[1..next.IndexOf('>')];
        sw.Restart();
        var second = await Json(await c.GetAsync(nextUrl));
        log.WriteLine($"metrics API next page: {sw.ElapsedMilliseconds} ms");
        Assert.Equal(Api.DefaultMetricPage + 1, second.GetProperty("train/loss")[0].GetProperty("step").GetInt64());
        // the page boundary between keys: the last page of train/loss continues into train/lr
        var boundary = await c.GetAsync($"/api/runs/{run.Id}/metrics?after_key=train/loss&after_step=499990&limit=20");
        var b = await Json(boundary);
        Assert.Equal(10, b.GetProperty("train/loss").GetArrayLength());
        Assert.Equal(10, b.GetProperty("train/lr").GetArrayLength());
        Assert.Equal(1, b.GetProperty("train/lr")[0].GetProperty("step").GetInt64());
        Assert.Equal(HttpStatusCode.BadRequest, (await c.GetAsync($"/api/runs/{run.Id}/metrics?limit=1000000")).StatusCode);
        var chart = await Json(await c.GetAsync($"/api/runs/{run.Id}/metrics?max_points=200&key=train/loss"));
        Assert.InRange(chart.GetProperty("train/loss").GetArrayLength(), 150, 200);
    }

    [Fact]
    public async Task Chart_ticks_survive_huge_and_non_finite_values_and_the_compare_page_renders()
    {
        foreach (var (lo, hi) in new[] { (-1.5e308, 1.5e308), (1.5e308, 1.5e308), (double.NaN, 1.0), (0.0, double.PositiveInfinity), (double.NaN, double.NaN), (-double.MaxValue, double.MaxValue), (3.0, 3.0), (0.0, 1e-300) })
        {
            var t = Chart.Ticks(lo, hi);
            Assert.True(t.Length >= 2, $"{lo}..{hi}");
            Assert.All(t, v => Assert.True(double.IsFinite(v), $"{lo}..{hi}: {v}"));
            Assert.True(t.Zip(t.Skip(1)).All(p => p.First < p.Second), $"{lo}..{hi}: {string.Join(", ", t)}");
        }
        var unit = Chart.Ticks(0, 1);
        Assert.Equal((6, 0.0, 1.0), (unit.Length, unit[0], unit[^1]));

        var a = await f.Tracker.Runs.InsertAsync(new Run { Name = "diverged-a", Kind = "selftest", Status = RunStatus.Failed, Parameters = "{}" });
        var b = await f.Tracker.Runs.InsertAsync(new Run { Name = "diverged-b", Kind = "selftest", Status = RunStatus.Failed, Parameters = "{}" });
        await f.Tracker.LogMetricsAsync(a.Id, [new("train/loss", 0, 1.0), new("train/loss", 1, 1.5e308), new("train/loss", 2, double.NaN)]);
        await f.Tracker.LogMetricsAsync(b.Id, [new("train/loss", 0, 1.0), new("train/loss", 1, -1.5e308), new("train/loss", 2, 2.0)]);
        using var c = f.Client(UserRole.Viewer);
        var cmp = await c.GetAsync($"/compare?ids={a.Id},{b.Id}");
        Assert.Equal(HttpStatusCode.OK, cmp.StatusCode);
        Assert.Contains("<polyline class=\"curve\"", await cmp.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.OK, (await c.GetAsync($"/runs/{a.Id}")).StatusCode);
    }

    [Fact]
    public async Task NaN_and_infinite_parameters_are_refused_at_submit()
    {
        using var op = f.Client(UserRole.Operator);
        foreach (var (spec, set) in new[] { ("kind: selftest\nparams: {scale: .nan}\n", ""), ("kind: selftest\nparams: {scale: -.inf}\n", ""), ("kind: selftest\n", "scale=1e999"), ("kind: selftest\n", "scale=NaN") })
        {
            var r = await op.PostAsync("/api/submit" + (set.Length > 0 ? "?set=" + Uri.EscapeDataString(set) : ""), new StringContent(spec, Encoding.UTF8, "application/yaml"));
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.StartsWith("params.scale: must be a finite number, got '", Assert.Single(await Errors(r)));
        }
    }
}

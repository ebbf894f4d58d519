using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using ReTok.Dashboard;
using ReTok.Engine;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>HTTP integration tests against a real Kestrel + PostgreSQL: auth, roles, tokens, CSRF, submit validation, artifacts.</summary>
public sealed class DashboardApiTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    static async Task<JsonElement> Json(HttpResponseMessage r) => JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;

    [Fact]
    public async Task Page_text_is_encoded_once_and_static_files_are_served()
    {
        // Razor components encode every value once: markup in run names, tags, messages and metric keys stays text
        var evil = "<script>alert('x')</script> & \"q\"";
        var run = await f.Tracker.Runs.InsertAsync(new Run { Kind = "selftest", Name = evil, Status = RunStatus.Failed, FailureReason = evil, Tags = ["t=<b>"] });
        await f.Tracker.LogMetricsAsync(run.Id, [new("<i>/loss", 1, 2.0), new("<i>/loss", 2, 1.0)]);
        using var c = f.Client(UserRole.Viewer);
        foreach (var url in new[] { $"/runs/{run.Id}", "/runs", $"/compare?ids={run.Id}" })
        {
            var page = await c.GetStringAsync(url);
            Assert.DoesNotContain("<script>alert", page);
            Assert.DoesNotContain("<b>", page);
            Assert.DoesNotContain("&amp;lt;", page);   // not encoded twice
            Assert.Contains("&lt;script&gt;alert(", page);
        }
        var run1 = await c.GetStringAsync($"/runs/{run.Id}");
        Assert.Contains("data-key=\"&lt;i&gt;/loss\"", run1);
        Assert.Contains("<polyline class=\"curve\"", run1);   // the chart's SVG is markup, not text

        using var anon = f.Client();
        var css = await anon.GetAsync("/static/site.css");
        Assert.Equal("text/css", css.Content.Headers.ContentType!.MediaType);
        Assert.Contains(".st-running", await css.Content.ReadAsStringAsync());
        var js = await anon.GetAsync("/static/app.js");
        Assert.Equal("text/javascript", js.Content.Headers.ContentType!.MediaType);
        Assert.Contains("/api/runs/live", await js.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Unauthenticated_api_gets_401_pages_redirect_to_login_healthz_is_open()
    {
        using var c = f.Client();
        foreach (var path in new[] { "/api/runs", $"/api/runs/{f.TokRun}", $"/api/runs/{f.TokRun}/artifacts/samples/grid.png", "/api/workers", "/openapi/v1.json" })
            Assert.Equal(HttpStatusCode.Unauthorized, (await c.GetAsync(path)).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await c.PostAsync($"/api/runs/{f.TokRun}/cancel", null)).StatusCode);
        foreach (var path in new[] { "/runs", $"/runs/{f.TokRun}", "/hangfire", "/workers", $"/runs/{f.TokRun}/artifacts/samples/grid.png" })
        {
            var r = await c.GetAsync(path);
            Assert.Equal(HttpStatusCode.Redirect, r.StatusCode);
            Assert.StartsWith("/login", r.Headers.Location!.AbsolutePath);
        }
        var h = await c.GetAsync("/healthz");
        Assert.Equal(HttpStatusCode.OK, h.StatusCode);
        Assert.Equal("ok", await h.Content.ReadAsStringAsync());
        using var bad = f.Client();
        bad.DefaultRequestHeaders.Authorization = new("Bearer", "rtk_not-a-real-token");
        Assert.Equal(HttpStatusCode.Unauthorized, (await bad.GetAsync("/api/runs")).StatusCode);
    }

    [Fact]
    public async Task Viewer_cannot_cancel_operator_can_and_the_run_is_cancelled()
    {
        using var op = f.Client(UserRole.Operator);
        var sub = await op.PostAsync("/api/submit", new StringContent("kind: selftest\nname: to-cancel\nparams: {n: 5}\n", Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.Created, sub.StatusCode);
        var id = (await Json(sub)).GetProperty("runs")[0].GetProperty("run_id").GetInt64();
        Assert.Equal("Queued", (await Json(await op.GetAsync($"/api/runs/{id}"))).GetProperty("status").GetString());

        using var viewer = f.Client(UserRole.Viewer);
        Assert.Equal(HttpStatusCode.Forbidden, (await viewer.PostAsync($"/api/runs/{id}/cancel", null)).StatusCode);
        Assert.Equal(HttpStatusCode.Forbidden, (await viewer.PostAsync("/api/submit", new StringContent("kind: noop\n", Encoding.UTF8, "application/yaml"))).StatusCode);
        Assert.Equal("Queued", (await Json(await viewer.GetAsync($"/api/runs/{id}"))).GetProperty("status").GetString());

        var cancel = await op.PostAsync($"/api/runs/{id}/cancel", null);
        Assert.Equal(HttpStatusCode.OK, cancel.StatusCode);
        Assert.Contains(id, (await Json(cancel)).GetProperty("cancelled_now").EnumerateArray().Select(e => e.GetInt64()));
        Assert.Equal("Cancelled", (await Json(await viewer.GetAsync($"/api/runs/{id}"))).GetProperty("status").GetString());
        Assert.Equal(HttpStatusCode.Conflict, (await op.PostAsync($"/api/runs/{id}/cancel", null)).StatusCode);

        // retry brings it back to Queued (operator), viewer still refused
        Assert.Equal(HttpStatusCode.Forbidden, (await viewer.PostAsync($"/api/runs/{id}/retry", null)).StatusCode);
        var retry = await op.PostAsync($"/api/runs/{id}/retry", null);
        Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
        Assert.Equal("Queued", (await Json(retry)).GetProperty("status").GetString());
        Assert.Equal(HttpStatusCode.NotFound, (await op.PostAsync("/api/runs/999999/cancel", null)).StatusCode);
    }

    [Fact]
    public async Task Revoked_token_is_refused_on_the_next_request()
    {
        var t = await f.Users.CreateTokenAsync("operator", "to-revoke");
        using var c = f.Client();
        c.DefaultRequestHeaders.Authorization = new("Bearer", t.Token);
        var me = await Json(await c.GetAsync("/api/me"));
        Assert.Equal("operator", me.GetProperty("name").GetString());
        Assert.Equal("Operator", me.GetProperty("role").GetString());
        Assert.Equal("token", me.GetProperty("via").GetString());
        Assert.True(await f.Users.RevokeTokenAsync(t.Id.ToString()));
        Assert.Equal(HttpStatusCode.Unauthorized, (await c.GetAsync("/api/me")).StatusCode);
        Assert.False(await f.Users.RevokeTokenAsync(t.Token)); // already revoked
        // stored hashed: the token string itself is nowhere in the table
        await using var db = f.Tracker.CreateDb();
        Assert.DoesNotContain(db.ApiTokens.Select(x => x.TokenHash).ToList(), h => h.Contains(t.Token[4..12]));
        Assert.Contains(db.ApiTokens.ToList(), x => x.TokenHash == ReTok.Dashboard.Auth.UserStore.HashToken(t.Token) && x.RevokedAt != null);
    }

    [Fact]
    public async Task Bad_spec_upload_is_400_with_the_key_path_and_nothing_is_queued()
    {
        using var op = f.Client(UserRole.Operator);
        var before = (await Json(await op.GetAsync("/api/runs?limit=2000"))).GetArrayLength();

        var r = await op.PostAsync("/api/submit", new StringContent("kind: selftest\nparams:\n  n: lots\n  stepms: 3\n", Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        var errors = (await Json(r)).GetProperty("errors").EnumerateArray().Select(e => e.GetString()!).ToList();
        Assert.Contains(errors, e => e.StartsWith("params.n:") && e.Contains("lots"));
        Assert.Contains(errors, e => e.StartsWith("params.stepms: unknown key"));

        // multipart upload of a jobs-style file, JSON body naming a jobs/ file, params_from escaping the spec root
        var mp = new MultipartFormDataContent { { new ByteArrayContent("kind: nosuchkind\n"u8.ToArray()), "spec", "x.yaml" } };
        var m = await op.PostAsync("/api/submit", mp);
        Assert.Equal(HttpStatusCode.BadRequest, m.StatusCode);
        Assert.Contains("kind: unknown job kind 'nosuchkind'", (await Json(m)).GetProperty("errors")[0].GetString());
        var j = await op.PostAsJsonAsync("/api/submit", new { file = "broken.yaml" });
        Assert.Equal(HttpStatusCode.BadRequest, j.StatusCode);
        Assert.StartsWith("params.n:", (await Json(j)).GetProperty("errors")[0].GetString());
        var escape = await op.PostAsJsonAsync("/api/submit", new { file = "../broken.yaml" });
        Assert.Equal(HttpStatusCode.BadRequest, escape.StatusCode);
        Assert.StartsWith("file:", (await Json(escape)).GetProperty("errors")[0].GetString());
        var pf = await op.PostAsync("/api/submit", new StringContent("kind: selftest\nparams_from: /etc/passwd\n", Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.BadRequest, pf.StatusCode);
        Assert.StartsWith("params_from:", (await Json(pf)).GetProperty("errors")[0].GetString());

        // upload size bound
        var big = await op.PostAsync("/api/submit", new StringContent("kind: selftest\n#" + new string('x', 2 << 20), Encoding.UTF8, "application/yaml"));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, big.StatusCode);

        Assert.Equal(before, (await Json(await op.GetAsync("/api/runs?limit=2000"))).GetArrayLength());

        // and a good one from jobs/ with an override is queued
        var ok = await op.PostAsJsonAsync("/api/submit", new { file = "selftest.yaml", overrides = new[] { "n=7" } });
        Assert.Equal(HttpStatusCode.Created, ok.StatusCode);
        var id = (await Json(ok)).GetProperty("runs")[0].GetProperty("run_id").GetInt64();
        var run = await Json(await op.GetAsync($"/api/runs/{id}"));
        Assert.Equal(7, run.GetProperty("parameters").GetProperty("n").GetInt32());
        Assert.Equal("engine", run.GetProperty("experiment").GetString());
    }

    /// <summary>
    /// Issue 14: an operator read /etc/passwd (and the quickstart admin password) through extract-dataset's val_labels
    /// and failure reasons, and the server's images through source. Paths outside the data roots are a 400 naming the
    /// parameter now; params_from cannot reach hidden folders such as .state.
    /// </summary>
    [Fact]
    public async Task Operator_cannot_submit_paths_outside_the_data_roots_or_params_from_into_state()
    {
        using var op = f.Client(UserRole.Operator);
        var before = (await Json(await op.GetAsync("/api/runs?limit=2000"))).GetArrayLength();
        async Task<List<string>> Refused(string yaml)
        {
            var r = await op.PostAsync("/api/submit", new StringContent(yaml, Encoding.UTF8, "application/yaml"));
            var body = await r.Content.ReadAsStringAsync();
            Assert.True(r.StatusCode == HttpStatusCode.BadRequest, $"{(int)r.StatusCode}: {body}");
            Assert.DoesNotContain("root:x:", body);
            return (await Json(r)).GetProperty("errors").EnumerateArray().Select(e => e.GetString()!).ToList();
        }
        Assert.StartsWith("params.val_labels: /etc/passwd is outside the data roots",
            Assert.Single(await Refused($"kind: extract-dataset\nparams: {{source: {f.JobsDir}, val_labels: /etc/passwd}}\n")));
        Assert.StartsWith("params.source: /usr/share/pixmaps is outside the data roots",
            Assert.Single(await Refused("kind: extract-dataset\nparams: {source: /usr/share/pixmaps}\n")));

        // A state folder inside the spec root (as .state sits in the checkout): a YAML there is not reachable either.
        var home = Directory.CreateDirectory(Path.Combine(Path.GetDirectoryName(f.JobsDir)!, $"retok-checkout-{Guid.NewGuid():N}", ".state", "quickstart")).FullName;
        File.WriteAllText(Path.Combine(home, "admin-password.txt"), "hunter2");
        File.WriteAllText(Path.Combine(home, "secrets.yaml"), "n: 3\n");
        var rel = Path.GetRelativePath(f.JobsDir, home);
        Assert.Contains("hidden folders", Assert.Single(await Refused($"kind: selftest\nparams_from: {rel}/secrets.yaml\n")));
        Assert.Contains(".yaml", Assert.Single(await Refused($"kind: selftest\nparams_from: {rel}/admin-password.txt\n")));
        Assert.Equal(before, (await Json(await op.GetAsync("/api/runs?limit=2000"))).GetArrayLength());
    }

    [Fact]
    public async Task Artifact_download_carries_the_hash_and_path_traversal_is_refused()
    {
        using var c = f.Client(UserRole.Viewer);
        var list = await Json(await c.GetAsync($"/api/runs/{f.TokRun}/artifacts"));
        var grid = list.EnumerateArray().Single(a => a.GetProperty("name").GetString() == "samples/grid.png");
        Assert.Equal(f.GridPng.Length, grid.GetProperty("size_bytes").GetInt64());

        var r = await c.GetAsync(grid.GetProperty("download_url").GetString());
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var bytes = await r.Content.ReadAsByteArrayAsync();
        var sha = Convert.ToHexStringLower(SHA256.HashData(bytes));
        Assert.Equal(f.GridPng, bytes);
        Assert.Equal(sha, r.Headers.GetValues("X-Checksum-Sha256").Single());
        Assert.Equal(f.Grid.Sha256, sha);
        Assert.Equal($"sha-256=:{Convert.ToBase64String(SHA256.HashData(bytes))}:", r.Headers.GetValues("Repr-Digest").Single());
        Assert.Equal("image/png", r.Content.Headers.ContentType!.MediaType);
        Assert.StartsWith("attachment", r.Content.Headers.ContentDisposition!.ToString());
        Assert.StartsWith("inline", (await c.GetAsync($"/api/runs/{f.TokRun}/artifacts/samples/grid.png?inline=true")).Content.Headers.ContentDisposition!.ToString());

        // an HTML artifact never goes out as HTML
        var html = await c.GetAsync($"/api/runs/{f.TokRun}/artifacts/notes.html?inline=true");
        Assert.Equal("application/octet-stream", html.Content.Headers.ContentType!.MediaType);
        Assert.StartsWith("attachment", html.Content.Headers.ContentDisposition!.ToString());

        // traversal: encoded dot segments and slashes reach the handler unnormalised and are refused
        foreach (var raw in new[] { "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd", "samples/..%2F..%2Fresult.json", "%2Fetc%2Fpasswd" })
        {
            var uri = new Uri($"{f.BaseUrl}/api/runs/{f.TokRun}/artifacts/{raw}", new UriCreationOptions { DangerousDisablePathAndQueryCanonicalization = true });
            var res = await c.SendAsync(new HttpRequestMessage(HttpMethod.Get, uri));
            Assert.True(res.StatusCode is HttpStatusCode.BadRequest or HttpStatusCode.NotFound, $"{raw}: {res.StatusCode}");
            Assert.DoesNotContain("root:", await res.Content.ReadAsStringAsync());
        }
        // the store's own object key is not a name: lookups go through the database only
        var key = f.Grid.StorageUri["file:///".Length..];
        Assert.Equal(HttpStatusCode.NotFound, (await c.GetAsync($"/api/runs/{f.TokRun}/artifacts/{key}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await c.GetAsync($"/api/runs/{f.RecRun}/artifacts/samples/grid.png")).StatusCode);
    }

    [Fact]
    public async Task Cookie_login_pages_and_csrf_on_cookie_writes()
    {
        using var bad = f.Client(cookies: true);
        var form = await bad.GetStringAsync("/login");
        var wrong = await bad.PostAsync("/login", new FormUrlEncodedContent(new Dictionary<string, string>
            { ["__RequestVerificationToken"] = DashboardFixture.CsrfToken(form), ["user"] = "operator", ["password"] = "wrong-password" }));
        Assert.StartsWith("/login?error=1", wrong.Headers.Location!.OriginalString);
        var noCsrf = await bad.PostAsync("/login", new FormUrlEncodedContent(new Dictionary<string, string> { ["user"] = "operator", ["password"] = DashboardFixture.Password }));
        Assert.Equal(HttpStatusCode.BadRequest, noCsrf.StatusCode);

        using var c = await f.LoginAsync("operator");
        var runs = await c.GetStringAsync("/runs");
        Assert.Contains($"href=\"/runs/{f.TokRun}\"", runs);
        var page = await c.GetStringAsync($"/runs/{f.TokRun}");
        Assert.Contains("<polyline class=\"curve\"", page);
        Assert.Contains($"/runs/{f.TokRun}/artifacts/samples/grid.png?inline=true", page);
        Assert.Contains("optim:", page);            // parameters as YAML
        Assert.Contains("loss spike at step 120", page);
        var failed = await c.GetStringAsync($"/runs/{f.FailedRun}");
        Assert.Contains("loss became NaN at step 290", failed);
        var rec = await c.GetStringAsync($"/runs/{f.RecRun}");
        Assert.Contains($"href=\"/runs/{f.TokRun}\"", rec); // lineage: producing run linked

        // a cookie-authenticated API write needs the CSRF header
        var sub = await f.Client(UserRole.Operator).PostAsync("/api/submit", new StringContent("kind: selftest\nparams: {n: 3}\n", Encoding.UTF8, "application/yaml"));
        var id = (await Json(sub)).GetProperty("runs")[0].GetProperty("run_id").GetInt64();
        Assert.Equal(HttpStatusCode.BadRequest, (await c.PostAsync($"/api/runs/{id}/cancel", null)).StatusCode);
        var token = (await Json(await c.GetAsync("/api/csrf"))).GetProperty("token").GetString();
        var req = new HttpRequestMessage(HttpMethod.Post, $"/api/runs/{id}/cancel");
        req.Headers.Add("X-CSRF-TOKEN", token);
        Assert.Equal(HttpStatusCode.OK, (await c.SendAsync(req)).StatusCode);

        // viewer cookie: an operator form post is forbidden
        using var v = await f.LoginAsync("viewer");
        var vpage = await v.GetStringAsync($"/runs/{f.TokRun}");
        Assert.DoesNotContain("Cancel run", vpage);
        var post = await v.PostAsync($"/runs/{f.TokRun}/cancel", new FormUrlEncodedContent(new Dictionary<string, string> { ["__RequestVerificationToken"] = DashboardFixture.CsrfToken(vpage) }));
        Assert.StartsWith("/forbidden", post.Headers.Location!.AbsolutePath);
        Assert.StartsWith("/forbidden", (await v.GetAsync("/submit")).Headers.Location!.AbsolutePath);

        // Hangfire dashboard: behind the same login
        var hf = await c.GetAsync("/hangfire");
        Assert.Equal(HttpStatusCode.OK, hf.StatusCode);
        Assert.Contains("Hangfire", await hf.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Results_table_follows_the_metric_key_convention_and_lineage()
    {
        using var c = f.Client(UserRole.Viewer);
        var rows = (await Json(await c.GetAsync("/api/experiments/paper/results"))).EnumerateArray().ToList();
        var gen = rows.Single(r => r.GetProperty("generator").ValueKind == JsonValueKind.String);
        Assert.Equal("ReTok-S-B", gen.GetProperty("tokenizer").GetString());
        Assert.Equal("LlamaGen-L", gen.GetProperty("generator").GetString());
        Assert.Equal(256, gen.GetProperty("tokens").GetInt32());
        Assert.Equal(2.66, gen.GetProperty("g_fid").GetProperty("value").GetDouble(), 9);   // best over variants (CFG)
        Assert.Equal("cfg=1.5", gen.GetProperty("variant").GetString());
        Assert.Equal(231.7, gen.GetProperty("is").GetProperty("value").GetDouble(), 9);      // IS of the same variant
        Assert.Equal(0.57, gen.GetProperty("recall").GetProperty("value").GetDouble(), 9);
        Assert.Equal(1.01, gen.GetProperty("r_fid").GetProperty("value").GetDouble(), 9);    // last step, via lineage of rec-eval
        Assert.Equal(f.RecRun, gen.GetProperty("r_fid").GetProperty("run_id").GetInt64());
        var k32 = rows.Single(r => r.GetProperty("tokens").GetInt32() == 32);
        Assert.Equal(2.5, k32.GetProperty("r_fid").GetProperty("value").GetDouble(), 9);
        Assert.Equal(JsonValueKind.Null, k32.GetProperty("g_fid").ValueKind);

        var cmp = await Json(await c.GetAsync($"/api/compare?ids={f.TokRun},{f.FailedRun}"));
        var diff = cmp.GetProperty("params").EnumerateArray().Where(p => p.GetProperty("differs").GetBoolean()).Select(p => p.GetProperty("key").GetString()).ToList();
        Assert.Equal(new[] { "n", "optim.lr" }, diff);
        var loss = cmp.GetProperty("metrics").EnumerateArray().Single(m => m.GetProperty("key").GetString() == "train/loss");
        Assert.Equal(2.0 / (1 + 0.2 * 49), loss.GetProperty("values")[0].GetDouble(), 9);
        Assert.Equal(2.5 / (1 + 0.1 * 29), loss.GetProperty("values")[1].GetDouble(), 9);
    }

    [Fact]
    public async Task Lineage_logs_metrics_workers_and_openapi_are_served()
    {
        using var c = f.Client(UserRole.Viewer);
        var lin = await Json(await c.GetAsync($"/api/runs/{f.RecRun}/lineage"));
        var input = lin.GetProperty("inputs")[0];
        Assert.Equal("tokenizer", input.GetProperty("role").GetString());
        Assert.Equal(f.TokRun, input.GetProperty("producer").GetProperty("id").GetInt64());
        var outLin = await Json(await c.GetAsync($"/api/runs/{f.TokRun}/lineage"));
        Assert.Equal(f.RecRun, outLin.GetProperty("outputs")[0].GetProperty("consumed_by")[0].GetProperty("run").GetProperty("id").GetInt64());

        var logs = (await Json(await c.GetAsync($"/api/runs/{f.TokRun}/logs?tail=2"))).EnumerateArray().Select(l => l.GetProperty("message").GetString()).ToList();
        Assert.Equal(new[] { "loss spike at step 120", "done" }, logs);
        var metrics = await Json(await c.GetAsync($"/api/runs/{f.TokRun}/metrics?key=train/loss"));
        Assert.Equal(50, metrics.GetProperty("train/loss").GetArrayLength());
        var filtered = (await Json(await c.GetAsync("/api/runs?tag=eval"))).EnumerateArray().Select(r => r.GetProperty("id").GetInt64()).ToList();
        Assert.Equal(new[] { f.RecRun }, filtered);
        Assert.Contains(f.FailedRun, (await Json(await c.GetAsync("/api/runs?status=Failed&experiment=paper"))).EnumerateArray().Select(r => r.GetProperty("id").GetInt64()));

        await using (var cmd = f.Tracker.DataSource.CreateCommand(
            "INSERT INTO retok.workers (id, host, queues, devices, slots, started_at, last_heartbeat) VALUES ('gpu-box-1', 'gpu-box', 'gpu', 'cuda:0,cuda:1', @s::jsonb, now(), now())"))
        {
            cmd.Parameters.AddWithValue("s", $"{{\"cuda:0\": {f.TokRun}, \"cuda:1\": null}}");
            await cmd.ExecuteNonQueryAsync();
        }
        var w = (await Json(await c.GetAsync("/api/workers"))).EnumerateArray().Single(x => x.GetProperty("id").GetString() == "gpu-box-1");
        Assert.Equal(f.TokRun, w.GetProperty("slots")[0].GetProperty("run").GetProperty("id").GetInt64());
        Assert.Equal(JsonValueKind.Null, w.GetProperty("slots")[1].GetProperty("run").ValueKind);
        Assert.False(w.GetProperty("stale").GetBoolean());

        var api = await c.GetStringAsync("/openapi/v1.json");
        Assert.Contains("/api/runs/{id}/cancel", api);
        Assert.Contains("/api/submit", api);
    }

    [Fact]
    public async Task Refuses_a_non_loopback_address_until_an_admin_exists()
    {
        Assert.True(DashboardOptions.IsLoopback("http://127.0.0.1:5080"));
        Assert.True(DashboardOptions.IsLoopback("http://localhost:5080"));
        Assert.True(DashboardOptions.IsLoopback("http://[::1]:5080"));
        Assert.False(DashboardOptions.IsLoopback("http://0.0.0.0:5080"));
        Assert.False(DashboardOptions.IsLoopback("http://*:5080"));
        Assert.False(DashboardOptions.IsLoopback("http://+:5080"));
        Assert.False(DashboardOptions.IsLoopback("http://10.1.2.3:5080"));

        // the fixture's database has viewer and operator users; take the admin away for a moment
        Assert.True(await f.Users.DisableAsync("admin"));
        try
        {
            var o = new DashboardOptions { Engine = new EngineOptions { Db = f.Db.ConnectionString, Artifacts = f.Db.ArtifactRoot }, Urls = ["http://127.0.0.1:0", "http://0.0.0.0:0"] };
            var ex = await Assert.ThrowsAsync<DashboardConfigException>(() => DashboardServer.StartAsync(o));
            Assert.Contains("retok users add", ex.Message);
            Assert.Contains("0.0.0.0", ex.Message);
            Assert.DoesNotContain("127.0.0.1:0", ex.Message.Split("--urls")[0]);
        }
        finally { await f.Users.AddAsync("admin", DashboardFixture.Password, UserRole.Admin, update: true); }
    }
}

using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using ReTok.Tests.Dashboard;
using ReTok.Tests.Infra;
using ReTok.Tracking;

namespace ReTok.Tests.Webhooks;

/// <summary>Issue 19.4 through the API, the experiment page and the CLI: operators only, bad URLs named, URLs always masked.</summary>
public sealed class WebhookApiTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    const string Secret = "https://hooks.slack.com/services/T0AAA/B0BBB/xoxbSECRETtoken42";

    [Fact]
    public async Task Operators_add_list_and_remove_webhooks_viewers_cannot_and_urls_are_masked_everywhere()
    {
        using var viewer = f.Client(UserRole.Viewer);
        using var op = f.Client(UserRole.Operator);
        var forbidden = await viewer.PostAsJsonAsync("/api/experiments/paper/webhooks", new { url = Secret });
        Assert.Equal(HttpStatusCode.Forbidden, forbidden.StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await f.Client().GetAsync("/api/experiments/paper/webhooks")).StatusCode);

        var bad = await op.PostAsJsonAsync("/api/experiments/paper/webhooks", new { url = "ftp://files.example/drop" });
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("url: scheme 'ftp' is not allowed (http or https only)", await bad.Content.ReadAsStringAsync());
        var badEvent = await op.PostAsJsonAsync("/api/experiments/paper/webhooks", new { url = Secret, events = new[] { "run.exploded" } });
        Assert.Equal(HttpStatusCode.BadRequest, badEvent.StatusCode);
        Assert.Contains("events: unknown event 'run.exploded'", await badEvent.Content.ReadAsStringAsync());
        var relative = await op.PostAsJsonAsync("/api/experiments/paper/webhooks", new { url = "hooks/abc" });
        Assert.Contains("url: expected an absolute http:// or https:// URL", await relative.Content.ReadAsStringAsync());

        var created = await op.PostAsJsonAsync("/api/experiments/paper/webhooks", new { url = Secret, events = new[] { "run.failed" }, name = "#paper" });
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        var body = await created.Content.ReadAsStringAsync();
        Assert.DoesNotContain("xoxbSECRET", body);
        var id = JsonDocument.Parse(body).RootElement.GetProperty("id").GetInt64();
        Assert.Equal("https://hooks.slack.com/…/en42", JsonDocument.Parse(body).RootElement.GetProperty("url_masked").GetString());

        var list = await viewer.GetStringAsync("/api/experiments/paper/webhooks");
        var hook = JsonDocument.Parse(list).RootElement.EnumerateArray().Single(h => h.GetProperty("id").GetInt64() == id);
        Assert.Equal("https://hooks.slack.com/…/en42", hook.GetProperty("url_masked").GetString());
        Assert.Equal("run.failed", hook.GetProperty("events").EnumerateArray().Single().GetString());
        Assert.Equal("operator", hook.GetProperty("created_by").GetString());
        Assert.DoesNotContain("xoxbSECRET", list);
        var test = await op.PostAsync($"/api/experiments/paper/webhooks/{id}/test", null);
        Assert.Equal(HttpStatusCode.Accepted, test.StatusCode);
        var deliveries = await viewer.GetStringAsync("/api/experiments/paper/webhooks/deliveries");
        Assert.Contains("\"event\":\"webhook.test\"", deliveries);
        Assert.DoesNotContain("xoxbSECRET", deliveries);
        var page = await viewer.GetStringAsync("/experiments/paper");
        Assert.Contains("id=\"notifications\"", page);
        Assert.Contains("https://hooks.slack.com/…/en42", page);
        Assert.DoesNotContain("xoxbSECRET", page);

        Assert.Equal(HttpStatusCode.Forbidden, (await viewer.DeleteAsync($"/api/experiments/paper/webhooks/{id}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await op.DeleteAsync($"/api/experiments/nope/webhooks/{id}")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await op.DeleteAsync($"/api/experiments/paper/webhooks/{id}")).StatusCode);
        Assert.DoesNotContain($"\"id\":{id},", await viewer.GetStringAsync("/api/experiments/paper/webhooks"));
        Assert.Equal(HttpStatusCode.NotFound, (await viewer.GetAsync("/api/experiments/no-such-exp/webhooks")).StatusCode);
    }

    [Fact]
    public async Task The_dashboards_own_dispatcher_sends_a_test_message_queued_through_the_api()
    {
        await using var rx = await WebhookReceiver.StartAsync();
        using var op = f.Client(UserRole.Operator);
        var created = await op.PostAsJsonAsync("/api/experiments/dash-hooks/webhooks", new { url = rx.Url("dash-token") });
        var id = JsonDocument.Parse(await created.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetInt64();
        Assert.Equal(HttpStatusCode.Accepted, (await op.PostAsync($"/api/experiments/dash-hooks/webhooks/{id}/test", null)).StatusCode);
        var end = DateTime.UtcNow.AddSeconds(30);   // the dashboard polls every RETOK_WEBHOOK_POLL_MS (5 s)
        while (rx.For("dash-token").Count == 0 && DateTime.UtcNow < end) await Task.Delay(100);
        var hit = Assert.Single(rx.For("dash-token"));
        Assert.Equal("webhook.test", hit.Event);
        var rows = JsonDocument.Parse(await op.GetStringAsync("/api/experiments/dash-hooks/webhooks/deliveries")).RootElement;
        var end2 = DateTime.UtcNow.AddSeconds(10);
        while (rows[0].GetProperty("status").GetString() != "Delivered" && DateTime.UtcNow < end2)
        {
            await Task.Delay(100);
            rows = JsonDocument.Parse(await op.GetStringAsync("/api/experiments/dash-hooks/webhooks/deliveries")).RootElement;
        }
        Assert.Equal(("Delivered", 1, 200), (rows[0].GetProperty("status").GetString(), rows[0].GetProperty("attempts").GetInt32(), rows[0].GetProperty("last_status").GetInt32()));
        var metrics = await f.Client(UserRole.Viewer).GetStringAsync("/metrics");
        var delivered = metrics.Split('\n').Single(l => l.StartsWith("retok_webhook_deliveries{") && l.Contains("status=\"delivered\""));
        Assert.True(double.Parse(delivered[(delivered.LastIndexOf('}') + 1)..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) >= 1, delivered);
        Assert.Contains("# HELP retok_webhook_oldest_pending_seconds", metrics);
    }

    [Fact]
    public async Task The_cli_adds_lists_tests_and_removes_with_the_url_masked_and_refuses_bad_urls_naming_the_field()
    {
        await using var rx = await WebhookReceiver.StartAsync();
        var url = rx.Url("cli-secret-token");
        var exp = "cli-hooks";
        async Task<(int Code, string Out)> Cli(params string[] args)
        {
            using var p = new Proc("dotnet", [Path.Combine(AppContext.BaseDirectory, "retok.dll"), "webhooks", .. args, "--db", f.Db.ConnectionString],
                new Dictionary<string, string?> { ["RETOK_DASHBOARD_URL"] = "https://retok.lab.example", ["RETOK_AUTO_MIGRATE"] = "0" });
            var code = await p.WaitAsync(TimeSpan.FromSeconds(90));
            return (code, p.Stdout + p.Stderr);
        }
        var bad = await Cli("add", exp, "gopher://x.example/a");
        Assert.Equal(2, bad.Code);
        Assert.Contains("url: scheme 'gopher' is not allowed (http or https only)", bad.Out);

        var add = await Cli("add", exp, url, "--events", "run.failed,pipeline.finished", "--name", "cli");
        Assert.Equal(0, add.Code);
        Assert.Contains($"{rx.BaseUrl}/…/oken (run.failed, pipeline.finished)", add.Out);
        var id = (await f.Tracker.Webhooks.ListAsync(exp))!.Single().Id;

        var test = await Cli("test", exp, id.ToString());
        Assert.Equal(0, test.Code);
        Assert.Contains("delivered (HTTP 200)", test.Out);
        var hit = Assert.Single(rx.For("cli-secret-token"));
        Assert.Equal("webhook.test", hit.Json.GetProperty("event").GetString());
        Assert.NotNull(hit.IdempotencyKey);

        var list = await Cli("list", exp);
        Assert.Equal(0, list.Code);
        Assert.Contains("webhook.test", list.Out);
        Assert.Contains("Delivered", list.Out);
        foreach (var o in new[] { add.Out, test.Out, list.Out }) Assert.DoesNotContain("cli-secret-token", o);

        Assert.Equal(0, (await Cli("remove", exp, id.ToString())).Code);
        Assert.Equal(1, (await Cli("remove", exp, id.ToString())).Code);
    }
}

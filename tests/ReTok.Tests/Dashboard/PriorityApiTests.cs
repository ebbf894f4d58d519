using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>Issue 19.5 through the API and pages: set a queued run's priority; viewers cannot; started runs refuse.</summary>
public sealed class PriorityApiTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    [Fact]
    public async Task Operators_change_a_queued_runs_priority_and_the_runs_page_shows_it()
    {
        using var op = f.Client(UserRole.Operator);
        var sub = await op.PostAsync("/api/submit", new StringContent("kind: selftest\nname: to-promote\npriority: low\nparams: {n: 3}\n", Encoding.UTF8, "application/yaml"));
        using var doc = JsonDocument.Parse(await sub.Content.ReadAsStringAsync());
        var id = doc.RootElement.GetProperty("runs")[0].GetProperty("run_id").GetInt64();
        Assert.Equal(RunPriority.Low, (await f.Tracker.Runs.GetAsync(id))!.Priority);

        using var viewer = f.Client(UserRole.Viewer);
        Assert.Equal(HttpStatusCode.Forbidden, (await viewer.PostAsJsonAsync($"/api/runs/{id}/priority", new { priority = "high" })).StatusCode);
        var bad = await op.PostAsJsonAsync($"/api/runs/{id}/priority", new { priority = "urgent" });
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("priority: expected high, normal or low, got 'urgent'", await bad.Content.ReadAsStringAsync());

        var ok = await op.PostAsJsonAsync($"/api/runs/{id}/priority", new { priority = "high" });
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        Assert.Equal(RunPriority.High, (await f.Tracker.Runs.GetAsync(id))!.Priority);
        Assert.Contains("<span class=\"prio prio-high\" title=\"priority\">high</span>", await viewer.GetStringAsync("/runs"));

        var done = await op.PostAsJsonAsync($"/api/runs/{f.TokRun}/priority", new { priority = "high" });
        Assert.Equal(HttpStatusCode.Conflict, done.StatusCode);
        Assert.Contains("only a Waiting or Queued run can change priority", await done.Content.ReadAsStringAsync());
    }
}

using System.Net;
using System.Text;
using System.Text.Json;
using ReTok.Jobs.Engine;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>
/// Regression tests of issue 14 (hardening), against a real Kestrel + PostgreSQL: each reproduces an attack or fault
/// that used to kill the process, leak, or let a request through.
/// </summary>
public sealed class DashboardHardeningTests(DashboardFixture f) : IClassFixture<DashboardFixture>
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
}

using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using ReTok.Dashboard.Auth;
using ReTok.Engine;
using ReTok.Tests.Infra;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>
/// Issue 16.6: "the engine knows no models" is a project boundary the compiler enforces, and the dashboard host, which
/// validates specs of every kind, never loads TorchSharp (libtorch is hundreds of MB and needs a matching glibc).
/// </summary>
public sealed class ProjectBoundaryTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    static readonly string[] ModelAssemblies = ["TorchSharp", "ReTok.Models", "ReTok.Evaluation", "ReTok.Jobs"];

    /// <summary>Every assembly <paramref name="root"/> references, following our own (ReTok.*) assemblies transitively.</summary>
    static HashSet<string> References(Assembly root)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<Assembly>([root]);
        while (pending.TryPop(out var a))
            foreach (var r in a.GetReferencedAssemblies())
                if (seen.Add(r.Name!) && r.Name!.StartsWith("ReTok.", StringComparison.Ordinal)) pending.Push(Assembly.Load(r));
        return seen;
    }

    [Theory]
    [InlineData(typeof(JobClient))]
    [InlineData(typeof(ReTok.Tracking.Tracker))]
    [InlineData(typeof(ReTok.Config.ConfigBinder))]
    [InlineData(typeof(ReTok.Dashboard.DashboardServer))]
    public void The_engine_tracking_config_and_dashboard_reference_no_model_assembly(Type type)
    {
        var refs = References(type.Assembly);
        Assert.Empty(ModelAssemblies.Intersect(refs));
    }

    [Fact]
    public void The_reference_walk_sees_TorchSharp_where_it_is()
    {
        // the kinds reach TorchSharp only through ReTok.Models: proves the walk follows our assemblies
        Assert.Contains("TorchSharp", References(typeof(ReTok.Jobs.JobKinds).Assembly));
        Assert.Contains("ReTok.Engine", References(typeof(ReTok.Jobs.JobKinds).Assembly));
    }

    [Fact]
    public void The_kinds_scan_by_metadata_finds_what_reflection_finds()
    {
        var all = typeof(ReTok.Jobs.JobKinds).Assembly.GetTypes().Select(t => t.GetCustomAttribute<JobKindAttribute>()?.Name).OfType<string>().Order();
        // plus the NAME-aggregate kind the registry derives for each fan-out kind (IFanOutJob)
        Assert.Equal(all, ReTok.Jobs.JobKinds.All.All.Where(k => k.AggregateOf is null).Select(k => k.Name));
    }

    [Fact]
    public void Hangfire_jobs_enqueued_before_the_move_find_the_executor()
    {
        _ = new EngineOptions { Db = db.ConnectionString, Artifacts = db.ArtifactRoot }.CreateStorage();
        Assert.Equal(typeof(RunExecutor), Hangfire.Common.TypeHelper.CurrentTypeResolver("ReTok.Jobs.Engine.RunExecutor, ReTok.Jobs"));
        Assert.Equal(typeof(RunExecutor), Hangfire.Common.TypeHelper.CurrentTypeResolver(typeof(RunExecutor).FullName + ", ReTok.Engine"));
    }

    /// <summary>
    /// A real `retok dashboard` process serves pages and the API and validates specs of model kinds (binding their model
    /// configs); then its memory map must hold no TorchSharp assembly or libtorch library. Assemblies are mapped
    /// files on Linux, so the same check sees ReTok.Dashboard.dll and, in a worker that ran a model kind, TorchSharp.dll.
    /// </summary>
    [Fact]
    public async Task The_dashboard_process_serves_and_validates_without_loading_TorchSharp()
    {
        if (!OperatingSystem.IsLinux()) return;
        var users = new UserStore(db.ConnectionString);
        await users.AddAsync("boundary", "correct-horse-1", UserRole.Operator);
        var token = (await users.CreateTokenAsync("boundary", "tests")).Token;
        var port = FreePort();
        var jobs = RepoPaths.File("jobs");
        using var p = new Proc("dotnet", [Path.Combine(AppContext.BaseDirectory, "retok.dll"), "dashboard", "--urls", $"http://127.0.0.1:{port}", "--jobs", jobs],
            new Dictionary<string, string?>
            {
                ["RETOK_DB"] = db.ConnectionString, ["RETOK_ARTIFACTS"] = db.ArtifactRoot,
                ["RETOK_HOME"] = Directory.CreateTempSubdirectory("retok-boundary").FullName,
            }, cwd: Directory.GetCurrentDirectory()); // disposing it kills the dashboard
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        var ready = Stopwatch.StartNew();
        while (true)
        {
            Assert.False(p.HasExited, $"retok dashboard exited:\n{p.Output}");
            try { if ((await http.GetAsync("/login")).StatusCode == HttpStatusCode.OK) break; }
            catch (HttpRequestException) when (ready.Elapsed < TimeSpan.FromSeconds(90)) { }
            await Task.Delay(200);
        }
        Assert.Contains("<form", await http.GetStringAsync("/login"));
        Assert.Contains("train-tokenizer", await http.GetStringAsync("/api/kinds"));
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/api/runs")).StatusCode);
        foreach (var spec in new[] { "retok-tiny.yaml", "gen-tiny.yaml", "gfid-cfg-search-tiny.yaml", "eval-recon-tiny.yaml" })
        {
            // a typo at the end: the whole spec, model configs included, is bound before the errors are reported
            var yaml = await File.ReadAllTextAsync(Path.Combine(jobs, spec)) + "\nnot_a_key: 1\n";
            var r = await http.PostAsync("/api/submit", new StringContent(yaml, Encoding.UTF8, "application/yaml"));
            var body = await r.Content.ReadAsStringAsync();
            Assert.True(r.StatusCode == HttpStatusCode.BadRequest && body.Contains("not_a_key"), $"{spec}: {(int)r.StatusCode} {body}");
        }
        var maps = await File.ReadAllTextAsync($"/proc/{p.Pid}/maps");
        Assert.Contains("ReTok.Dashboard.dll", maps);
        Assert.Contains("ReTok.Jobs.dll", maps);   // the kinds' params records were bound
        Assert.DoesNotContain("TorchSharp", maps);
        Assert.DoesNotContain("libtorch", maps);
    }

    static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

}

/// <summary>Issue 16.6: ReTok.Models' namespaces import each other without a circle (Layers and IO below the models).</summary>
public sealed class ModelNamespaceTests
{
    [Fact]
    public void Model_namespaces_form_no_import_circle()
    {
        var src = RepoPaths.File("src", "ReTok.Models");
        const string Ns = "ReTok.Models";
        var edges = new Dictionary<string, HashSet<string>>();
        foreach (var file in Directory.EnumerateFiles(src, "*.cs", SearchOption.AllDirectories).Where(f => !f.Contains("/obj/") && !f.Contains("/bin/")))
        {
            var text = File.ReadAllText(file);
            var ns = Regex.Match(text, @"^namespace ([\w.]+);", RegexOptions.Multiline).Groups[1].Value;
            var targets = edges.TryGetValue(ns, out var t) ? t : edges[ns] = [];
            // `using ReTok.Models.X;`, `ReTok.Models.X.Type` and, inside ReTok.Models.*, the sibling-relative `X.Type`
            foreach (Match m in Regex.Matches(text, @"\bReTok\.Models\.([A-Z]\w*)\b(?=;|\.[A-Z])"))
                targets.Add($"{Ns}.{m.Groups[1].Value}");
            foreach (var sibling in Directory.EnumerateDirectories(src).Select(Path.GetFileName).Where(d => d is not ("bin" or "obj")))
                if (Regex.IsMatch(text, $@"(?<![\w.]){sibling}\.[A-Z]\w*")) targets.Add($"{Ns}.{sibling}");
            targets.Remove(ns);
            // a sub-namespace sees the root's types implicitly
            if (ns != Ns) targets.Add(Ns);
        }
        Assert.True(edges.ContainsKey($"{Ns}.Layers"), "the walk found the Layers namespace");
        foreach (var (a, bs) in edges)
            foreach (var b in bs)
                Assert.False(Reaches(b, a, edges, []), $"{a} -> {b} closes an import circle");
    }

    static bool Reaches(string from, string to, Dictionary<string, HashSet<string>> edges, HashSet<string> seen) =>
        from == to || seen.Add(from) && edges.TryGetValue(from, out var next) && next.Any(n => Reaches(n, to, edges, seen));
}

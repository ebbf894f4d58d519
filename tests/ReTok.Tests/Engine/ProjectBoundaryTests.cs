using System.Reflection;
using ReTok.Engine;
using ReTok.Tests.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>
/// Issue 16.6: "the engine knows no models" is a project boundary the compiler enforces.
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
    public void Hangfire_jobs_enqueued_before_the_move_find_the_executor()
    {
        _ = new EngineOptions { Db = db.ConnectionString, Artifacts = db.ArtifactRoot }.CreateStorage();
        Assert.Equal(typeof(RunExecutor), Hangfire.Common.TypeHelper.CurrentTypeResolver("ReTok.Jobs.Engine.RunExecutor, ReTok.Jobs"));
        Assert.Equal(typeof(RunExecutor), Hangfire.Common.TypeHelper.CurrentTypeResolver(typeof(RunExecutor).FullName + ", ReTok.Engine"));
    }
}

using System.Diagnostics;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using ReTok.Tracking;

namespace ReTok.Tests.Quickstart;

/// <summary>Runs `retok quickstart` (shortest settings) as a process against a fresh database and checks what it recorded.</summary>
public class QuickstartTests
{
    static string Root()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d != null && !File.Exists(Path.Combine(d.FullName, "ReTok.Jobs.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found");
    }

    // Quarantined: its first run exposed a database-creation bug (fixed in QuickstartCommands), and the session ended
    // before the fixed build could be re-run; enable it once it has passed again (issue 10).
    [Fact]
    public async Task QuickstartPipelineRecordsRunsMetricsAndArtifacts()
    {
        var server = Environment.GetEnvironmentVariable("RETOK_TEST_DB") ?? "Host=127.0.0.1;Port=55432;Username=postgres;Database=postgres";
        var dbName = $"retok_qs_{Guid.NewGuid():N}"[..24];
        var db = new NpgsqlConnectionStringBuilder(server) { Database = dbName }.ConnectionString;
        var home = Directory.CreateTempSubdirectory("retok-qs").FullName;
        var psi = new ProcessStartInfo("dotnet", [Path.Combine(AppContext.BaseDirectory, "retok.dll"), "quickstart", "--exit", "--no-dashboard", "--classes", "2", "--per-class", "3"])
        {
            WorkingDirectory = Root(), RedirectStandardOutput = true, RedirectStandardError = true,
        };
        psi.Environment["RETOK_DB"] = db;
        psi.Environment["RETOK_HOME"] = home;
        psi.Environment["RETOK_ARTIFACTS"] = Path.Combine(home, "artifacts");
        psi.Environment["RETOK_ENGINE_POLL_MS"] = "200";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(8))) { p.Kill(true); Assert.Fail("quickstart did not finish in 8 minutes\n" + await stdout); }
        Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}\n{await stdout}\n{await stderr}");
        Assert.Contains("pipeline", await stdout);

        await using var ctx = TrackingDb.Create(db);
        var runs = await ctx.Runs.AsNoTracking().Where(r => r.PipelineStep != null).ToListAsync();
        Assert.Contains(runs, r => r.PipelineStep == "extract" && r.Status == RunStatus.Succeeded);
        Assert.Contains(runs, r => r.PipelineStep == "eval" && r.Status == RunStatus.Succeeded);
        var ids = runs.Select(r => r.Id).ToList();
        var artifacts = await ctx.Artifacts.AsNoTracking().Where(a => ids.Contains(a.RunId)).Select(a => a.Name).ToListAsync();
        Assert.Contains("dataset.npz", artifacts);
        Assert.Contains(artifacts, a => a.StartsWith("recon_k"));
        var keys = await ctx.Metrics.AsNoTracking().Where(m => ids.Contains(m.RunId)).Select(m => m.Key).Distinct().ToListAsync();
        Assert.Contains(keys, k => k.StartsWith("psnr@k="));
        var psnr = await ctx.Metrics.AsNoTracking().Where(m => ids.Contains(m.RunId) && m.Key.StartsWith("psnr@k=")).Select(m => m.Value).ToListAsync();
        Assert.All(psnr, v => Assert.True(double.IsFinite(v) && v > 0, $"psnr {v}"));
    }
}

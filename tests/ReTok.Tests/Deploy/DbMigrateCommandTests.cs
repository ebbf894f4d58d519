using System.Net;
using System.Net.Sockets;
using Npgsql;
using ReTok.Tests.Infra;
using ReTok.Tests.Tracking;

namespace ReTok.Tests.Deploy;

/// <summary>`retok db migrate` (the k8s migration Job, compose's migrate service): creates the database, takes the
/// migration lock the workers take, and answers server/permission problems with one line, not a stack trace.</summary>
public class DbMigrateCommandTests
{
    static Proc Migrate(string db) => new("dotnet", [Path.Combine(AppContext.BaseDirectory, "retok.dll"), "db", "migrate"],
        new Dictionary<string, string?> { ["RETOK_DB"] = db });

    static async Task SqlAsync(string sql, string? db = null)
    {
        await using var c = new NpgsqlConnection(TestServers.Postgres(db ?? "postgres"));
        await c.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, c);
        await cmd.ExecuteNonQueryAsync();
    }

    static void OneLine(Proc p)
    {
        Assert.DoesNotContain("   at ", p.Output);
        Assert.Single(p.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public async Task CreatesAMissingDatabaseAndWaitsForTheMigrationLock()
    {
        var name = $"retok_mig_{Guid.NewGuid():N}"[..24];
        try
        {
            using (var first = Migrate(TestServers.Postgres(name)))
            {
                Assert.True(await first.WaitAsync(TimeSpan.FromMinutes(2)) == 0, first.Output);
                Assert.Contains("applied", first.Stdout);
            }
            // hold the advisory lock of TrackingSchema.EnsureAsync (the workers' auto-migration) in that database
            await using var holder = new NpgsqlConnection(TestServers.Postgres(name));
            await holder.OpenAsync();
            await using (var l = new NpgsqlCommand("SELECT pg_advisory_lock(7212202601)", holder)) await l.ExecuteNonQueryAsync();
            using var second = Migrate(TestServers.Postgres(name));
            await Task.Delay(TimeSpan.FromSeconds(4));
            Assert.False(second.HasExited, "db migrate finished while another process held the migration lock\n" + second.Output);
            await using (var u = new NpgsqlCommand("SELECT pg_advisory_unlock(7212202601)", holder)) await u.ExecuteNonQueryAsync();
            Assert.True(await second.WaitAsync(TimeSpan.FromMinutes(1)) == 0, second.Output);
            Assert.Contains("database is up to date", second.Stdout);
        }
        finally
        {
            NpgsqlConnection.ClearAllPools();
            await SqlAsync($"DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        }
    }

    [Fact]
    public async Task UnreachableServerIsOneClearLine()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start(); var port = ((IPEndPoint)l.LocalEndpoint).Port; l.Stop();   // a port nobody listens on
        using var p = Migrate($"Host=127.0.0.1;Port={port};Username=postgres;Database=retok");
        Assert.Equal(3, await p.WaitAsync(TimeSpan.FromMinutes(1)));
        Assert.Contains($"cannot reach PostgreSQL at 127.0.0.1:{port}", p.Stderr);
        OneLine(p);
    }

    [Fact]
    public async Task RoleWithoutRightsIsOneClearLine()
    {
        var role = $"retok_weak_{Guid.NewGuid():N}"[..24];
        var missing = $"retok_mig_{Guid.NewGuid():N}"[..24];
        var existing = $"retok_mig_{Guid.NewGuid():N}"[..24];
        await SqlAsync($"CREATE ROLE {role} LOGIN NOCREATEDB");
        await SqlAsync($"CREATE DATABASE {existing}");   // owned by postgres: the role may connect but not create the schema
        try
        {
            var asRole = (string db) => new NpgsqlConnectionStringBuilder(TestServers.Postgres(db)) { Username = role, Password = null }.ConnectionString;
            using (var p = Migrate(asRole(missing)))
            {
                Assert.Equal(3, await p.WaitAsync(TimeSpan.FromMinutes(1)));
                Assert.Contains($"role '{role}'", p.Stderr);
                Assert.Contains("permission denied to create database", p.Stderr);
                OneLine(p);
            }
            using (var p = Migrate(asRole(existing)))
            {
                Assert.Equal(3, await p.WaitAsync(TimeSpan.FromMinutes(1)));
                Assert.Contains($"may not set up database '{existing}'", p.Stderr);
                Assert.Contains("permission denied", p.Stderr);
                OneLine(p);
            }
        }
        finally
        {
            NpgsqlConnection.ClearAllPools();
            await SqlAsync($"DROP DATABASE IF EXISTS {existing} WITH (FORCE)");
            await SqlAsync($"DROP DATABASE IF EXISTS {missing} WITH (FORCE)");
            await SqlAsync($"DROP ROLE IF EXISTS {role}");
        }
    }
}

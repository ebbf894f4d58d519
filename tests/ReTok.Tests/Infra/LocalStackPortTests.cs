using System.Net.Sockets;
using Azure.Storage.Blobs;
using Npgsql;

namespace ReTok.Tests.Infra;

/// <summary>
/// Two checkouts on one machine (issue 21): infra/pg.sh and infra/azurite.sh of a second state folder start their own
/// server beside the first one instead of failing on the default port. Each test starts two servers on temporary state
/// folders, without the RETOK_*_PORT overrides test.sh sets, so whichever starts second meets a taken default (held by
/// the first, or by another checkout already).
/// </summary>
public class LocalStackPortTests
{
    static readonly Dictionary<string, string?> NoPortOverrides = new() { ["RETOK_PG_PORT"] = null, ["RETOK_AZURITE_PORT"] = null };

    /// <summary>A state folder the 'postgres' user can traverse (CreateTempSubdirectory makes 0700 folders).</summary>
    static string StateFolder(string what)
    {
        var d = Path.Combine(Path.GetTempPath(), $"retok-{what}-{Guid.NewGuid():N}"[..28]);
        Directory.CreateDirectory(d);
        return d;
    }

    static Dictionary<string, string?> Env(string key, string value) => new(NoPortOverrides) { [key] = value };

    static int PortOf(string connection, string key) => new Uri(connection.Split(';').Single(p => p.StartsWith(key + "="))[(key.Length + 1)..]).Port;

    [Fact]
    public async Task PgShStartsASecondClusterOnAFreePortAndReusesIt()
    {
        var a = StateFolder("pga"); var b = StateFolder("pgb");
        var pg = Path.Combine(Proc.Root, "infra", "pg.sh");
        try
        {
            var startA = await Proc.RunAsync(pg, ["start"], Env("RETOK_PG_ROOT", a));
            Assert.True(startA.ExitCode == 0, startA.Output);
            var startB = await Proc.RunAsync(pg, ["start"], Env("RETOK_PG_ROOT", b));
            Assert.True(startB.ExitCode == 0, startB.Output);
            string urlA = startA.Stdout.Trim(), urlB = startB.Stdout.Trim();
            int portA = new NpgsqlConnectionStringBuilder(urlA).Port, portB = new NpgsqlConnectionStringBuilder(urlB).Port;
            Assert.NotEqual(portA, portB);
            Assert.Contains($"using {portB}", startB.Stderr);   // the choice is printed
            Assert.Equal(portB.ToString(), File.ReadAllText(Path.Combine(b, "port")).Trim());

            // both answer, and each is its own cluster
            foreach (var (url, root) in new[] { (urlA, a), (urlB, b) })
            {
                await using var c = new NpgsqlConnection(url);
                await c.OpenAsync();
                await using var q = new NpgsqlCommand("SHOW data_directory", c);
                Assert.Equal(Path.Combine(root, "data"), (string)(await q.ExecuteScalarAsync())!);
            }

            // later calls reuse the saved port, also after a restart; url/status know it without starting anything
            Assert.Equal(urlB, (await Proc.RunAsync(pg, ["url"], Env("RETOK_PG_ROOT", b))).Stdout.Trim());
            Assert.Equal(0, (await Proc.RunAsync(pg, ["stop"], Env("RETOK_PG_ROOT", b))).ExitCode);
            var again = await Proc.RunAsync(pg, ["start"], Env("RETOK_PG_ROOT", b));
            Assert.True(again.ExitCode == 0, again.Output);
            Assert.Equal(urlB, again.Stdout.Trim());
            Assert.DoesNotContain("taken", again.Stderr);
        }
        finally
        {
            await Proc.RunAsync(pg, ["stop"], Env("RETOK_PG_ROOT", a));
            await Proc.RunAsync(pg, ["stop"], Env("RETOK_PG_ROOT", b));
            Directory.Delete(a, true); Directory.Delete(b, true);
        }
    }

    [Fact]
    public async Task PgShMovesOffASavedPortThatSomeoneElseTook()
    {
        var a = StateFolder("pgc");
        var pg = Path.Combine(Proc.Root, "infra", "pg.sh");
        using var squatter = new TcpListener(System.Net.IPAddress.Loopback, 0);
        squatter.Start();
        var taken = ((System.Net.IPEndPoint)squatter.LocalEndpoint).Port;
        await File.WriteAllTextAsync(Path.Combine(a, "port"), $"{taken}\n");
        try
        {
            var start = await Proc.RunAsync(pg, ["start"], Env("RETOK_PG_ROOT", a));
            Assert.True(start.ExitCode == 0, start.Output);
            var port = new NpgsqlConnectionStringBuilder(start.Stdout.Trim()).Port;
            Assert.NotEqual(taken, port);
            Assert.Contains($"port {taken} on 127.0.0.1 is taken", start.Stderr);
            await using var c = new NpgsqlConnection(start.Stdout.Trim());
            await c.OpenAsync();
        }
        finally
        {
            await Proc.RunAsync(pg, ["stop"], Env("RETOK_PG_ROOT", a));
            Directory.Delete(a, true);
        }
    }

    [Fact]
    public async Task AzuriteShStartsASecondServerOnAFreePort()
    {
        var a = StateFolder("aza"); var b = StateFolder("azb");
        var az = Path.Combine(Proc.Root, "infra", "azurite.sh");
        try
        {
            var startA = await Proc.RunAsync(az, ["start"], Env("RETOK_AZURITE_ROOT", a));
            Assert.True(startA.ExitCode == 0, startA.Output);
            var startB = await Proc.RunAsync(az, ["start"], Env("RETOK_AZURITE_ROOT", b));
            Assert.True(startB.ExitCode == 0, startB.Output);
            string connA = startA.Stdout.Trim(), connB = startB.Stdout.Trim();
            int portA = PortOf(connA, "BlobEndpoint"), portB = PortOf(connB, "BlobEndpoint");
            Assert.NotEqual(portA, portB);
            Assert.Contains($"using {portB}", startB.Stderr);

            // both answer, and they are two servers: a container made in A is not in B
            var name = $"ports-{Guid.NewGuid():N}"[..20];
            await new BlobContainerClient(connA, name).CreateAsync();
            Assert.True((await new BlobContainerClient(connA, name).ExistsAsync()).Value);
            Assert.False((await new BlobContainerClient(connB, name).ExistsAsync()).Value);

            Assert.Equal(connB, (await Proc.RunAsync(az, ["url"], Env("RETOK_AZURITE_ROOT", b))).Stdout.Trim());
            Assert.Equal(connB, (await Proc.RunAsync(az, ["start"], Env("RETOK_AZURITE_ROOT", b))).Stdout.Trim());
        }
        finally
        {
            await Proc.RunAsync(az, ["stop"], Env("RETOK_AZURITE_ROOT", a));
            await Proc.RunAsync(az, ["stop"], Env("RETOK_AZURITE_ROOT", b));
            Directory.Delete(a, true); Directory.Delete(b, true);
        }
    }
}

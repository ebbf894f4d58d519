using Npgsql;
using ReTok.Tracking;
using ReTok.Tracking.Artifacts;

namespace ReTok.Tests.Tracking;

/// <summary>Test servers: PostgreSQL from RETOK_TEST_DB (test.sh) or the lead's local cluster; Azurite from RETOK_TEST_BLOB.</summary>
public static class TestServers
{
    public static string Postgres(string database = "postgres") =>
        new NpgsqlConnectionStringBuilder(Environment.GetEnvironmentVariable("RETOK_TEST_DB") is { Length: > 0 } s ? s
            : "Host=127.0.0.1;Port=55432;Username=postgres;Database=postgres") { Database = database }.ConnectionString;

    public static string Blob => Environment.GetEnvironmentVariable("RETOK_TEST_BLOB") is { Length: > 0 } s ? s
        : "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
}

/// <summary>A fresh database retok_t_GUID with the tracking schema migrated in; dropped on dispose.</summary>
public sealed class TestDatabase : IAsyncLifetime
{
    public string Name { get; } = $"retok_t_{Guid.NewGuid():N}";
    public string ConnectionString => TestServers.Postgres(Name);
    public string ArtifactRoot { get; } = Directory.CreateTempSubdirectory("retok-artifacts").FullName;

    public async Task InitializeAsync() => await TrackingSchema.EnsureAsync(ConnectionString);

    public Tracker CreateTracker(IArtifactStore? store = null) => new(ConnectionString, store ?? new FileSystemArtifactStore(ArtifactRoot));

    public async Task DisposeAsync()
    {
        using (var mine = new NpgsqlConnection(ConnectionString)) NpgsqlConnection.ClearPool(mine);
        await using var c = new NpgsqlConnection(TestServers.Postgres());
        await c.OpenAsync();
        await using var cmd = new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{Name}\" WITH (FORCE)", c);
        await cmd.ExecuteNonQueryAsync();
        try { Directory.Delete(ArtifactRoot, true); } catch (IOException) { }
    }
}

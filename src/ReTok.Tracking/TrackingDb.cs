using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Design;
using Npgsql;

namespace ReTok.Tracking;

public class TrackingDb(DbContextOptions<TrackingDb> options) : DbContext(options)
{
    public const string Schema = "retok";
    public const string MigrationsAssembly = "ReTok.Migrations";

    public DbSet<Experiment> Experiments => Set<Experiment>();
    public DbSet<Run> Runs => Set<Run>();
    public DbSet<MetricPoint> Metrics => Set<MetricPoint>();
    public DbSet<Artifact> Artifacts => Set<Artifact>();
    public DbSet<ArtifactUse> ArtifactUses => Set<ArtifactUse>();
    public DbSet<RunLog> Logs => Set<RunLog>();
    public DbSet<Pipeline> Pipelines => Set<Pipeline>();
    public DbSet<WorkerInfo> Workers => Set<WorkerInfo>();

    protected override void OnModelCreating(ModelBuilder b)
    {
        b.HasDefaultSchema(Schema);
        b.Entity<Experiment>().HasIndex(e => e.Name).IsUnique();
        b.Entity<Run>(e =>
        {
            e.Property(r => r.Status).HasConversion<string>().HasMaxLength(16);
            e.HasIndex(r => r.Status);
            e.HasIndex(r => r.Kind);
            e.HasIndex(r => r.PipelineId);
            e.HasIndex(r => r.ParentRunId);
            e.HasOne(r => r.ParentRun).WithMany().HasForeignKey(r => r.ParentRunId).OnDelete(DeleteBehavior.Restrict);
            e.Property(r => r.LeaseGeneration).IsConcurrencyToken();
        });
        b.Entity<MetricPoint>(e =>
        {
            e.HasIndex(m => new { m.RunId, m.Key, m.Step }).IsUnique();
            e.HasOne<Run>().WithMany(r => r.Metrics).HasForeignKey(m => m.RunId).OnDelete(DeleteBehavior.Cascade);
        });
        b.Entity<Artifact>(e =>
        {
            e.HasIndex(a => new { a.RunId, a.Name }).IsUnique();
            e.HasIndex(a => a.Sha256);
            e.HasOne(a => a.Run).WithMany(r => r.Artifacts).HasForeignKey(a => a.RunId).OnDelete(DeleteBehavior.Cascade);
        });
        b.Entity<ArtifactUse>(e =>
        {
            e.HasIndex(u => new { u.RunId, u.ArtifactId, u.Role }).IsUnique();
            e.HasOne<Run>().WithMany().HasForeignKey(u => u.RunId).OnDelete(DeleteBehavior.Cascade);
            e.HasOne(u => u.Artifact).WithMany().HasForeignKey(u => u.ArtifactId).OnDelete(DeleteBehavior.Restrict);
        });
        b.Entity<RunLog>(e =>
        {
            e.HasIndex(l => new { l.RunId, l.Id });
            e.HasOne<Run>().WithMany().HasForeignKey(l => l.RunId).OnDelete(DeleteBehavior.Cascade);
        });
        b.Entity<WorkerInfo>().HasKey(w => w.Id);
    }

    public static DbContextOptions<TrackingDb> Options(string connectionString) =>
        new DbContextOptionsBuilder<TrackingDb>()
            .UseNpgsql(connectionString, o => o.MigrationsAssembly(MigrationsAssembly)
                .MigrationsHistoryTable("__ef_migrations", Schema)
                .EnableRetryOnFailure(3, TimeSpan.FromSeconds(2), null))
            .Options;

    public static TrackingDb Create(string connectionString) => new(Options(connectionString));

    /// <summary>Opens a connection once to turn "connection refused" into a message that names host and port.</summary>
    public static async Task CheckReachableAsync(string connectionString, CancellationToken ct = default)
    {
        var csb = new NpgsqlConnectionStringBuilder(connectionString) { Timeout = 5, Pooling = false };
        try
        {
            await using var c = new NpgsqlConnection(csb.ConnectionString);
            await c.OpenAsync(ct);
        }
        catch (Exception ex) when (ex is NpgsqlException or System.Net.Sockets.SocketException or TimeoutException)
        {
            throw new DatabaseUnreachableException(
                $"cannot reach PostgreSQL at {csb.Host}:{csb.Port} (database '{csb.Database}'): {ex.Message}. " +
                "Start the local stack with `infra/stack.sh start` or set RETOK_DB.", ex);
        }
    }
}

public sealed class DatabaseUnreachableException(string message, Exception inner) : Exception(message, inner);


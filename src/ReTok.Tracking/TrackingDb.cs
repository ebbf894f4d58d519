using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace ReTok.Tracking;

public class TrackingDb(DbContextOptions<TrackingDb> options) : DbContext(options)
{
    public const string Schema = "retok";
    public const string MigrationsAssembly = "ReTok.Migrations";

    public DbSet<Experiment> Experiments => Set<Experiment>();
    public DbSet<Run> Runs => Set<Run>();
    public DbSet<MetricPoint> Metrics => Set<MetricPoint>();
    public DbSet<MetricProvenance> MetricProvenance => Set<MetricProvenance>();
    public DbSet<Artifact> Artifacts => Set<Artifact>();
    public DbSet<ArtifactUse> ArtifactUses => Set<ArtifactUse>();
    public DbSet<RunLog> Logs => Set<RunLog>();
    public DbSet<Pipeline> Pipelines => Set<Pipeline>();
    public DbSet<WorkerInfo> Workers => Set<WorkerInfo>();
    public DbSet<RendezvousEntry> Rendezvous => Set<RendezvousEntry>();
    public DbSet<User> Users => Set<User>();
    public DbSet<ApiToken> ApiTokens => Set<ApiToken>();
    public DbSet<UserSession> UserSessions => Set<UserSession>();
    public DbSet<WebhookSubscription> WebhookSubscriptions => Set<WebhookSubscription>();
    public DbSet<WebhookDelivery> WebhookDeliveries => Set<WebhookDelivery>();

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
            e.HasIndex(r => r.FanInRunId);
            e.HasOne(r => r.ParentRun).WithMany().HasForeignKey(r => r.ParentRunId).OnDelete(DeleteBehavior.Restrict);
            e.HasOne<Run>().WithMany().HasForeignKey(r => r.FanInRunId).OnDelete(DeleteBehavior.Restrict);
            e.HasOne<Run>().WithMany().HasForeignKey(r => r.ContinuedByRunId).OnDelete(DeleteBehavior.Restrict);
            e.HasOne<Pipeline>().WithMany().HasForeignKey(r => r.PipelineId).OnDelete(DeleteBehavior.Restrict);
            e.Property(r => r.LeaseGeneration).IsConcurrencyToken();
        });
        b.Entity<MetricPoint>(e =>
        {
            // The key itself is the upsert target: INSERT .. ON CONFLICT (run_id, key, step) DO UPDATE.
            e.HasKey(m => new { m.RunId, m.Key, m.Step });
            e.HasOne<Run>().WithMany(r => r.Metrics).HasForeignKey(m => m.RunId).OnDelete(DeleteBehavior.Cascade);
        });
        b.Entity<MetricProvenance>(e =>
        {
            // one record per (run, key), upserted like metrics; the protocol hash is what the results table groups by
            e.ToTable("metric_provenance");
            e.HasKey(m => new { m.RunId, m.Key });
            e.HasIndex(m => m.ProtocolHash);
            e.HasOne<Run>().WithMany().HasForeignKey(m => m.RunId).OnDelete(DeleteBehavior.Cascade);
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
        b.Entity<Pipeline>().HasIndex(p => p.CreatedAt);
        b.Entity<WorkerInfo>().HasKey(w => w.Id);
        b.Entity<RendezvousEntry>(e =>
        {
            e.ToTable("rendezvous");
            e.HasKey(x => new { x.GroupRunId, x.Generation, x.Rank });
            e.HasOne<Run>().WithMany().HasForeignKey(x => x.GroupRunId).OnDelete(DeleteBehavior.Cascade);
        });
        b.Entity<User>(e =>
        {
            e.HasIndex(u => u.Name).IsUnique();
            e.Property(u => u.Role).HasConversion<string>().HasMaxLength(16);
            e.Property(u => u.SecurityStamp).HasMaxLength(64).HasDefaultValue("");
        });
        b.Entity<UserSession>(e =>
        {
            e.Property(s => s.Id).HasMaxLength(64);
            e.Property(s => s.Address).HasMaxLength(64);
            e.HasIndex(s => new { s.UserId, s.CreatedAt });
            e.HasOne(s => s.User).WithMany().HasForeignKey(s => s.UserId).OnDelete(DeleteBehavior.Cascade);
        });
        b.Entity<ApiToken>(e =>
        {
            e.HasIndex(t => t.TokenHash).IsUnique();
            e.Property(t => t.SecurityStamp).HasMaxLength(64).HasDefaultValue("");
            e.HasOne(t => t.User).WithMany().HasForeignKey(t => t.UserId).OnDelete(DeleteBehavior.Cascade);
        });
        b.Entity<WebhookSubscription>(e =>
        {
            e.ToTable("webhooks");
            e.Property(w => w.Url).HasMaxLength(2048);
            e.Property(w => w.Name).HasMaxLength(200);
            e.Property(w => w.Events).HasDefaultValueSql("'{}'::text[]");
            e.Property(w => w.CreatedAt).HasDefaultValueSql("now()");
            e.HasIndex(w => w.ExperimentId);
            e.HasOne<Experiment>().WithMany().HasForeignKey(w => w.ExperimentId).OnDelete(DeleteBehavior.Cascade);
        });
        b.Entity<WebhookDelivery>(e =>
        {
            e.ToTable("webhook_deliveries");
            e.Property(d => d.Status).HasConversion<string>().HasMaxLength(16).HasDefaultValue(DeliveryStatus.Pending);
            e.Property(d => d.Event).HasMaxLength(32);
            e.Property(d => d.Facts).HasDefaultValueSql("'{}'::jsonb");
            e.Property(d => d.IdempotencyKey).HasDefaultValueSql("gen_random_uuid()");
            e.Property(d => d.Attempts).HasDefaultValue(0);
            e.Property(d => d.NextAttemptAt).HasDefaultValueSql("now()");
            e.Property(d => d.CreatedAt).HasDefaultValueSql("now()");
            e.Property(d => d.LastError).HasMaxLength(500);
            e.HasIndex(d => d.IdempotencyKey).IsUnique();
            // the dispatcher's claim: due pending rows, oldest first
            e.HasIndex(d => new { d.Status, d.NextAttemptAt });
            e.HasIndex(d => new { d.SubscriptionId, d.Id });
            e.HasOne<WebhookSubscription>().WithMany().HasForeignKey(d => d.SubscriptionId).OnDelete(DeleteBehavior.Cascade);
        });
    }

    public static DbContextOptions<TrackingDb> Options(string connectionString) =>
        new DbContextOptionsBuilder<TrackingDb>()
            // No EnableRetryOnFailure: it forbids user transactions; Tracker retries transient faults with Polly instead.
            .UseNpgsql(connectionString, o => o.MigrationsAssembly(MigrationsAssembly)
                .MigrationsHistoryTable("__ef_migrations", Schema))
            .UseSnakeCaseNamingConvention()
            .Options;

    public static TrackingDb Create(string connectionString) => new(Options(connectionString));

    /// <summary>A context on an open connection (e.g. to take part in a transaction of <see cref="Tracker.InTransactionAsync{T}"/>).</summary>
    public static TrackingDb Create(NpgsqlConnection connection) =>
        new(new DbContextOptionsBuilder<TrackingDb>()
            .UseNpgsql(connection, o => o.MigrationsAssembly(MigrationsAssembly).MigrationsHistoryTable("__ef_migrations", Schema))
            .UseSnakeCaseNamingConvention()
            .Options);

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

/// <summary>The server answers but the role may not create the database, connect to it, or create the schema.</summary>
public sealed class DatabaseAccessException(string message, Exception inner) : Exception(message, inner);


public static class TrackingSchema
{
    /// <summary>
    /// Creates the database when it does not exist and applies pending EF migrations under a PostgreSQL advisory lock,
    /// so several workers starting at once migrate exactly once. Returns the migrations applied.
    /// </summary>
    public static async Task<IReadOnlyList<string>> EnsureAsync(string connectionString, CancellationToken ct = default)
    {
        var csb = new NpgsqlConnectionStringBuilder(connectionString);
        try { return await EnsureCoreAsync(connectionString, csb, ct); }
        catch (Exception ex) when ((ex as PostgresException ?? ex.InnerException as PostgresException) is { SqlState: PostgresErrorCodes.InsufficientPrivilege } pg)
        {
            throw new DatabaseAccessException(
                $"PostgreSQL role '{csb.Username}' at {csb.Host}:{csb.Port} may not set up database '{csb.Database}': {pg.MessageText}. " +
                "Create the database and give the role ownership of it (or CREATEDB), or run `retok db migrate` once as a role that may.", pg);
        }
    }

    static async Task<IReadOnlyList<string>> EnsureCoreAsync(string connectionString, NpgsqlConnectionStringBuilder csb, CancellationToken ct)
    {
        // The target database first: a managed server may not let the role into 'postgres', and it need not when the
        // database exists. Only a missing database sends us to 'postgres' to create it.
        try { await TrackingDb.CheckReachableAsync(connectionString, ct); }
        catch (DatabaseUnreachableException ex) when (ex.InnerException is PostgresException { SqlState: PostgresErrorCodes.InvalidCatalogName })
        {
            await TrackingDb.CheckReachableAsync(new NpgsqlConnectionStringBuilder(connectionString) { Database = "postgres" }.ConnectionString, ct);
            await CreateDatabaseIfMissingAsync(csb, ct);
        }
        await using var lockConn = new NpgsqlConnection(connectionString);
        await lockConn.OpenAsync(ct);
        await using (var c = new NpgsqlCommand("SELECT pg_advisory_lock(7212202601)", lockConn)) await c.ExecuteNonQueryAsync(ct);
        try
        {
            await using var ctx = TrackingDb.Create(connectionString);
            var pending = (await ctx.Database.GetPendingMigrationsAsync(ct)).ToList();
            if (pending.Count > 0) await ctx.Database.MigrateAsync(ct);
            return pending;
        }
        finally
        {
            await using var c = new NpgsqlCommand("SELECT pg_advisory_unlock(7212202601)", lockConn);
            await c.ExecuteNonQueryAsync(CancellationToken.None);
        }
    }

    static async Task CreateDatabaseIfMissingAsync(NpgsqlConnectionStringBuilder csb, CancellationToken ct)
    {
        var db = csb.Database ?? "postgres";
        var admin = new NpgsqlConnectionStringBuilder(csb.ConnectionString) { Database = "postgres", Pooling = false };
        await using var c = new NpgsqlConnection(admin.ConnectionString);
        await c.OpenAsync(ct);
        await using (var q = new NpgsqlCommand("SELECT 1 FROM pg_database WHERE datname = @n", c))
        {
            q.Parameters.AddWithValue("n", db);
            if (await q.ExecuteScalarAsync(ct) is not null) return;
        }
        try
        {
            await using var create = new NpgsqlCommand($"CREATE DATABASE \"{db.Replace("\"", "\"\"")}\"", c);
            await create.ExecuteNonQueryAsync(ct);
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.DuplicateDatabase) { }
    }
}

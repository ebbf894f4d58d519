using System.Globalization;
using Hangfire;
using Hangfire.PostgreSql;
using Hangfire.PostgreSql.Factories;
using ReTok.Tracking;

namespace ReTok.Engine;

/// <summary>
/// Engine settings. Defaults suit multi-hour GPU jobs; tests shrink the intervals. Bound on the recovery delay after a
/// worker is killed: about max(InvisibilityTimeout + 1 s, LeaseTtl) + QueuePollInterval (defaults: ~2 min).
/// </summary>
public sealed record EngineOptions
{
    public required string Db { get; init; }
    /// <summary>Artifact store spec (folder, file:PATH or blob:CONTAINER;CONNECTION).</summary>
    public required string Artifacts { get; init; }
    /// <summary>Local scratch for job working folders and the verified input cache.</summary>
    public string Scratch { get; init; } = Path.Combine(Path.GetTempPath(), "retok-scratch");

    /// <summary>How often an idle worker polls the queue. Hangfire.PostgreSql 1.21 defaults to 15 s; we set it (anchors §1).</summary>
    public TimeSpan QueuePollInterval { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>LISTEN/NOTIFY wake-up on enqueue (Hangfire.PostgreSql EnableLongPolling).</summary>
    public bool LongPolling { get; init; }
    /// <summary>
    /// Hangfire.PostgreSql re-hands a fetched job to another worker after this long without a keep-alive. With
    /// UseSlidingInvisibilityTimeout the keep-alive runs every timeout/5 while the job runs, so this is a dead-worker
    /// detector, not a job-length limit (the 30 min default would restart a 24 h job ~48 times without sliding).
    /// Whole seconds (the storage truncates to seconds).
    /// </summary>
    public TimeSpan InvisibilityTimeout { get; init; } = TimeSpan.FromMinutes(2);
    /// <summary>Our run lease: expires this long after the last heartbeat of its executor.</summary>
    public TimeSpan LeaseTtl { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Executor heartbeat: lease renewal, progress, metric/log flush and the cancel-request poll.</summary>
    public TimeSpan Heartbeat { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>How often a running execution records sys/* metrics (its GPUs, process CPU/RSS, host memory) at the next
    /// heartbeat; zero disables them.</summary>
    public TimeSpan SystemMetricsEvery { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>GPU readings; null = detect (NVML, then nvidia-smi, else GPU metrics are skipped). Tests pass a fake.</summary>
    public IGpuMetricsSource? GpuMetrics { get; init; }
    /// <summary>Hangfire's delayed-job poll (transient-failure retries are scheduled jobs).</summary>
    public TimeSpan SchedulePollInterval { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>Backoff of transient-failure retries: base * 2^(attempt-1), capped at 10 min.</summary>
    public TimeSpan RetryBaseDelay { get; init; } = TimeSpan.FromSeconds(15);
    /// <summary>Graceful stop: how long a job gets to checkpoint after SIGTERM before Hangfire aborts it.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>How often each worker repairs lost enqueues and expired leases (see <see cref="Reconciler"/>).</summary>
    public TimeSpan ReconcileInterval { get; init; } = TimeSpan.FromSeconds(15);
    /// <summary>A Queued run whose Hangfire job is gone for this long is enqueued again.</summary>
    public TimeSpan ReconcileQueuedAfter { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>How often each worker's reconciler sweeps the artifact store for orphan objects; zero disables it.</summary>
    public TimeSpan OrphanSweepInterval { get; init; } = TimeSpan.FromHours(1);
    /// <summary>An unreferenced store object is deleted only when older than this (uploads whose rows are still coming).</summary>
    public TimeSpan OrphanGrace { get; init; } = TimeSpan.FromHours(24);
    /// <summary>Folders that path parameters ([DataPath]) may name, checked at submit and on the worker (docs/security.md).</summary>
    public DataRoots DataRoots { get; init; } = DataRoots.FromEnvironment();
    /// <summary>Apply EF migrations (and create the database) when a worker or client starts.</summary>
    public bool AutoMigrate { get; init; } = true;
    /// <summary>Webhook delivery (RETOK_DASHBOARD_URL, RETOK_WEBHOOK_*, RETOK_WEBHOOKS=0 = off): every worker runs a dispatcher.</summary>
    public WebhookOptions Webhooks { get; init; } = WebhookOptions.FromEnvironment();

    /// <summary>Settings from the environment: RETOK_DB, RETOK_ARTIFACTS, RETOK_SCRATCH and RETOK_ENGINE_* overrides (see docs/engine.md).</summary>
    public static EngineOptions FromEnvironment(string? db = null, string? artifacts = null)
    {
        var s = RetokSettings.FromEnvironment(db, artifacts);
        var o = new EngineOptions
        {
            Db = s.Db,
            Artifacts = s.Artifacts,
            Scratch = Environment.GetEnvironmentVariable("RETOK_SCRATCH") ?? Path.Combine(s.Home, "scratch"),
            AutoMigrate = Environment.GetEnvironmentVariable("RETOK_AUTO_MIGRATE") is not ("0" or "false"),
            DataRoots = DataRoots.FromEnvironment(s.Home),
        };
        return o.WithOverrides(k => Environment.GetEnvironmentVariable("RETOK_ENGINE_" + k));
    }

    /// <summary>Applies POLL_MS, INVISIBILITY_S, LEASE_TTL_S, HEARTBEAT_MS, RETRY_BASE_MS, RECONCILE_MS, SHUTDOWN_S, LONG_POLLING, ORPHAN_SWEEP_S, ORPHAN_GRACE_S, SYSTEM_METRICS_S (0 = off).</summary>
    public EngineOptions WithOverrides(Func<string, string?> get)
    {
        TimeSpan? Ms(string k) => get(k) is { } v ? TimeSpan.FromMilliseconds(double.Parse(v, CultureInfo.InvariantCulture)) : null;
        TimeSpan? S(string k) => get(k) is { } v ? TimeSpan.FromSeconds(double.Parse(v, CultureInfo.InvariantCulture)) : null;
        return this with
        {
            QueuePollInterval = Ms("POLL_MS") ?? QueuePollInterval,
            InvisibilityTimeout = S("INVISIBILITY_S") ?? InvisibilityTimeout,
            LeaseTtl = S("LEASE_TTL_S") ?? LeaseTtl,
            Heartbeat = Ms("HEARTBEAT_MS") ?? Heartbeat,
            RetryBaseDelay = Ms("RETRY_BASE_MS") ?? RetryBaseDelay,
            ReconcileInterval = Ms("RECONCILE_MS") ?? ReconcileInterval,
            ReconcileQueuedAfter = Ms("RECONCILE_QUEUED_MS") ?? ReconcileQueuedAfter,
            SchedulePollInterval = Ms("SCHEDULE_POLL_MS") ?? SchedulePollInterval,
            ShutdownTimeout = S("SHUTDOWN_S") ?? ShutdownTimeout,
            OrphanSweepInterval = S("ORPHAN_SWEEP_S") ?? OrphanSweepInterval,
            OrphanGrace = S("ORPHAN_GRACE_S") ?? OrphanGrace,
            SystemMetricsEvery = S("SYSTEM_METRICS_S") ?? SystemMetricsEvery,
            LongPolling = get("LONG_POLLING") is { } lp ? lp is "1" or "true" : LongPolling,
        };
    }

    public void Validate()
    {
        if (InvisibilityTimeout < TimeSpan.FromSeconds(2)) throw new ArgumentException($"InvisibilityTimeout {InvisibilityTimeout} is below 2 s");
        if (LeaseTtl < 3 * Heartbeat) throw new ArgumentException($"LeaseTtl ({LeaseTtl.TotalSeconds} s) must be at least 3 heartbeats ({Heartbeat.TotalSeconds} s each)");
        if (QueuePollInterval < TimeSpan.FromMilliseconds(50)) throw new ArgumentException("QueuePollInterval below 50 ms");
    }

    public PostgreSqlStorageOptions StorageOptions() => new()
    {
        SchemaName = "hangfire",
        QueuePollInterval = QueuePollInterval,
        InvisibilityTimeout = TimeSpan.FromSeconds(Math.Max(1, Math.Round(InvisibilityTimeout.TotalSeconds))),
        UseSlidingInvisibilityTimeout = true,
        EnableLongPolling = LongPolling,
        PrepareSchemaIfNecessary = true,
        DistributedLockTimeout = TimeSpan.FromMinutes(1),
    };

    /// <summary>
    /// Hangfire's storage. Given the tracker's <paramref name="dataSource"/> it draws its connections from that same
    /// pool, so a process holds one pool (sized by RETOK_DB's Maximum Pool Size) instead of two (docs/deploy.md).
    /// </summary>
    public PostgreSqlStorage CreateStorage(Npgsql.NpgsqlDataSource? dataSource = null)
    {
        HangfireGlobal.Configure();
        var so = StorageOptions();
        IConnectionFactory factory = dataSource is null ? new NpgsqlConnectionFactory(Db, so) : new DataSourceConnectionFactory(dataSource);
        return new PostgreSqlStorage(factory, so);
    }

    /// <summary>Hangfire opens what this returns (a closed connection of the shared pool) and disposes it after use.</summary>
    sealed class DataSourceConnectionFactory(Npgsql.NpgsqlDataSource dataSource) : IConnectionFactory
    {
        public Npgsql.NpgsqlConnection GetOrCreateConnection() => dataSource.CreateConnection();
    }

    /// <summary>One line per setting, printed by workers and the benchmark.</summary>
    public string Describe() =>
        $"Hangfire.PostgreSql: QueuePollInterval={QueuePollInterval.TotalMilliseconds:F0} ms, EnableLongPolling={LongPolling}, " +
        $"InvisibilityTimeout={InvisibilityTimeout.TotalSeconds:F0} s, UseSlidingInvisibilityTimeout=true (keep-alive every {InvisibilityTimeout.TotalSeconds / 5:F1} s), " +
        $"SchedulePollingInterval={SchedulePollInterval.TotalMilliseconds:F0} ms, AutomaticRetry=0 (engine retries)\n" +
        $"run lease: TTL={LeaseTtl.TotalSeconds:F1} s, heartbeat={Heartbeat.TotalMilliseconds:F0} ms; transient retry base={RetryBaseDelay.TotalSeconds:F1} s; " +
        $"reconcile every {ReconcileInterval.TotalSeconds:F1} s; shutdown timeout={ShutdownTimeout.TotalSeconds:F0} s; " +
        $"sys/* metrics {(SystemMetricsEvery > TimeSpan.Zero ? $"every {SystemMetricsEvery.TotalSeconds:F0} s" : "off")}";
}

static class HangfireGlobal
{
    static int _done;

    /// <summary>Process-wide Hangfire serializer settings (platform.md §7); idempotent.</summary>
    public static void Configure()
    {
        if (Interlocked.Exchange(ref _done, 1) == 1) return;
        GlobalConfiguration.Configuration
            .SetDataCompatibilityLevel(CompatibilityLevel.Version_180)
            .UseSimpleAssemblyNameTypeSerializer()
            .UseRecommendedSerializerSettings()
            .UseTypeResolver(ResolveType);
    }

    /// <summary>Jobs enqueued before the engine left ReTok.Jobs (issue #16) name the executor by its old type.</summary>
    static Type ResolveType(string name) =>
        name == "ReTok.Jobs.Engine.RunExecutor, ReTok.Jobs" ? typeof(RunExecutor) : Hangfire.Common.TypeHelper.DefaultTypeResolver(name);
}

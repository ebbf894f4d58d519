using System.Diagnostics.Metrics;
using ReTok.Tracking;

namespace ReTok.Dashboard.Monitoring;

/// <summary>
/// The fleet's SRE metrics as OpenTelemetry instruments, scraped by Prometheus at <c>/metrics</c>. Workers run no HTTP
/// server, so the numbers come from the run store (the one source every worker writes to): a snapshot refreshed at
/// most every <see cref="DefaultMinRefresh"/> before a scrape, so a scrape storm costs the database one query per interval.
/// If the database is unreachable the last snapshot stays and <c>retok_stats_up</c> reads 0.
/// </summary>
public sealed class FleetMetrics : IDisposable
{
    const string BaseMeterName = "ReTok.Jobs";
    static int instances;
    public static readonly TimeSpan DefaultMinRefresh = TimeSpan.FromSeconds(5);
    /// <summary>Queue waits span seconds (a free GPU) to days (a busy fleet).</summary>
    static readonly double[] WaitBuckets = [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 3 * 24 * 3600];

    readonly Meter meter;
    readonly RunStore runs;
    readonly WebhookStore webhooks;
    (IReadOnlyDictionary<string, long> ByStatus, double OldestPendingSeconds)? hooks;
    readonly TimeSpan workerSilence, minRefresh;
    readonly Histogram<double> queueWait;
    readonly SemaphoreSlim gate = new(1, 1);
    FleetStats? stats;
    DateTimeOffset? watermark;
    DateTimeOffset lastRefresh = DateTimeOffset.MinValue;
    volatile bool up;

    public string MeterName { get; }

    public FleetMetrics(Tracker tracker, TimeSpan? workerSilence = null, TimeSpan? minRefresh = null)
    {
        this.minRefresh = minRefresh ?? DefaultMinRefresh;
        // OpenTelemetry listens by meter name: a second dashboard in one process (tests) gets its own name, or each
        // would export the other's snapshot too
        int n = Interlocked.Increment(ref instances);
        MeterName = n == 1 ? BaseMeterName : $"{BaseMeterName}.{n}";
        meter = new Meter(MeterName);
        runs = tracker.Runs;
        webhooks = tracker.Webhooks;
        this.workerSilence = workerSilence ?? TimeSpan.FromMinutes(2);
        meter.CreateObservableGauge("retok.queue.depth", () => Tagged(stats?.QueuedByQueue, "queue"), "{run}", "runs queued and not yet started, per queue");
        meter.CreateObservableGauge("retok.runs.running", () => Tagged(stats?.RunningByKind, "kind"), "{run}", "runs executing now, per job kind");
        meter.CreateObservableCounter("retok.runs.finished", () => Finished(), "{run}",
            "runs that ended, per job kind and status (succeeded, failed, cancelled); a retry moves a run out of its count");
        meter.CreateObservableCounter("retok.lease.takeovers", () => Single(stats?.LeaseTakeovers), "{takeover}",
            "expired run leases taken over by another executor or re-queued by the reconciler (a dead or stalled worker)");
        meter.CreateObservableGauge("retok.artifacts.stored", () => Single(stats?.ArtifactBytes), "By", "bytes of the artifacts the run store records");
        meter.CreateObservableGauge("retok.workers.live", () => Single(stats?.LiveWorkers), "{worker}", "workers with a recent heartbeat");
        meter.CreateObservableGauge("retok.webhook.deliveries", () => Tagged(hooks?.ByStatus, "status"), "{delivery}",
            "webhook deliveries per status: pending (incl. waiting to retry), delivered, dead (gave up; see the experiment page)");
        meter.CreateObservableGauge("retok.webhook.oldest_pending", () => hooks is { } h ? [new Measurement<double>(h.OldestPendingSeconds)] : Array.Empty<Measurement<double>>(), "s",
            "age of the oldest pending webhook delivery (0: none): grows when no dispatcher runs or a receiver keeps failing");
        meter.CreateObservableGauge("retok.stats.up", () => up ? 1 : 0, null, "1 when the last refresh read the run store, 0 when it failed");
        queueWait = meter.CreateHistogram("retok.run.queue_wait", "s", "enqueue -> first start of each run started since this dashboard started, per kind and queue",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = WaitBuckets });
    }

    /// <summary>Reads the run store unless the last read is younger than the minimum refresh interval; never throws.</summary>
    public async Task RefreshAsync(CancellationToken ct = default)
    {
        if (DateTimeOffset.UtcNow - lastRefresh < minRefresh) return;
        await gate.WaitAsync(ct);
        try
        {
            if (DateTimeOffset.UtcNow - lastRefresh < minRefresh) return;
            // the watermark starts at the database's now: runs started before this process are not replayed
            watermark ??= await runs.DatabaseNowAsync(ct);
            stats = await runs.GetFleetStatsAsync(workerSilence, ct);
            hooks = await webhooks.StatsAsync(ct);
            foreach (var s in await runs.ListStartsAfterAsync(watermark.Value, ct: ct))
            {
                queueWait.Record(s.WaitSeconds, new("kind", s.Kind), new("queue", s.Queue));
                watermark = s.StartedAt;
            }
            up = true;
            lastRefresh = DateTimeOffset.UtcNow;
        }
        catch (Exception) when (!ct.IsCancellationRequested)
        {
            up = false;   // serve the last snapshot; the gauge tells the scraper it is stale
        }
        finally { gate.Release(); }
    }

    static IEnumerable<Measurement<long>> Tagged(IReadOnlyDictionary<string, long>? counts, string tag) =>
        counts?.Select(kv => new Measurement<long>(kv.Value, new KeyValuePair<string, object?>(tag, kv.Key))) ?? [];

    static IEnumerable<Measurement<long>> Single(long? value) => value is long v ? [new Measurement<long>(v)] : [];

    IEnumerable<Measurement<long>> Finished() =>
        stats?.FinishedByKind.Select(kv => new Measurement<long>(kv.Value,
            new KeyValuePair<string, object?>("kind", kv.Key.Kind), new KeyValuePair<string, object?>("status", kv.Key.Status.ToString().ToLowerInvariant()))) ?? [];

    public void Dispose()
    {
        meter.Dispose();
        gate.Dispose();
    }
}

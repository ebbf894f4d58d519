using System.Text.Json;
using Hangfire;
using Hangfire.PostgreSql;
using ReTok.Tracking;

namespace ReTok.Engine;

/// <summary>What a worker serves: queues, GPU indices (one device slot per GPU, shared by the GPU queues: "gpu" and
/// "gpu-CLASS", e.g. gpu-h100), CPU worker count.</summary>
public sealed record WorkerOptions
{
    public IReadOnlyList<string> Queues { get; init; } = ["gpu", "cpu"];
    public IReadOnlyList<int> Gpus { get; init; } = [];
    public int CpuWorkers { get; init; } = 1;
    public string? Name { get; init; }
}

/// <summary>
/// A worker process (`retok worker`): one Hangfire server for the GPU queue (worker count = GPUs given, each execution
/// leases one device index for its lifetime; without GPUs it runs on CPU with one worker and says so) and one for the
/// other queues; a WorkerInfo heartbeat row; the <see cref="Reconciler"/> loop. <see cref="StopAsync"/> is the graceful
/// path (SIGTERM): running handlers get their token cancelled, checkpoint, and their runs are re-queued.
/// </summary>
public sealed class WorkerHost : IAsyncDisposable
{
    readonly EngineOptions _o;
    readonly WorkerOptions _w;
    readonly CancellationTokenSource _stopping = new();
    readonly CancellationTokenSource _loops = new();
    readonly List<(BackgroundJobServer Server, DevicePool Pool, string Queue)> _servers = new();
    readonly List<Task> _background = new();
    readonly Action<string> _log;
    JobClient? _client;
    bool _stopped;
    IGpuMetricsSource? _gpuMetrics;
    SystemSampler? _sampler;
    string _system = "{}";
    DateTimeOffset _nextSystemSample = DateTimeOffset.MinValue;

    public WorkerHost(EngineOptions options, WorkerOptions worker, JobKindRegistry? kinds = null, Action<string>? log = null)
    {
        options.Validate();
        _o = options;
        _w = worker;
        var sink = log ?? (s => Console.WriteLine($"{DateTime.Now:HH:mm:ss.fff} {s}"));
        _log = s => sink(Redact.Secrets(s)); // exception messages can carry connection strings
        Kinds = kinds ?? JobKindRegistry.Default;
        HostName = Environment.MachineName;
        WorkerId = worker.Name ?? $"{HostName}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..4]}";
    }

    public string WorkerId { get; }
    public string HostName { get; }
    public JobKindRegistry Kinds { get; }
    public JobClient Client => _client ?? throw new InvalidOperationException("worker not started");

    public async Task StartAsync(CancellationToken ct = default)
    {
        var queues = _w.Queues.Select(q => q.Trim()).Where(q => q.Length > 0).Distinct().ToList();
        if (queues.Count == 0) throw new ArgumentException("a worker needs at least one queue");
        var tracker = new Tracker(_o.Db, RetokSettings.CreateStore(_o.Artifacts), Faults.CreateRetry(log: _log));
        _client = new JobClient(_o, Kinds, tracker);
        await _client.EnsureSchemaAsync(ct);
        Directory.CreateDirectory(_o.Scratch);
        var storage = (PostgreSqlStorage)_client.Storage;
        var host = new ExecutorHost
        {
            Options = _o, Client = _client, WorkerId = WorkerId, HostName = HostName, Stopping = _stopping.Token, Log = _log,
            GpuMetrics = _gpuMetrics = _o.GpuMetrics ?? (_w.Gpus.Count > 0 ? SystemSampler.Detect() : null),
        };

        var gpuQueues = queues.Where(WorkerSlots.IsGpuQueue).ToList();
        queues.RemoveAll(WorkerSlots.IsGpuQueue);
        if (gpuQueues.Count > 0)
        {
            List<string> devices;
            if (_w.Gpus.Count == 0)
            {
                devices = ["cpu"];
                _log($"no GPUs given (--gpus): serving queue(s) {string.Join(", ", gpuQueues)} on CPU with 1 worker (device cpu)");
            }
            else devices = _w.Gpus.Select(i => $"cuda:{i}").ToList();
            AddServer(string.Join(",", gpuQueues), devices, host, storage);
        }
        if (queues.Count > 0)
            AddServer(string.Join(",", queues), Enumerable.Repeat("cpu", Math.Max(1, _w.CpuWorkers)).ToList(), host, storage);

        await WriteWorkerInfoAsync(ct);
        _background.Add(LoopAsync(_o.Heartbeat < TimeSpan.FromSeconds(5) ? _o.Heartbeat : TimeSpan.FromSeconds(5), WriteWorkerInfoAsync, "worker heartbeat"));
        var reconciler = new Reconciler(_client, _log);
        _background.Add(LoopAsync(_o.ReconcileInterval, reconciler.RunOnceAsync, "reconciler"));
        if (_o.Webhooks.Enabled) _background.Add(WebhookDispatcher.RunInBackgroundAsync(tracker, _o.Webhooks, _log, _loops.Token));   // the outbox (RunStore.Webhooks.cs)
        _log($"worker {WorkerId} started: {string.Join("; ", _servers.Select(s => $"queue {s.Queue}: {s.Pool.Devices.Count} worker(s) on {string.Join(",", s.Pool.Devices)}"))}");
        _log(_o.Describe());
    }

    void AddServer(string queues, List<string> devices, ExecutorHost host, JobStorage storage)
    {
        var pool = new DevicePool(devices);
        var server = new BackgroundJobServer(new BackgroundJobServerOptions
        {
            ServerName = $"{WorkerId}:{queues}",
            Queues = queues.Split(',').SelectMany(RunPriority.ServedQueues).ToArray(),
            WorkerCount = devices.Count,
            Activator = new ExecutorActivator(host, pool),
            SchedulePollingInterval = _o.SchedulePollInterval,
            ShutdownTimeout = _o.ShutdownTimeout,
            StopTimeout = TimeSpan.Zero,
        }, storage);
        _servers.Add((server, pool, queues));
    }

    async Task LoopAsync(TimeSpan every, Func<CancellationToken, Task> body, string what)
    {
        while (!_loops.IsCancellationRequested)
        {
            try { await Task.Delay(every, _loops.Token); } catch (OperationCanceledException) { return; }
            try { await body(_loops.Token); }
            catch (OperationCanceledException) when (_loops.IsCancellationRequested) { return; }
            catch (Exception ex) { _log($"{what} failed: {ex.GetType().Name}: {ex.Message}"); }
        }
    }

    async Task WriteWorkerInfoAsync(CancellationToken ct)
    {
        // Slots are named with their server's queues: the gpu and cpu servers may both have "cpu" slots, and submit
        // checks a multi-device request against the slots of the queue it names (WorkerSlots.Of).
        var slots = _servers.SelectMany(s => s.Pool.Snapshot().Select(kv => (Key: WorkerSlots.Key(kv.Key, s.Queue), Run: kv.Value)))
            .ToDictionary(x => x.Key, x => x.Run);
        if (_o.SystemMetricsEvery > TimeSpan.Zero && DateTimeOffset.UtcNow >= _nextSystemSample)
        {
            _sampler ??= new SystemSampler(_gpuMetrics);
            _system = JsonSerializer.Serialize(_sampler.Sample(_servers.SelectMany(s => s.Pool.Devices).Distinct().ToList()).ToDictionary(x => x.Key, x => Math.Round(x.Value, 2)));
            _nextSystemSample = DateTimeOffset.UtcNow + _o.SystemMetricsEvery;
        }
        var row = new WorkerInfo
        {
            Id = WorkerId, Host = HostName, Queues = string.Join(",", _servers.Select(s => s.Queue)),
            Devices = string.Join(",", _servers.SelectMany(s => s.Pool.Devices).Distinct()), Slots = JsonSerializer.Serialize(slots), System = _system,
        };
        await Client.Tracker.Runs.UpsertWorkerAsync(row, ct);
    }

    /// <summary>Graceful stop: stop fetching, cancel running handlers (they checkpoint; runs are re-queued), wait up to ShutdownTimeout.</summary>
    public async Task StopAsync()
    {
        if (_stopped) return;
        _stopped = true;
        _log($"worker {WorkerId} stopping: running jobs checkpoint and are re-queued");
        foreach (var s in _servers) s.Server.SendStop();
        _stopping.Cancel();
        await Task.WhenAll(_servers.Select(s => Task.Run(() => s.Server.Dispose())));
        _loops.Cancel();
        await Task.WhenAll(_background);
        if (_client is not null)
        {
            try { await _client.Tracker.Runs.DeleteWorkerAsync(WorkerId); }
            catch (Exception ex) { _log($"could not remove worker row: {ex.Message}"); }
        }
        _log($"worker {WorkerId} stopped");
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        if (_client is not null) { await _client.DisposeAsync(); await _client.Tracker.DisposeAsync(); }
    }
}

/// <summary>
/// Repairs what at-least-once delivery and crashes can leave behind, from every worker (claims are optimistic, so
/// concurrent reconcilers are harmless):
/// <list type="bullet">
/// <item>a Queued run whose Hangfire job is missing or finished (a crash between commit and enqueue, a deleted job) is enqueued again;</item>
/// <item>a Running run whose lease expired long ago (longer than Hangfire's own re-delivery would take) is re-queued —
/// the belt to Hangfire.PostgreSql's sliding invisibility braces (issue #381);</item>
/// <item>WorkerInfo rows silent for a day are removed;</item>
/// <item>every <see cref="EngineOptions.OrphanSweepInterval"/>: store objects without an artifact row, older than
/// <see cref="EngineOptions.OrphanGrace"/>, are deleted (uploads of a killed executor; see <see cref="Tracker.SweepOrphanObjectsAsync"/>).</item>
/// </list>
/// </summary>
public sealed class Reconciler(JobClient client, Action<string> log)
{
    DateTimeOffset _lastSweep = DateTimeOffset.UtcNow;

    public async Task RunOnceAsync(CancellationToken ct)
    {
        var every = client.Options.OrphanSweepInterval;
        if (every > TimeSpan.Zero && DateTimeOffset.UtcNow - _lastSweep >= every)
        {
            _lastSweep = DateTimeOffset.UtcNow;
            var n = await client.Tracker.SweepOrphanObjectsAsync(client.Options.OrphanGrace, ct);
            if (n > 0) log($"reconciler: deleted {n} orphan store object(s) older than {client.Options.OrphanGrace.TotalHours:F1} h");
        }

        var o = client.Options;
        var runs = client.Tracker.Runs;
        var candidates = await runs.ListQueuedLongerThanAsync(o.ReconcileQueuedAfter, ct);
        if (candidates.Count > 0)
        {
            using var conn = client.Storage.GetConnection();
            foreach (var (id, queue, job) in candidates)
            {
                var state = job is null ? null : conn.GetStateData(job)?.Name;
                if (state is "Enqueued" or "Scheduled" or "Processing" or "Awaiting") continue;
                if (!await runs.ClaimForEnqueueAsync(id, job, ct)) continue;
                log($"reconciler: run {id} was Queued without a live Hangfire job (job {job ?? "none"}, state {state ?? "none"}); enqueued again");
                await client.EnqueueAsync(id, queue, ct: ct);
            }
        }

        var grace = o.InvisibilityTimeout + o.LeaseTtl + 2 * o.ReconcileInterval;
        foreach (var (id, queue) in await runs.RequeueExpiredLeasesAsync(grace, ct))
        {
            log($"reconciler: run {id} had an expired lease for over {grace.TotalSeconds:F0} s; re-queued");
            await client.EnqueueAsync(id, queue, ct: ct);
        }

        await runs.DeleteSilentWorkersAsync(TimeSpan.FromDays(1), ct);
    }
}

/// <summary>How a worker row names its device slots ("cuda:0 (gpu,gpu-h100)") and which of them serve a queue.</summary>
public static class WorkerSlots
{
    /// <summary>"gpu" and "gpu-CLASS" queues are served by the worker's GPU slots; every other queue by its CPU slots.</summary>
    public static bool IsGpuQueue(string queue) => queue == "gpu" || queue.StartsWith("gpu-", StringComparison.Ordinal);

    public static string Key(string slot, string queues) => $"{slot} ({queues})";

    /// <summary>The slots of worker <paramref name="w"/> that serve <paramref name="queue"/> (a slot named without queues
    /// serves all the worker's queues).</summary>
    public static List<string> Of(WorkerInfo w, string queue)
    {
        var slots = JsonSerializer.Deserialize<Dictionary<string, long?>>(string.IsNullOrWhiteSpace(w.Slots) ? "{}" : w.Slots) ?? new();
        var all = w.Queues.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var list = new List<string>();
        foreach (var key in slots.Keys)
        {
            int open = key.LastIndexOf(" (", StringComparison.Ordinal);
            var (slot, queues) = open > 0 && key.EndsWith(')')
                ? (key[..open], key[(open + 2)..^1].Split(',', StringSplitOptions.TrimEntries))
                : (key, all);
            if (queues.Contains(queue)) list.Add(slot);
        }
        return list;
    }
}

using Hangfire;
using Hangfire.Server;
using ReTok.Tracking;

namespace ReTok.Engine;

/// <summary>What a worker process shares with every execution it runs.</summary>
public sealed class ExecutorHost
{
    public required EngineOptions Options { get; init; }
    public required JobClient Client { get; init; }
    public required string WorkerId { get; init; }
    public required string HostName { get; init; }
    /// <summary>Cancelled on graceful shutdown (SIGTERM): running handlers checkpoint and their runs are re-queued.</summary>
    public required CancellationToken Stopping { get; init; }
    public Action<string> Log { get; init; } = Console.WriteLine;
    /// <summary>GPU readings for sys/* run metrics (detected once per worker); null = none on this machine.</summary>
    public IGpuMetricsSource? GpuMetrics { get; init; }
    public Tracker Tracker => Client.Tracker;
    public JobKindRegistry Kinds => Client.Kinds;
}

/// <summary>
/// Device slots of one Hangfire server: "cuda:0", "cuda:1" for the GPU queues, "cpu" slots otherwise. A run takes all
/// the slots it asks for at once or none (two runs that each hold half of what they need would wait on each other
/// forever), and waiters are served first come, first served so a large request is not starved by small ones.
/// </summary>
public sealed class DevicePool
{
    readonly Dictionary<string, long?> _slots;
    readonly LinkedList<Waiter> _waiters = new();

    sealed record Waiter(long RunId, int Count, TaskCompletionSource<Slot> Done);

    public DevicePool(IReadOnlyList<string> devices)
    {
        Devices = devices;
        _slots = devices.Distinct().Count() == devices.Count
            ? devices.ToDictionary(d => d, _ => (long?)null)
            : devices.Select((d, i) => $"{d}#{i}").ToDictionary(d => d, _ => (long?)null);
    }

    public IReadOnlyList<string> Devices { get; }

    /// <summary>Waits until <paramref name="count"/> slots are free together, then holds them for <paramref name="runId"/>.</summary>
    public async Task<Slot> AcquireAsync(long runId, CancellationToken ct, int count = 1)
    {
        if (count < 1 || count > _slots.Count)
            throw new ArgumentOutOfRangeException(nameof(count), $"{count} device(s) asked, this server has {_slots.Count} ({string.Join(", ", Devices)})");
        LinkedListNode<Waiter> node;
        lock (_slots)
        {
            if (_waiters.Count == 0 && Free() >= count) return Take(runId, count);
            node = _waiters.AddLast(new Waiter(runId, count, new TaskCompletionSource<Slot>(TaskCreationOptions.RunContinuationsAsynchronously)));
        }
        await using var _ = ct.Register(() =>
        {
            lock (_slots)
            {
                if (node.List is null) return;   // already served
                _waiters.Remove(node);
                node.Value.Done.TrySetCanceled(ct);
                ServeWaiters();   // a large request leaving the head may let smaller ones in
            }
        });
        return await node.Value.Done.Task;
    }

    /// <summary>Slot -> run id (null when idle), for the WorkerInfo row.</summary>
    public Dictionary<string, long?> Snapshot() { lock (_slots) return new(_slots); }

    int Free() => _slots.Count(kv => kv.Value is null);

    Slot Take(long runId, int count)
    {
        var names = _slots.Where(kv => kv.Value is null).Take(count).Select(kv => kv.Key).ToList();
        foreach (var n in names) _slots[n] = runId;
        return new Slot(this, names);
    }

    void ServeWaiters()
    {
        while (_waiters.First is { } head && Free() >= head.Value.Count)
        {
            _waiters.RemoveFirst();
            head.Value.Done.TrySetResult(Take(head.Value.RunId, head.Value.Count));
        }
    }

    void Release(IReadOnlyList<string> names)
    {
        lock (_slots)
        {
            foreach (var n in names) _slots[n] = null;
            ServeWaiters();
        }
    }

    /// <summary>The slots one run holds.</summary>
    public sealed class Slot(DevicePool pool, IReadOnlyList<string> names) : IDisposable
    {
        public IReadOnlyList<string> Names { get; } = names;
        public string Name => string.Join("+", Names);
        /// <summary>The devices handlers see ("cpu#1" slots run on "cpu"); the first is the run's primary device.</summary>
        public IReadOnlyList<string> Devices { get; } = names.Select(n => n.Split('#')[0]).ToList();
        public string Device => Devices[0];
        int _released;
        public void Dispose() { if (Interlocked.Exchange(ref _released, 1) == 0) pool.Release(Names); }
    }
}

enum StopReason { None, CancelRequested, Shutdown, LeaseLost }

/// <summary>One execution: the lease, the heartbeat loop and the stop reason behind the handler's token.</summary>
sealed class ExecutionScope(ExecutorHost host, Lease lease, string cacheDir)
{
    readonly CancellationTokenSource _cts = new();
    readonly CancellationTokenSource _writes = new();
    int _reason;

    public Lease Lease => lease;
    public Tracker Tracker => host.Tracker;
    public JobClient Client => host.Client;
    public JobKindRegistry Kinds => host.Kinds;
    public string CacheDir => cacheDir;
    public CancellationToken Token => _cts.Token;
    /// <summary>Cancelled only when the lease is lost: a cancelled handler must still be able to save its checkpoint.</summary>
    public CancellationToken WriteToken => _writes.Token;
    public StopReason Reason => (StopReason)Volatile.Read(ref _reason);
    public void Echo(string line) => host.Log(line);

    public void Stop(StopReason r)
    {
        if (Interlocked.CompareExchange(ref _reason, (int)r, 0) == 0 || r == StopReason.LeaseLost)
        {
            if (r == StopReason.LeaseLost) { Volatile.Write(ref _reason, (int)r); _writes.Cancel(); }
            _cts.Cancel();
        }
    }

    /// <summary>Renews the lease, publishes progress, flushes metrics/logs and polls the cancel flag every heartbeat.</summary>
    public async Task HeartbeatLoopAsync(JobContext ctx, CancellationToken stop)
    {
        var o = host.Options;
        var lastRenew = DateTimeOffset.UtcNow;
        var started = DateTimeOffset.UtcNow;
        var sampler = new SystemSampler(host.GpuMetrics);
        var nextSample = started;
        while (!stop.IsCancellationRequested)
        {
            try { await Task.Delay(o.Heartbeat, stop); } catch (OperationCanceledException) { return; }
            try
            {
                var r = await Tracker.Runs.RenewLeaseAsync(lease, o.LeaseTtl, ctx.Snapshot(), stop);
                if (!r.Held) { host.Log($"[run {lease.RunId}] lease generation {lease.Generation} lost: another executor took over; stopping without further writes"); Stop(StopReason.LeaseLost); return; }
                lastRenew = DateTimeOffset.UtcNow;
                if (r.CancelRequested && Reason == StopReason.None) { host.Log($"[run {lease.RunId}] cancel requested"); Stop(StopReason.CancelRequested); }
                if (o.SystemMetricsEvery > TimeSpan.Zero && DateTimeOffset.UtcNow >= nextSample)
                {
                    // step = whole seconds since this execution started: sys/* curves share one time axis per run
                    ctx.LogMetrics((long)(DateTimeOffset.UtcNow - started).TotalSeconds, sampler.Sample(ctx.Devices).ToArray());
                    nextSample = DateTimeOffset.UtcNow + o.SystemMetricsEvery;
                }
                await ctx.FlushAsync();
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { return; }
            catch (LeaseLostException) { Stop(StopReason.LeaseLost); return; }
            catch (Exception ex)
            {
                host.Log($"[run {lease.RunId}] heartbeat failed: {ex.GetType().Name}: {ex.Message}");
                // Self-fencing: without a renewal for a whole TTL another executor may own the run now.
                if (DateTimeOffset.UtcNow - lastRenew > o.LeaseTtl) { Stop(StopReason.LeaseLost); return; }
            }
        }
    }
}

/// <summary>
/// The one Hangfire entry point. Executes tracked run <c>runId</c>: the run row (kind + validated parameters) is the
/// source of truth, the Hangfire job only says "look at run N". Safe under Hangfire's at-least-once delivery: a second
/// execution of the same run finds the lease held and steps aside; retries are the engine's (AutomaticRetry is off).
/// </summary>
public sealed class RunExecutor(ExecutorHost host, DevicePool devices)
{
    [AutomaticRetry(Attempts = 0)]
    // no [DisplayName]: Hangfire prefers it to DashboardOptions.DisplayNameFunc, through which the dashboard names the run
    public async Task Execute(long runId, PerformContext? context, CancellationToken hangfireToken)
    {
        var t = host.Tracker;
        var run = await t.Runs.GetAsync(runId);
        if (run is null) { host.Log($"[run {runId}] not found; skipping"); return; }
        if (run.Status.IsTerminal() || run.Status == RunStatus.Waiting)
        {
            host.Log($"[run {runId}] is {run.Status}; nothing to execute (duplicate or stale delivery)");
            return;
        }

        if (run.Gpus > devices.Devices.Count)
        {
            // waiting would be forever: fail with the reason (submit refuses this when it can see the workers)
            await RefuseAsync(run, $"gpus: {run.Gpus} devices asked, but worker {host.WorkerId} serves queue '{run.Queue}' with {devices.Devices.Count} " +
                                   $"({string.Join(", ", devices.Devices)}); submit to a queue whose workers have enough", context);
            return;
        }
        using var slot = await devices.AcquireAsync(runId, host.Stopping, Math.Max(1, run.Gpus));
        var owner = $"{host.WorkerId}/{slot.Name}/{Guid.NewGuid().ToString("N")[..6]}";
        var request = new LeaseRequest(owner, host.Options.LeaseTtl, host.HostName, string.Join(",", slot.Devices), context?.BackgroundJob?.Id);
        var lease = await t.Runs.TryAcquireLeaseAsync(runId, request) ?? await WaitForLeaseAsync(runId, request);
        if (lease is null) return;

        if (host.Kinds.TryGet(run.Kind, out var kindInfo) && lease.Attempt > kindInfo.MaxAttempts)
        {
            // Earlier executions died without recording an outcome (worker killed or crashed, or the outcome itself
            // could not be stored): without this cap the reconciler re-queues such a run forever.
            var last = await t.Runs.GetAsync(runId);
            var why = $"gave up after {lease.Attempt - 1} attempts (max {kindInfo.MaxAttempts}): each execution ended without recording an outcome (worker killed or crashed?)"
                      + (last?.FailureReason is { Length: > 0 } f ? $"; last failure: {f}" : last?.ProgressMessage is { Length: > 0 } m ? $"; last progress: {m}" : "");
            await FailUnstartedAsync(lease, why);
            return;
        }

        var scratch = Path.Combine(host.Options.Scratch, "runs", $"{runId}-g{lease.Generation}");
        Directory.CreateDirectory(scratch);
        var scope = new ExecutionScope(host, lease, Path.Combine(host.Options.Scratch, "cache"));
        var ctx = new JobContext(scope, run, slot.Devices, scratch);
        using var onShutdown = host.Stopping.Register(() => scope.Stop(StopReason.Shutdown));
        using var heartbeatStop = new CancellationTokenSource();
        var heartbeat = scope.HeartbeatLoopAsync(ctx, heartbeatStop.Token);
        host.Log($"[run {runId}] {run.Kind} attempt {lease.Attempt} on {host.HostName} {slot.Name} (lease generation {lease.Generation})");
        try
        {
            if (lease.CancelRequested) scope.Stop(StopReason.CancelRequested);
            Exception? error = null;
            try
            {
                if (!host.Kinds.TryGet(run.Kind, out var kind)) throw new JobFailedException($"unknown job kind '{run.Kind}' on worker {host.WorkerId} (known: {string.Join(", ", host.Kinds.All.Select(k => k.Name))})");
                scope.Token.ThrowIfCancellationRequested();
                object parameters;
                try { parameters = ParamBinder.FromJson(run.Parameters, kind.ParamsType); ParamBinder.Validate(parameters); }
                catch (System.Text.Json.JsonException ex) { throw new JobFailedException($"parameters of run {runId} do not fit {kind.ParamsType.Name}: {ex.Message}"); }
                // Every local path the handler may open is confined to the data roots and replaced by its real path.
                host.Options.DataRoots.Confine(parameters);
                if (run.Nodes > 1 && run.NodeRank == 0) await ctx.StartNodeGroupAsync();
                // Run the handler off the Hangfire worker's synchronization context; it may block (TorchSharp loops).
                await Task.Run(() => kind.InvokeAsync(ctx, parameters));
            }
            catch (Exception ex) { error = ex; }

            heartbeatStop.Cancel();
            await heartbeat;
            await FinishAsync(ctx, scope, run, error, hangfireToken);
        }
        finally
        {
            heartbeatStop.Cancel();
            try { Directory.Delete(scratch, true); } catch (Exception) { /* best effort */ }
        }
    }

    async Task RefuseAsync(Run run, string why, PerformContext? context)
    {
        var t = host.Tracker;
        var request = new LeaseRequest($"{host.WorkerId}/refused/{Guid.NewGuid().ToString("N")[..6]}", host.Options.LeaseTtl, host.HostName, null, context?.BackgroundJob?.Id);
        if (await t.Runs.TryAcquireLeaseAsync(run.Id, request) is { } lease) await FailUnstartedAsync(lease, why);   // else another executor has it
    }

    /// <summary>Fails a leased run whose handler never started, logging the reason on the run.</summary>
    async Task FailUnstartedAsync(Lease lease, string why)
    {
        try
        {
            await host.Tracker.LogAsync(lease.RunId, "error", why, lease.Fence);
            await host.Tracker.Runs.FailAsync(lease, why);
            host.Log($"[run {lease.RunId}] failed: {why}");
        }
        catch (LeaseLostException ex) { host.Log($"[run {lease.RunId}] {ex.Message}"); }
    }

    async Task FinishAsync(JobContext ctx, ExecutionScope scope, Run run, Exception? error, CancellationToken hangfireToken)
    {
        var t = host.Tracker;
        var lease = scope.Lease;
        var reason = scope.Reason;
        if (reason == StopReason.LeaseLost || error is LeaseLostException)
        {
            host.Log($"[run {run.Id}] stopped after losing its lease (generation {lease.Generation}); the new owner carries on");
            return;
        }
        try
        {
            if (reason == StopReason.CancelRequested)
            {
                await TryFlushAsync(ctx);
                await t.Runs.CancelledAsync(lease, "cancelled by request");
                host.Log($"[run {run.Id}] cancelled");
                return;
            }
            if (reason == StopReason.Shutdown)
            {
                await TryFlushAsync(ctx);
                await t.Runs.ReleaseToQueueAsync(lease, $"re-queued: worker {host.WorkerId} shut down", refundAttempt: true); // a redeploy is no failed attempt
                host.Log($"[run {run.Id}] re-queued for another worker (graceful shutdown)");
                // Hangfire re-queues a job that ends with OperationCanceledException while its server stops.
                await WaitQuietly(hangfireToken, TimeSpan.FromSeconds(5));
                if (hangfireToken.IsCancellationRequested) throw new OperationCanceledException(hangfireToken);
                await host.Client.EnqueueAsync(run.Id, run.Queue, priority: run.Priority);
                return;
            }
            if (error is null)
            {
                await ctx.FlushAsync();
                if (ctx.Snapshot() is { } last) await t.Runs.RenewLeaseAsync(lease, host.Options.LeaseTtl, last); // final progress message
                var ready = await t.Runs.SucceedAsync(lease);
                host.Log($"[run {run.Id}] succeeded");
                foreach (var r in ready) await host.Client.EnqueueAsync(r.RunId, r.Queue);
                return;
            }
            await TryFlushAsync(ctx);
            var kind = host.Kinds.TryGet(run.Kind, out var k) ? k : null;
            var message = Describe(error);
            if (FailureClassifier.IsTransient(error) && kind is not null && lease.Attempt < kind.MaxAttempts)
            {
                var delay = TimeSpan.FromTicks(Math.Min(TimeSpan.FromMinutes(10).Ticks, host.Options.RetryBaseDelay.Ticks << Math.Min(20, lease.Attempt - 1)));
                var note = $"attempt {lease.Attempt}/{kind.MaxAttempts} failed ({message}); retrying in {delay.TotalSeconds:F1} s";
                await t.LogAsync(run.Id, "warn", note, lease.Fence);
                if (await t.Runs.ReleaseToQueueAsync(lease, note, failure: note)) await host.Client.EnqueueAsync(run.Id, run.Queue, delay, run.Priority);
                host.Log($"[run {run.Id}] {note}");
                return;
            }
            var reasonText = FailureClassifier.IsTransient(error) ? $"gave up after {lease.Attempt} attempts: {message}" : message;
            await t.LogAsync(run.Id, "error", error.ToString(), lease.Fence);
            await t.Runs.FailAsync(lease, reasonText);
            host.Log($"[run {run.Id}] failed: {reasonText}");
        }
        catch (LeaseLostException ex) { host.Log($"[run {run.Id}] {ex.Message}"); }
    }

    static string Describe(Exception ex) => ex switch
    {
        JobFailedException or SpecValidationException => ex.Message,
        AggregateException { InnerExceptions.Count: 1 } a => Describe(a.InnerExceptions[0]),
        _ => $"{ex.GetType().Name}: {ex.Message}",
    };

    async Task TryFlushAsync(JobContext ctx)
    {
        try { await ctx.FlushAsync(); }
        catch (Exception ex) when (ex is not LeaseLostException) { host.Log($"[run {ctx.RunId}] could not flush metrics/logs: {ex.Message}"); }
    }

    static async Task WaitQuietly(CancellationToken token, TimeSpan max)
    {
        try { await Task.Delay(max, token); } catch (OperationCanceledException) { }
    }

    /// <summary>
    /// The run is leased by someone else. Either its executor died (the lease expires within LeaseTtl and we take over) or
    /// it is alive (its heartbeat moves the expiry forward: this delivery is a duplicate and steps aside).
    /// </summary>
    async Task<Lease?> WaitForLeaseAsync(long runId, LeaseRequest request)
    {
        var t = host.Tracker;
        var first = await t.Runs.GetAsync(runId);
        var deadline = DateTimeOffset.UtcNow + host.Options.LeaseTtl + 2 * host.Options.Heartbeat;
        host.Log($"[run {runId}] leased by {first?.LeaseOwner} until {first?.LeaseExpiresAt:HH:mm:ss.fff}; waiting to see whether it is alive");
        while (DateTimeOffset.UtcNow < deadline && !host.Stopping.IsCancellationRequested)
        {
            await Task.Delay(host.Options.Heartbeat, host.Stopping).ContinueWith(_ => { });
            var now = await t.Runs.GetAsync(runId);
            if (now is null || now.Status.IsTerminal() || now.Status == RunStatus.Waiting) return null;
            if (await t.Runs.TryAcquireLeaseAsync(runId, request) is { } lease) return lease;
            if (now.LeaseOwner != first?.LeaseOwner || now.LeaseExpiresAt > first?.LeaseExpiresAt)
            {
                host.Log($"[run {runId}] is alive under {now.LeaseOwner}; this delivery steps aside");
                return null;
            }
        }
        return null;
    }
}

/// <summary>Gives Hangfire a <see cref="RunExecutor"/> bound to this worker and the server's device pool.</summary>
public sealed class ExecutorActivator(ExecutorHost host, DevicePool devices) : JobActivator
{
    public override object ActivateJob(Type jobType) =>
        jobType == typeof(RunExecutor) ? new RunExecutor(host, devices) : base.ActivateJob(jobType);
}

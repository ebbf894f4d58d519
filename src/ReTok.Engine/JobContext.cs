using System.Formats.Tar;
using System.Text.Json;
using ReTok.Tracking;

namespace ReTok.Engine;

/// <summary>
/// What a handler gets: identity (RunId, Device), progress, batched metrics and logs, artifacts, verified inputs with
/// lineage, checkpoints and fan-out. Every write is fenced by the run lease: after a takeover it throws
/// <see cref="LeaseLostException"/> and <see cref="CancellationToken"/> fires.
/// </summary>
public sealed class JobContext
{
    readonly ExecutionScope _s;
    readonly object _lock = new();
    List<MetricValue> _metrics = new();
    List<LogLine> _logs = new();
    readonly Queue<(DateTimeOffset At, double Done)> _rate = new();
    (double Done, double Total, string? Message)? _progress;
    readonly Dictionary<string, string> _inputs;

    internal JobContext(ExecutionScope scope, Run run, IReadOnlyList<string> devices, string scratch)
    {
        _s = scope;
        Run = run;
        Devices = devices;
        ScratchDir = scratch;
        _inputs = JsonSerializer.Deserialize<Dictionary<string, string>>(run.Inputs) ?? new();
        Checkpoints = new RunCheckpoints(scope.Tracker, scope.Lease.Fence, scratch, scope.WriteToken, FlushAsync, m => Log(m),
            loadFrom: run.NodeRank > 0 ? run.ParentRunId : null);
    }

    /// <summary>The run row as it was when this execution started.</summary>
    public Run Run { get; }
    public long RunId => Run.Id;
    /// <summary>"cpu" or "cuda:N": the first device slot this execution leased (GPU jobs own it for their lifetime).</summary>
    public string Device => Devices[0];
    /// <summary>Every device slot leased for this execution: the spec's <c>gpus: N</c>, taken together on this worker.</summary>
    public IReadOnlyList<string> Devices { get; }
    /// <summary>1 for the first execution; higher after a crash or a transient-failure retry (a graceful re-queue does not count).</summary>
    public int Attempt => _s.Lease.Attempt;
    /// <summary>A private working folder, deleted when the execution ends.</summary>
    public string ScratchDir { get; }
    /// <summary>Fires on `retok runs cancel`, on worker shutdown (SIGTERM) and when the lease is lost. Checkpoint, then stop.</summary>
    public CancellationToken CancellationToken => _s.Token;
    /// <summary>For reads (other runs' metrics, artifacts). Writes should go through the context so they are fenced.</summary>
    public Tracker Tracker => _s.Tracker;
    /// <summary>
    /// This run's checkpoints: latest + milestones with retention, JSON state, parts of large outputs; fenced by the
    /// lease. Buffered metrics are flushed before each save, so a resume never finds metrics behind its checkpoint.
    /// </summary>
    public RunCheckpoints Checkpoints { get; }
    /// <summary>On a shard: its place in the fan-out (0-based, the order the aggregator sees); null on other runs.</summary>
    public int? ShardIndex => Run.ShardIndex;
    public IReadOnlyCollection<string> InputRoles => _inputs.Keys;
    /// <summary>Rank runs in this run's node group (spec key <c>nodes</c>); 1 for an ordinary run.</summary>
    public int Nodes => Run.Nodes;
    /// <summary>This run's rank in its node group: 0 on the submitted run (it writes checkpoints and outputs), 1..N-1 on the ranks it spawned.</summary>
    public int NodeRank => Run.NodeRank;
    /// <summary>The node group's id: rank 0's run id.</summary>
    public long NodeGroupId => Run.NodeRank == 0 ? Run.Id : Run.ParentRunId ?? throw new InvalidOperationException($"rank run {RunId} has no rank 0");

    public void ThrowIfCancellationRequested() => CancellationToken.ThrowIfCancellationRequested();

    // ------------------------------------------------------------ progress, metrics, logs

    /// <summary>Reports progress; the engine derives the ETA from the recent rate and publishes both at the next heartbeat.</summary>
    public void ReportProgress(double done, double total, string? message = null)
    {
        lock (_lock)
        {
            _progress = (done, total, message);
            var now = DateTimeOffset.UtcNow;
            _rate.Enqueue((now, done));
            while (_rate.Count > 2 && now - _rate.Peek().At > TimeSpan.FromMinutes(2)) _rate.Dequeue();
        }
    }

    internal ProgressSnapshot? Snapshot()
    {
        lock (_lock)
        {
            if (_progress is not { } p) return null;
            var fraction = p.Total > 0 ? Math.Clamp(p.Done / p.Total, 0, 1) : 0;
            double? eta = null;
            if (_rate.Count >= 2)
            {
                var (t0, d0) = _rate.Peek();
                var rate = (p.Done - d0) / Math.Max(1e-3, (DateTimeOffset.UtcNow - t0).TotalSeconds);
                if (rate > 0) eta = Math.Max(0, (p.Total - p.Done) / rate);
            }
            return new ProgressSnapshot(fraction, p.Message, eta, DateTimeOffset.UtcNow);
        }
    }

    /// <summary>Buffers a point; points are upserted in batches (heartbeat, checkpoint, end), so re-logging a step after a resume replaces it.</summary>
    public void LogMetric(string key, long step, double value)
    {
        lock (_lock) _metrics.Add(new MetricValue(key, step, value, DateTimeOffset.UtcNow));
    }

    public void LogMetrics(long step, params (string Key, double Value)[] values)
    {
        var now = DateTimeOffset.UtcNow;
        lock (_lock) foreach (var (k, v) in values) _metrics.Add(new MetricValue(k, step, v, now));
    }

    /// <summary>
    /// Records how the metrics <paramref name="keys"/> were evaluated (docs/evaluation.md "Provenance"); written at once
    /// and fenced. The run's code version and seed fill <see cref="EvalProvenance.CodeVersion"/>/<see cref="EvalProvenance.Seed"/> when not given.
    /// </summary>
    public Task RecordProvenanceAsync(IEnumerable<string> keys, EvalProvenance provenance) =>
        _s.Tracker.RecordProvenanceAsync(RunId, keys.ToList(),
            provenance with { CodeVersion = provenance.CodeVersion ?? Run.CodeVersion, Seed = provenance.Seed ?? Run.Seed }, _s.Lease.Fence, _s.WriteToken);

    /// <summary>A line in the run's log (tracked, shown by `retok runs show` and the dashboard) and on the worker's console.</summary>
    public void Log(string message, string level = "info")
    {
        lock (_lock) _logs.Add(new LogLine(level, message, DateTimeOffset.UtcNow));
        _s.Echo($"[run {RunId}] {level}: {message}");
    }

    /// <summary>Writes buffered metrics and logs now (fenced).</summary>
    public async Task FlushAsync()
    {
        List<MetricValue> m; List<LogLine> l;
        lock (_lock) { (m, _metrics) = (_metrics, new()); (l, _logs) = (_logs, new()); }
        try
        {
            await _s.Tracker.LogMetricsAsync(RunId, m, _s.Lease.Fence, _s.WriteToken);
            await _s.Tracker.LogAsync(RunId, l, _s.Lease.Fence, _s.WriteToken);
        }
        catch (Exception ex) when (ex is not LeaseLostException)
        {
            lock (_lock) { _metrics.InsertRange(0, m); _logs.InsertRange(0, l); } // keep them for the next flush
            throw;
        }
    }

    // ------------------------------------------------------------ artifacts

    public Task<Artifact> SaveArtifactAsync(string name, Stream content, string kind = "other", bool overwrite = false, string? contentType = null, object? metadata = null) =>
        _s.Tracker.SaveArtifactAsync(RunId, name, content, Options(kind, overwrite, contentType, metadata), _s.Lease.Fence, _s.WriteToken);

    public Task<Artifact> SaveArtifactFileAsync(string name, string path, string kind = "other", bool overwrite = false, string? contentType = null, object? metadata = null) =>
        _s.Tracker.SaveArtifactFileAsync(RunId, name, path, Options(kind, overwrite, contentType, metadata), _s.Lease.Fence, _s.WriteToken);

    /// <summary>A run's outputs as one unit: all files are uploaded, then registered in one transaction (all or none).</summary>
    public Task<List<Artifact>> SaveArtifactFilesAsync(params (string Name, string Path, string Kind, bool Overwrite, string? ContentType, object? Metadata)[] files) =>
        _s.Tracker.SaveArtifactFilesAsync(RunId, files.Select(f => (f.Name, f.Path, Options(f.Kind, f.Overwrite, f.ContentType, f.Metadata))).ToList(), _s.Lease.Fence, _s.WriteToken);

    /// <summary>Stores a folder as one tar artifact (read back with <see cref="GetInputDirAsync"/>).</summary>
    public async Task<Artifact> SaveArtifactDirAsync(string name, string dir, string kind = "tar", bool overwrite = false, object? metadata = null)
    {
        var tar = Path.Combine(ScratchDir, $".tar-{Guid.NewGuid():N}");
        try
        {
            await TarFile.CreateFromDirectoryAsync(dir, tar, includeBaseDirectory: false, _s.WriteToken);
            return await SaveArtifactFileAsync(name, tar, kind, overwrite, "application/x-tar", metadata);
        }
        finally { File.Delete(tar); }
    }

    static ArtifactSaveOptions Options(string kind, bool overwrite, string? contentType, object? metadata) => new()
    {
        Kind = kind, Overwrite = overwrite, ContentType = contentType ?? ContentTypes.Guess(kind),
        MetadataJson = metadata is null ? null : JsonSerializer.Serialize(metadata),
    };

    // ------------------------------------------------------------ inputs and lineage

    /// <summary>The local, sha256-verified file of input <paramref name="role"/> (from the spec's inputs:); records lineage.</summary>
    public async Task<string> GetInputFileAsync(string role)
    {
        var a = await ResolveInputAsync(role);
        return await FetchAsync(a, role);
    }

    /// <summary>An input saved with <see cref="SaveArtifactDirAsync"/>, extracted into a fresh folder.</summary>
    public async Task<string> GetInputDirAsync(string role)
    {
        var file = await GetInputFileAsync(role);
        var dir = Path.Combine(ScratchDir, "inputs", role);
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.CreateDirectory(dir);
        await TarFile.ExtractToDirectoryAsync(file, dir, overwriteFiles: true, _s.WriteToken);
        return dir;
    }

    /// <summary>The artifact row behind input <paramref name="role"/>, without downloading it.</summary>
    public async Task<Artifact> ResolveInputAsync(string role)
    {
        if (!_inputs.TryGetValue(role, out var reference))
            throw new JobFailedException($"run {RunId} has no input '{role}' (inputs: {(_inputs.Count == 0 ? "none" : string.Join(", ", _inputs.Keys))})");
        if (!InputRef.TryParse(reference, out var r)) throw new JobFailedException($"input '{role}': bad reference '{reference}'");
        long producer;
        if (r.RunId is { } id) producer = id;
        else producer = await _s.Tracker.Runs.FindStepRunAsync(Run.PipelineId, r.Step!)
                        ?? throw new JobFailedException($"input '{role}' = '{reference}': step '{r.Step}' has no succeeded run");
        // The step's final run may be an aggregator; the artifact may also come from the run that spawned it.
        for (long? next = producer; next is { } cur;)
        {
            if (await _s.Tracker.GetArtifactAsync(cur, r.Artifact) is { } a) return a;
            next = (await _s.Tracker.Runs.GetAsync(cur))?.ParentRunId is { } parent && r.Step is not null ? parent : null;
        }
        throw new JobFailedException($"input '{role}' = '{reference}': run {producer} has no artifact '{r.Artifact}'");
    }

    /// <summary>Any run's artifact as a verified local file, recorded as an input of this run under <paramref name="role"/>.</summary>
    public async Task<string> GetRunArtifactFileAsync(long runId, string name, string role)
    {
        var a = await _s.Tracker.GetArtifactAsync(runId, name) ?? throw new JobFailedException($"run {runId} has no artifact '{name}'");
        return await FetchAsync(a, role);
    }

    /// <summary>Records lineage for an artifact this run used without downloading it (it had the same bytes locally).</summary>
    public Task RecordUseAsync(Artifact a, string role) => _s.Tracker.RecordUseAsync(RunId, a.Id, role, _s.Lease.Fence, _s.WriteToken);

    async Task<string> FetchAsync(Artifact a, string role)
    {
        // Content-addressed cache: the same bytes are downloaded (and verified) once per machine.
        var path = Path.Combine(_s.CacheDir, a.Sha256, Path.GetFileName(a.Name));
        if (!File.Exists(path)) await _s.Tracker.DownloadArtifactAsync(a, path, _s.WriteToken);
        await _s.Tracker.RecordUseAsync(RunId, a.Id, role, _s.Lease.Fence, _s.WriteToken);
        return path;
    }

    // ------------------------------------------------------------ node groups

    /// <summary>
    /// Rank 0 of a node group: publishes <paramref name="value"/> (opaque to the engine: a TCP address, an NCCL unique id)
    /// for this execution; ranks 1..N-1 read it with <see cref="WaitRendezvousAsync"/>. Each execution of rank 0 publishes
    /// a new generation (its lease generation), so a retried group never meets at a stale address.
    /// </summary>
    public async Task PublishRendezvousAsync(string value)
    {
        if (NodeRank != 0) throw new InvalidOperationException($"run {RunId} is rank {NodeRank}; only rank 0 publishes the rendezvous");
        var gen = await _s.Tracker.Runs.PublishRendezvousAsync(_s.Lease.Fence, value, _s.WriteToken);
        Log($"node group {NodeGroupId}: rank 0 published rendezvous generation {gen} for {Nodes} nodes");
    }

    /// <summary>
    /// Ranks 1..N-1: waits for a generation of rank 0's rendezvous that this rank has not joined before and returns its
    /// value. Fails at once when rank 0 has ended (JobFailedException) and with a <see cref="TimeoutException"/> (retried
    /// like any transient fault) when none appears within <paramref name="timeout"/>.
    /// </summary>
    public async Task<string> WaitRendezvousAsync(TimeSpan timeout)
    {
        if (NodeRank == 0) throw new InvalidOperationException($"run {RunId} is rank 0; it publishes the rendezvous");
        try
        {
            var j = await _s.Tracker.Runs.WaitRendezvousAsync(_s.Lease.Fence, NodeGroupId, NodeRank, timeout, ct: CancellationToken);
            Log($"node group {NodeGroupId}: rank {NodeRank} joined rendezvous generation {j.Generation}");
            return j.Value;
        }
        catch (RendezvousAbandonedException e) { throw new JobFailedException(e.Message); }
    }

    /// <summary>
    /// Rank 0's start: creates ranks 1..N-1 once (same kind, parameters and inputs, pinned as run:ID/NAME) and queues them;
    /// on a later execution it re-queues ranks that failed or were cancelled, so `retry` of rank 0 revives the group.
    /// </summary>
    internal async Task StartNodeGroupAsync()
    {
        var inputs = new Dictionary<string, string>();
        foreach (var role in _inputs.Keys.Order(StringComparer.Ordinal))
        {
            var a = await ResolveInputAsync(role);
            inputs[role] = $"run:{a.RunId}/{a.Name}";
        }
        var (ranks, created) = await _s.Tracker.Runs.SpawnRanksAsync(_s.Lease.Fence, JsonSerializer.Serialize(inputs), _s.WriteToken);
        if (created)
        {
            foreach (var r in ranks) await _s.Client.EnqueueAsync(r.RunId, r.Queue, priority: Run.Priority, ct: _s.WriteToken);
            Log($"node group of {Nodes}: spawned ranks 1..{Nodes - 1} (runs {string.Join(", ", ranks.Select(r => r.RunId))})");
            return;
        }
        foreach (var r in ranks.Where(r => r.Status is RunStatus.Failed or RunStatus.Cancelled))
            if (await _s.Client.RetryAsync(r.RunId, _s.WriteToken) is { } st) Log($"node group: rank {r.Rank} (run {r.RunId}) was {r.Status}, now {st}");
    }

    // ------------------------------------------------------------ fan-out

    /// <summary>
    /// Fans this run out, the one shape every fanning kind has (<see cref="IFanOutJob{TParams}"/>): one shard run of this
    /// kind per element of <paramref name="shardStates"/> and one <c>KIND-aggregate</c> run that starts exactly once, when
    /// every shard has succeeded (a failed shard is retried alone; the aggregator waits). Every child runs with
    /// <paramref name="parameters"/> (default: this run's) and this run's inputs, pinned to the artifacts they name now;
    /// each gets its element of <paramref name="shardStates"/> (the aggregator <paramref name="aggregateState"/>) through
    /// <see cref="GetFanOutState{T}"/>, which the engine stores beside the parameters so a spec can never set it. The
    /// aggregator takes over this run's pipeline step and may fan out again (a search's next round). Idempotent: a
    /// re-executed parent gets the fan-out it created before. Shards must not spawn shards themselves.
    /// </summary>
    public async Task<FanOut> SpawnShardsAsync(IReadOnlyList<object> shardStates, object? aggregateState = null, object? parameters = null)
    {
        if (Run.FanInRunId is not null) throw new JobFailedException($"run {RunId} is a shard; nested fan-out is not supported");
        var kind = _s.Kinds.Get(Run.Kind);
        var sk = _s.Kinds.Get(kind.ShardKind);
        if (!_s.Kinds.TryGet(sk.Name + JobKindInfo.AggregateSuffix, out var ak) || ak.AggregateOf != sk.Name)
            throw new InvalidOperationException($"job kind '{sk.Name}' fans out but does not implement IFanOutJob<{sk.ParamsType.Name}>");
        var json = Run.Parameters;
        if (parameters is not null)
        {
            if (parameters.GetType() != sk.ParamsType) throw new ArgumentException($"fan-out params: job kind '{sk.Name}' takes {sk.ParamsType.Name}, got {parameters.GetType().Name}");
            ParamBinder.Validate(parameters, "fan-out params");
            json = ParamBinder.ToJson(parameters);
        }
        // Pinned as run:ID/NAME: a child resolves exactly what the parent saw, wherever it runs and whatever its pipeline does next.
        var inputs = new Dictionary<string, string>();
        foreach (var role in _inputs.Keys.Order(StringComparer.Ordinal))
        {
            var a = await ResolveInputAsync(role);
            inputs[role] = $"run:{a.RunId}/{a.Name}";
        }
        var inputsJson = JsonSerializer.Serialize(inputs);
        // Children follow the parent's queue (a spec may have overridden it); shards and aggregator are the same kind.
        ChildRun Child(JobKindInfo k, object? state) => new(k.Name, json, StepPlan.ConfigHashOf(k.Name, json), Run.Queue, inputsJson,
            state is null ? null : JsonSerializer.Serialize(state, ParamBinder.Json));

        var (fan, created) = await _s.Tracker.Runs.SpawnShardsAsync(_s.Lease.Fence, Child(ak, aggregateState), shardStates.Select(st => Child(sk, st)).ToList(), _s.WriteToken);
        if (created)
        {
            foreach (var id in fan.ShardRunIds) await _s.Client.EnqueueAsync(id, Run.Queue, ct: _s.WriteToken);
            if (fan.ShardRunIds.Count == 0) await _s.Client.EnqueueAsync(fan.AggregatorRunId, Run.Queue, ct: _s.WriteToken);
            Log($"spawned {fan.ShardRunIds.Count} '{sk.Name}' shards (runs {string.Join(", ", fan.ShardRunIds)}); aggregator '{ak.Name}' is run {fan.AggregatorRunId}");
        }
        return fan;
    }

    /// <summary>The state this shard or aggregator was given at fan-out (<see cref="SpawnShardsAsync"/>).</summary>
    public T GetFanOutState<T>() where T : class =>
        (Run.FanOutState is { } json ? JsonSerializer.Deserialize<T>(json, ParamBinder.Json) : null)
        ?? throw new JobFailedException($"run {RunId} ({Run.Kind}) has no fan-out state: only a fan-out creates shards and aggregators");

    /// <summary>For an aggregator: its shard runs in shard order.</summary>
    public Task<List<Run>> GetShardsAsync() => _s.Tracker.Runs.GetShardsAsync(RunId);
}

static class ContentTypes
{
    public static string Guess(string kind) => kind switch
    {
        "json" => "application/json", "yaml" => "application/yaml", "image" => "image/png", "plot" => "image/png",
        "checkpoint" or "tar" => "application/x-tar", "text" or "log" => "text/plain", _ => "application/octet-stream",
    };
}

using System.Formats.Tar;
using System.Text.Json;
using System.Text.Json.Nodes;
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
    public int? ShardIndex => Run.ShardIndex;
    public IReadOnlyCollection<string> InputRoles => _inputs.Keys;

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

    // ------------------------------------------------------------ checkpoints

    public const string CheckpointName = "checkpoints/latest";

    /// <summary>
    /// Saves a checkpoint: <paramref name="write"/> fills a fresh folder, which is stored as one tar artifact
    /// (checkpoints/latest, overwritten) tagged with <paramref name="step"/>. Buffered metrics are flushed first.
    /// Atomic: until the artifact row is updated the previous checkpoint stays current.
    /// </summary>
    /// <param name="milestone">Also keep this checkpoint as <c>checkpoints/step-NNNNNNNNNN</c> (a resume or evaluation point
    /// that later saves do not overwrite); then only the newest <paramref name="keepMilestones"/> milestones keep their
    /// content (0 = all), older ones are released (replaced by an empty file, which frees their storage).</param>
    public async Task SaveCheckpointAsync(long step, Func<string, Task> write, bool milestone = false, int keepMilestones = 0)
    {
        var dir = Path.Combine(ScratchDir, $"ckpt-save-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            await write(dir);
            await FlushAsync();
            await SaveArtifactDirAsync(CheckpointName, dir, "checkpoint", overwrite: true, metadata: new { step });
            if (milestone)
            {
                await SaveArtifactDirAsync(MilestoneName(step), dir, "checkpoint", overwrite: true, metadata: new { step, milestone = true });
                if (keepMilestones > 0) await ReleaseOldMilestonesAsync(keepMilestones);
            }
            Log($"checkpoint saved at step {step}{(milestone ? " (milestone)" : "")}");
        }
        finally { Directory.Delete(dir, true); }
    }

    public const string MilestonePrefix = "checkpoints/step-";

    /// <summary>Zero-padded so that names sort by step.</summary>
    public static string MilestoneName(long step) => $"{MilestonePrefix}{step:D10}";

    private async Task ReleaseOldMilestonesAsync(int keep)
    {
        var old = (await _s.Tracker.ListArtifactsAsync(RunId))
            .Where(a => a.Name.StartsWith(MilestonePrefix) && a.SizeBytes > 0)
            .OrderByDescending(a => a.Name, StringComparer.Ordinal).Skip(keep).ToList();
        foreach (var a in old)
            await SaveArtifactAsync(a.Name, new MemoryStream(), "checkpoint", overwrite: true,
                metadata: new { step = JsonNode.Parse(a.Metadata)?["step"]?.GetValue<long>(), milestone = true, released = true });
    }

    /// <summary>The latest checkpoint of this run (from an earlier execution), extracted, with its step; null if none.</summary>
    public async Task<(string Dir, long Step)?> LoadCheckpointAsync()
    {
        var a = await _s.Tracker.GetArtifactAsync(RunId, CheckpointName);
        if (a is null) return null;
        var tar = Path.Combine(ScratchDir, $".ckpt-{Guid.NewGuid():N}.tar");
        var dir = Path.Combine(ScratchDir, "checkpoint");
        try
        {
            await _s.Tracker.DownloadArtifactAsync(a, tar, _s.WriteToken);
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            Directory.CreateDirectory(dir);
            await TarFile.ExtractToDirectoryAsync(tar, dir, overwriteFiles: true, _s.WriteToken);
        }
        finally { File.Delete(tar); }
        var step = JsonNode.Parse(a.Metadata)?["step"]?.GetValue<long>() ?? 0;
        Log($"resuming from checkpoint at step {step}");
        return (dir, step);
    }

    // ------------------------------------------------------------ fan-out

    /// <summary>
    /// Spawns one run of <paramref name="shardKind"/> per element of <paramref name="shardParams"/> and one
    /// <paramref name="aggregatorKind"/> run that starts exactly once, when every shard has succeeded (a failed shard is
    /// retried alone; the aggregator waits). The aggregator takes over this run's pipeline step. Idempotent: a re-executed
    /// parent gets the fan-out it created before. Shards must not spawn shards themselves.
    /// </summary>
    public async Task<FanOut> SpawnShardsAsync(string shardKind, IReadOnlyList<object> shardParams, string aggregatorKind, object aggregatorParams)
    {
        if (Run.FanInRunId is not null) throw new JobFailedException($"run {RunId} is a shard; nested fan-out is not supported");
        var sk = _s.Kinds.Get(shardKind);
        var ak = _s.Kinds.Get(aggregatorKind);
        string Json(JobKindInfo k, object p, string what)
        {
            if (p.GetType() != k.ParamsType) throw new ArgumentException($"{what}: job kind '{k.Name}' takes {k.ParamsType.Name}, got {p.GetType().Name}");
            ParamBinder.Validate(p, what);
            return ParamBinder.ToJson(p);
        }
        var shardJson = shardParams.Select((p, i) => Json(sk, p, $"shard {i} params")).ToList();
        // Children follow the parent's queue (a spec may have overridden it) unless their kind needs another kind of queue.
        var parentDefault = _s.Kinds.TryGet(Run.Kind, out var pk) ? pk.Queue : Run.Queue;
        string QueueOf(JobKindInfo k) => k.Queue == parentDefault ? Run.Queue : k.Queue;
        var aggJson = Json(ak, aggregatorParams, "aggregator params");
        ChildRun Child(JobKindInfo k, string json) => new(k.Name, json, StepPlan.ConfigHashOf(k.Name, json), QueueOf(k));

        var (fan, created) = await _s.Tracker.Runs.SpawnShardsAsync(_s.Lease.Fence, Child(ak, aggJson), shardJson.Select(j => Child(sk, j)).ToList(), _s.WriteToken);
        if (created)
        {
            foreach (var id in fan.ShardRunIds) await _s.Client.EnqueueAsync(id, QueueOf(sk), ct: _s.WriteToken);
            if (fan.ShardRunIds.Count == 0) await _s.Client.EnqueueAsync(fan.AggregatorRunId, QueueOf(ak), ct: _s.WriteToken);
            Log($"spawned {fan.ShardRunIds.Count} '{shardKind}' shards (runs {string.Join(", ", fan.ShardRunIds)}); aggregator '{aggregatorKind}' is run {fan.AggregatorRunId}");
        }
        return fan;
    }

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

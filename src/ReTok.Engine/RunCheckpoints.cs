using System.Formats.Tar;
using System.Text.Json;
using System.Text.Json.Nodes;
using ReTok.Tracking;

namespace ReTok.Engine;

/// <summary>
/// The engine's checkpoint policy for one execution (<see cref="JobContext.Checkpoints"/>): the latest checkpoint,
/// milestones with retention, JSON state, and parts for outputs too large for one tar. Everything is files and bytes
/// (the kinds serialize their tensors), and every write is fenced by the run lease, so an executor whose lease was
/// taken over cannot overwrite what its successor saved (<see cref="LeaseLostException"/>).
/// </summary>
public sealed class RunCheckpoints
{
    /// <summary>The checkpoint a resumed execution starts from, overwritten atomically by every save.</summary>
    public const string Latest = "checkpoints/latest";
    public const string MilestonePrefix = "checkpoints/step-";
    public const string PartPrefix = "checkpoints/parts/";

    readonly Tracker _tracker;
    readonly Fence _fence;
    readonly string _scratch;
    readonly CancellationToken _write;
    readonly Func<Task> _flush;
    readonly Action<string> _log;
    readonly long? _loadFrom;

    /// <param name="fence">The lease every write is checked against.</param>
    /// <param name="write">Cancelled only when the lease is lost: a cancelled handler must still be able to checkpoint.</param>
    /// <param name="flush">Runs before a checkpoint is stored (the context flushes buffered metrics, so they never lag it).</param>
    /// <param name="loadFrom">The run whose checkpoints <see cref="LoadAsync"/> reads, when not this one: rank r &gt; 0 of a node
    /// group resumes from rank 0's (only rank 0 writes them).</param>
    public RunCheckpoints(Tracker tracker, Fence fence, string scratchDir, CancellationToken write = default, Func<Task>? flush = null, Action<string>? log = null,
        long? loadFrom = null)
    {
        (_tracker, _fence, _scratch, _write, _loadFrom) = (tracker, fence, scratchDir, write, loadFrom);
        _flush = flush ?? (() => Task.CompletedTask);
        _log = log ?? (_ => { });
    }

    long RunId => _fence.RunId;

    /// <summary>Zero-padded so that names sort by step.</summary>
    public static string MilestoneName(long step) => $"{MilestonePrefix}{step:D10}";

    /// <summary>
    /// Saves a checkpoint: <paramref name="write"/> fills a fresh folder, which is stored as one tar artifact
    /// (<see cref="Latest"/>, overwritten) tagged with <paramref name="step"/>. Atomic: until the artifact row is updated
    /// the previous checkpoint stays current.
    /// </summary>
    /// <param name="milestone">Also keep this checkpoint as <c>checkpoints/step-NNNNNNNNNN</c> (a resume or evaluation point
    /// that later saves do not overwrite); then only the newest <paramref name="keepMilestones"/> milestones keep their
    /// content (0 = all), older ones are released (replaced by an empty file, which frees their storage).</param>
    public async Task SaveAsync(long step, Func<string, Task> write, bool milestone = false, int keepMilestones = 0)
    {
        var dir = Path.Combine(_scratch, $"ckpt-save-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            await write(dir);
            await _flush();
            await SaveDirAsync(Latest, dir, new { step });
            if (milestone)
            {
                await SaveDirAsync(MilestoneName(step), dir, new { step, milestone = true });
                if (keepMilestones > 0) await ReleaseOldMilestonesAsync(keepMilestones);
            }
            _log($"checkpoint saved at step {step}{(milestone ? " (milestone)" : "")}");
        }
        finally { Directory.Delete(dir, true); }
    }

    async Task SaveDirAsync(string name, string dir, object metadata)
    {
        var tar = Path.Combine(_scratch, $".tar-{Guid.NewGuid():N}");
        try
        {
            await TarFile.CreateFromDirectoryAsync(dir, tar, includeBaseDirectory: false, _write);
            await _tracker.SaveArtifactFileAsync(RunId, name, tar, Options(metadata), _fence, _write);
        }
        finally { File.Delete(tar); }
    }

    static ArtifactSaveOptions Options(object? metadata) => new()
    {
        Kind = "checkpoint", Overwrite = true, ContentType = "application/x-tar", MetadataJson = metadata is null ? null : JsonSerializer.Serialize(metadata),
    };

    async Task ReleaseOldMilestonesAsync(int keep)
    {
        var old = (await _tracker.ListArtifactsAsync(RunId))
            .Where(a => a.Name.StartsWith(MilestonePrefix) && a.SizeBytes > 0)
            .OrderByDescending(a => a.Name, StringComparer.Ordinal).Skip(keep).ToList();
        foreach (var a in old)
            await _tracker.SaveArtifactAsync(RunId, a.Name, new MemoryStream(),
                Options(new { step = JsonNode.Parse(a.Metadata)?["step"]?.GetValue<long>(), milestone = true, released = true }), _fence, _write);
    }

    /// <summary>The latest checkpoint of this run (from an earlier execution; on a rank r &gt; 0 of a node group rank 0's),
    /// extracted, with its step; null if none.</summary>
    public async Task<(string Dir, long Step)?> LoadAsync()
    {
        var a = await _tracker.GetArtifactAsync(_loadFrom ?? RunId, Latest);
        if (a is null) return null;
        var tar = Path.Combine(_scratch, $".ckpt-{Guid.NewGuid():N}.tar");
        var dir = Path.Combine(_scratch, "checkpoint");
        try
        {
            await _tracker.DownloadArtifactAsync(a, tar, _write);
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            Directory.CreateDirectory(dir);
            await TarFile.ExtractToDirectoryAsync(tar, dir, overwriteFiles: true, _write);
        }
        finally { File.Delete(tar); }
        var step = JsonNode.Parse(a.Metadata)?["step"]?.GetValue<long>() ?? 0;
        _log($"resuming from checkpoint at step {step}");
        return (dir, step);
    }

    /// <summary>Saves a JSON state object as the latest checkpoint (state.json) tagged with <paramref name="step"/>.</summary>
    public Task SaveStateAsync<T>(long step, T state) => SaveAsync(step, dir =>
        File.WriteAllTextAsync(Path.Combine(dir, "state.json"), JsonSerializer.Serialize(state, ParamBinder.Json)));

    /// <summary>The state saved by an earlier execution of this run, or null on a fresh start.</summary>
    public async Task<T?> LoadStateAsync<T>() where T : class
    {
        if (await LoadAsync() is not { } ck) return null;
        var file = Path.Combine(ck.Dir, "state.json");
        if (!File.Exists(file)) throw new JobFailedException($"run {RunId}: checkpoint has no state.json");
        return JsonSerializer.Deserialize<T>(await File.ReadAllTextAsync(file), ParamBinder.Json);
    }

    // ------------------------------------------------------------ parts

    // Resumable outputs too large for one checkpoint tar (a 50k-image npz is ~10 GB): every processed chunk is saved once
    // as its own artifact checkpoints/parts/NAME, and only a small state (which parts exist, where to go on) goes into
    // the latest checkpoint. A checkpoint then costs one chunk of upload instead of everything so far. Once the final
    // outputs are registered the parts are released (overwritten with empty files, which frees their storage; the tracker
    // deletes a replaced object); a run resumed after that point finds its state marked done and does not need them.

    /// <summary>Stores a local file as part <paramref name="name"/> of this run.</summary>
    public Task SavePartAsync(string name, string localPath) =>
        _tracker.SaveArtifactFileAsync(RunId, PartPrefix + name, localPath, Options(null), _fence, _write);

    /// <summary>A part of run <paramref name="runId"/> (this run or a shard) as a verified local file under <paramref name="dir"/>.</summary>
    public async Task<string> FetchPartAsync(long runId, string name, string dir)
    {
        var a = await _tracker.GetArtifactAsync(runId, PartPrefix + name)
                ?? throw new JobFailedException($"run {runId} has no checkpoint part '{PartPrefix + name}' (its checkpoint state lists it)");
        if (a.SizeBytes == 0)
            throw new JobFailedException($"checkpoint part '{PartPrefix + name}' of run {runId} was already released (the run finished); re-run the producer");
        var path = Path.Combine(dir, $"r{runId}-{name}");
        if (!File.Exists(path)) await _tracker.DownloadArtifactAsync(a, path, _write);
        return path;
    }

    /// <summary>
    /// Replaces parts with empty files (frees their storage); only after the final outputs are registered. The parts
    /// may belong to this run or, for an aggregator, to one of its shards (finished runs nobody else writes to); either
    /// way the write is fenced by this run's lease.
    /// </summary>
    public async Task ReleasePartsAsync(IEnumerable<string> names, long? shardRunId = null)
    {
        var owner = shardRunId ?? RunId;
        if (owner != RunId && (await _tracker.Runs.GetAsync(owner))?.FanInRunId != RunId)
            throw new InvalidOperationException($"run {RunId} may release only its own checkpoint parts or its shards', not run {owner}'s");
        foreach (var n in names)
            await _tracker.SaveArtifactAsync(owner, PartPrefix + n, new MemoryStream(),
                Options(owner == RunId ? new { released = true } : new { released = true, by_run = RunId }), _fence, _write);
    }
}

using System.Text.Json;
using ReTok.Engine;

namespace ReTok.Jobs.Kinds.Shared;

/// <summary>
/// Resumable outputs too large for one checkpoint tar (a 50k-image npz is ~10 GB): every processed chunk is saved once
/// as its own checkpoint artifact <c>checkpoints/parts/NAME</c>, and only a small state (which parts exist, where to go
/// on) goes into <c>checkpoints/latest</c>. A checkpoint then costs one chunk of upload instead of everything so far.
/// Once the final outputs are registered, the parts are overwritten with empty files, which frees their storage (the
/// tracker deletes a replaced object); a run resumed after that point finds its state marked done and does not need them.
/// </summary>
public static class CheckpointParts
{
    public const string Prefix = "checkpoints/parts/";

    public static Task SaveAsync(JobContext ctx, string name, string localPath) =>
        ctx.SaveArtifactFileAsync(Prefix + name, localPath, "checkpoint", overwrite: true);

    /// <summary>A part of run <paramref name="runId"/> as a verified local file under <paramref name="dir"/>.</summary>
    public static async Task<string> FetchAsync(JobContext ctx, long runId, string name, string dir)
    {
        var a = await ctx.Tracker.GetArtifactAsync(runId, Prefix + name)
                ?? throw new JobFailedException($"run {runId} has no checkpoint part '{Prefix + name}' (its checkpoint state lists it)");
        if (a.SizeBytes == 0)
            throw new JobFailedException($"checkpoint part '{Prefix + name}' of run {runId} was already released (the run finished); re-run the producer");
        var path = Path.Combine(dir, $"r{runId}-{name}");
        if (!File.Exists(path)) await ctx.Tracker.DownloadArtifactAsync(a, path, ctx.CancellationToken);
        return path;
    }

    /// <summary>Replaces the parts with empty files (frees their storage). Only after the final outputs are registered.</summary>
    public static async Task ReleaseAsync(JobContext ctx, IEnumerable<string> names)
    {
        foreach (var n in names)
            await ctx.SaveArtifactAsync(Prefix + n, new MemoryStream(), "checkpoint", overwrite: true, metadata: new { released = true });
    }

    /// <summary>
    /// Releases the parts of another, finished run (a fan-in releasing its shards' parts after registering the merged
    /// outputs). Not fenced: only for runs that are terminal, which nobody else writes to.
    /// </summary>
    public static async Task ReleaseOfRunAsync(JobContext ctx, long runId, IEnumerable<string> names)
    {
        if (runId == ctx.RunId) { await ReleaseAsync(ctx, names); return; }
        foreach (var n in names)
            await ctx.Tracker.SaveArtifactAsync(runId, Prefix + n, new MemoryStream(), new Tracking.ArtifactSaveOptions
            {
                Kind = "checkpoint", Overwrite = true, MetadataJson = JsonSerializer.Serialize(new { released = true, by_run = ctx.RunId }),
            });
    }

    /// <summary>Saves a JSON state object as checkpoints/latest (state.json) tagged with <paramref name="step"/>.</summary>
    public static Task SaveStateAsync<T>(JobContext ctx, long step, T state) => ctx.SaveCheckpointAsync(step, dir =>
        File.WriteAllTextAsync(Path.Combine(dir, "state.json"), JsonSerializer.Serialize(state, ParamBinder.Json)));

    /// <summary>The state saved by an earlier execution of this run, or null on a fresh start.</summary>
    public static async Task<T?> LoadStateAsync<T>(JobContext ctx) where T : class
    {
        if (await ctx.LoadCheckpointAsync() is not { } ck) return null;
        var file = Path.Combine(ck.Dir, "state.json");
        if (!File.Exists(file)) throw new JobFailedException($"run {ctx.RunId}: checkpoint has no state.json");
        return JsonSerializer.Deserialize<T>(await File.ReadAllTextAsync(file), ParamBinder.Json);
    }
}

using Microsoft.EntityFrameworkCore;
using ReTok.Engine;
using ReTok.Evaluation.Features;
using ReTok.Evaluation.Inception;
using ReTok.Evaluation.Metrics;
using ReTok.Models.IO;
using ReTok.Tracking;

namespace ReTok.Jobs.Kinds.Shared;

/// <summary>
/// Inception features of an image batch (pool/spatial/logits, the <see cref="FeatureSet"/> npz) shared between runs and
/// machines as artifacts named <c>features/&lt;sha256 of the npz&gt;-&lt;weights sha256[..16]&gt;[-n&lt;rows&gt;].npz</c>,
/// so a reference batch goes through Inception once per content and weights file. Lookup order: the machine's
/// <see cref="FeatureCache"/> folder (fast path), then any run's artifact of that name (the oldest: the first
/// registered copy is canonical), else compute and register it as an artifact of this run. A run that reads another
/// run's features records them as an input (ArtifactUse, role <c>features</c> unless given).
/// </summary>
public static class FeatureArtifacts
{
    public const string Prefix = "features/";

    public static string NameFor(string contentSha256, string weightsId, long? rows = null) =>
        $"{Prefix}{contentSha256}-{FeatureCache.Short(weightsId)}" + (rows is { } n ? $"-n{n}" : "") + ".npz";

    /// <summary>The first registered, non-empty artifact called <paramref name="name"/>, of any run.</summary>
    public static async Task<Artifact?> FindAsync(Tracker tracker, string name, CancellationToken ct = default)
    {
        await using var db = tracker.CreateDb();
        return await db.Artifacts.AsNoTracking().Where(a => a.Name == name && a.SizeBytes > 0).OrderBy(a => a.Id).FirstOrDefaultAsync(ct);
    }

    /// <summary>sha256 of the weights file (memoised by the local cache when there is one).</summary>
    public static string WeightsId(string weightsPath, FeatureCache? local) =>
        local?.FileSha256(weightsPath) ?? Evaluation.Weights.WeightsRegistry.Sha256(weightsPath);

    /// <summary>
    /// Features of <paramref name="npzPath"/>'s arr_0 (its first <paramref name="rows"/> rows when given):
    /// local cache, else an artifact of any run, else <paramref name="compute"/> (then cached and registered).
    /// <paramref name="contentSha256"/>: the npz's sha256 when known (its artifact row), else it is hashed.
    /// </summary>
    public static async Task<FeatureSet> GetOrComputeAsync(JobContext ctx, string npzPath, string? contentSha256, string weightsId,
        Func<FeatureSet> compute, FeatureCache? local, long? rows = null, string role = "features")
    {
        var sha = contentSha256 ?? local?.FileSha256(npzPath) ?? Evaluation.Weights.WeightsRegistry.Sha256(npzPath);
        var name = NameFor(sha, weightsId, rows);
        var localPath = local?.PathForHash(sha, weightsId, rows);
        var art = await FindAsync(ctx.Tracker, name, ctx.CancellationToken);
        string of = $"of {Path.GetFileName(npzPath)}{(rows is { } r ? $", first {r} rows" : "")}";

        if (localPath is not null && File.Exists(localPath))
        {
            if (art is null)
            {
                await ctx.SaveArtifactFileAsync(name, localPath, "npz", overwrite: true, metadata: Meta(sha, weightsId, rows, npzPath));
                ctx.Log($"features from cache {localPath} ({of}); registered as artifact {name}");
                return FeatureSet.Load(localPath);
            }
            if (art.Sha256 == local!.FileSha256(localPath))
            {
                if (art.RunId != ctx.RunId) await ctx.RecordUseAsync(art, role);
                ctx.Log($"features from cache {localPath} ({of}; = artifact {name} of run {art.RunId})");
                return FeatureSet.Load(localPath);
            }
            ctx.Log($"cached {localPath} differs from artifact {name} of run {art.RunId}; using the artifact (the first registered copy)", "warn");
        }
        if (art is not null)
        {
            var path = await ctx.GetRunArtifactFileAsync(art.RunId, art.Name, role);
            if (localPath is not null) AtomicFile.Write(localPath, s => { using var f = File.OpenRead(path); f.CopyTo(s); });
            ctx.Log($"features from artifact {name} of run {art.RunId} ({of}; not recomputed)");
            return FeatureSet.Load(path);
        }

        var features = compute();
        var outPath = localPath ?? Path.Combine(ctx.ScratchDir, Path.GetFileName(name));
        features.Save(outPath);
        await ctx.SaveArtifactFileAsync(name, outPath, "npz", overwrite: true, metadata: Meta(sha, weightsId, rows, npzPath));
        ctx.Log($"features computed ({features.Count} images {of}); registered as artifact {name}" + (localPath is not null ? $", cached at {localPath}" : ""));
        return features;
    }

    static object Meta(string sha, string weightsId, long? rows, string npzPath) =>
        new { source_sha256 = sha, source_file = Path.GetFileName(npzPath), inception_weights_sha256 = weightsId, rows };

    /// <summary>
    /// A gFID reference batch with per-image features (precision/recall) through the machine's default cache folder and
    /// the feature artifacts; its stored statistics, if any, are used as given. Lineage role <c>reference_features</c>.
    /// </summary>
    public static Task<EvalBatch> OpenReferenceAsync(JobContext ctx, string npzPath, string weightsPath, Func<InceptionExtractor> extractor)
    {
        var local = FeatureCache.Default();
        return OpenBatchAsync(ctx, npzPath, null, WeightsId(weightsPath, local), extractor, local, needFeatures: true, role: "reference_features");
    }

    /// <summary>
    /// A batch npz for the ADM metrics (<see cref="AdmEvaluator.OpenWithFeatures"/>): a features file as is; stored
    /// mu/sigma/mu_s/sigma_s as given, with the features of its arr_0 only when <paramref name="needFeatures"/>
    /// (precision/recall); otherwise the features of arr_0 through <see cref="GetOrComputeAsync"/>.
    /// </summary>
    public static async Task<EvalBatch> OpenBatchAsync(JobContext ctx, string npzPath, string? contentSha256, string weightsId,
        Func<InceptionExtractor> extractor, FeatureCache? local, bool needFeatures, string role = "features")
    {
        var keys = Npz.Keys(npzPath);
        FeatureSet? feats = null;
        bool stats = keys.Contains("mu");
        if (!FeatureSet.IsFeatureFile(keys) && keys.Contains("arr_0") && (needFeatures || !stats))
            feats = await GetOrComputeAsync(ctx, npzPath, contentSha256, weightsId, () =>
            {
                long total = Npz.Header(npzPath, "arr_0").Shape[0];
                return extractor().ExtractNpz(npzPath, "arr_0", new Progress<(long Done, long Total)>(p => ctx.ReportProgress(p.Done, total, $"Inception features of {Path.GetFileName(npzPath)}")));
            }, local, null, role);
        if (stats) ctx.Log($"using the statistics stored in {Path.GetFileName(npzPath)} (mu, sigma, mu_s, sigma_s)");
        return AdmEvaluator.OpenWithFeatures(npzPath, feats, null, keys);
    }
}

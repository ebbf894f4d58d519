using System.Security.Cryptography;

namespace ReTok.Evaluation.Features;

/// <summary>
/// Inception features keyed by sha256(input npz) + the Inception weights id, stored as <c>{dir}/{sha[..32]}-{weights[..16]}.npz</c>.
/// File hashes are remembered in <c>{dir}/hashes.tsv</c> by (full path, size, mtime) so a 10 GB batch is hashed once.
/// Jobs share the same features between machines as artifacts (ReTok.Jobs Kinds/Shared/FeatureArtifacts); this folder is the per-machine fast path.
/// </summary>
public sealed class FeatureCache
{
    public string Dir { get; }

    public FeatureCache(string dir) { Dir = Path.GetFullPath(dir); Directory.CreateDirectory(Dir); }

    public static FeatureCache Default() =>
        new(Path.Combine(Environment.GetEnvironmentVariable("RETOK_HOME") ?? ".state", "cache", "features"));

    public string KeyFor(string inputPath, string weightsId) => KeyForHash(FileSha256(inputPath), weightsId);

    /// <summary>The key of an input whose sha256 is already known (e.g. from its artifact row); <paramref name="rows"/>: features of its first rows only.</summary>
    public static string KeyForHash(string contentSha256, string weightsId, long? rows = null) =>
        $"{contentSha256[..Math.Min(32, contentSha256.Length)]}-{Short(weightsId)}" + (rows is { } n ? $"-n{n}" : "");

    public static string Short(string id) => id.Length > 16 ? id[..16] : id;

    public string PathFor(string inputPath, string weightsId) => Path.Combine(Dir, KeyFor(inputPath, weightsId) + ".npz");

    public string PathForHash(string contentSha256, string weightsId, long? rows = null) => Path.Combine(Dir, KeyForHash(contentSha256, weightsId, rows) + ".npz");

    public bool TryGet(string inputPath, string weightsId, out FeatureSet? features)
    {
        var p = PathFor(inputPath, weightsId);
        features = File.Exists(p) ? FeatureSet.Load(p) : null;
        return features is not null;
    }

    public FeatureSet GetOrCompute(string inputPath, string weightsId, Func<FeatureSet> compute, Action<string>? log = null)
    {
        var p = PathFor(inputPath, weightsId);
        if (File.Exists(p)) { log?.Invoke($"features from cache {p}"); return FeatureSet.Load(p); }
        var f = compute();
        f.Save(p);
        log?.Invoke($"features cached at {p}");
        return f;
    }

    public string FileSha256(string path)
    {
        var fi = new FileInfo(path);
        if (!fi.Exists) throw new FileNotFoundException($"file not found: {path}", path);
        var index = Path.Combine(Dir, "hashes.tsv");
        var id = $"{fi.FullName}\t{fi.Length}\t{fi.LastWriteTimeUtc.Ticks}";
        if (File.Exists(index))
            foreach (var line in File.ReadLines(index))
                if (line.StartsWith(id + "\t")) return line[(id.Length + 1)..];
        string sha;
        using (var f = File.OpenRead(path)) sha = Convert.ToHexStringLower(SHA256.HashData(f));
        lock (typeof(FeatureCache)) File.AppendAllText(index, $"{id}\t{sha}\n");
        return sha;
    }
}

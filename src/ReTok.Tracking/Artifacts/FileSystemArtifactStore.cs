using System.Runtime.CompilerServices;
using System.Security.Cryptography;

namespace ReTok.Tracking.Artifacts;

/// <summary>The embedded default: objects under a root folder, written to a temp file and renamed into place.</summary>
public sealed class FileSystemArtifactStore : IArtifactStore
{
    readonly string _root;
    public string Scheme => "file";

    public FileSystemArtifactStore(string root)
    {
        _root = Path.GetFullPath(root);
        Directory.CreateDirectory(_root);
    }

    public string Root => _root;

    public async Task<StoredObject> PutAsync(string key, Stream content, string contentType = "application/octet-stream", CancellationToken ct = default)
    {
        var path = PathOf(ArtifactNames.Validate(key));
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var tmp = Path.Combine(_root, ".tmp", $"{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.GetDirectoryName(tmp)!);
        try
        {
            long size;
            string sha;
            using (var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
            await using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20, useAsync: true))
            {
                var buf = new byte[1 << 20];
                int n;
                while ((n = await content.ReadAsync(buf, ct)) > 0)
                {
                    hash.AppendData(buf, 0, n);
                    await f.WriteAsync(buf.AsMemory(0, n), ct);
                }
                await f.FlushAsync(ct);
                f.Flush(true);
                size = f.Length;
                sha = Convert.ToHexStringLower(hash.GetHashAndReset());
            }
            File.Move(tmp, path, overwrite: true);
            return new StoredObject(UriOf(key), size, sha);
        }
        catch (IOException ex) when ((ex.HResult & 0xFFFF) == 28 || ex.Message.Contains("No space left"))
        {
            throw new IOException($"disk full while writing artifact '{key}' under {_root}", ex);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }

    public Task<Stream> OpenReadAsync(string uri, string? expectedSha256 = null, CancellationToken ct = default)
    {
        var path = PathOfUri(uri);
        if (!File.Exists(path)) throw new FileNotFoundException($"artifact object {uri} is missing from the store ({path})", path);
        Stream s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, useAsync: true);
        return Task.FromResult(expectedSha256 is null ? s : new VerifyingStream(s, expectedSha256, uri));
    }

    public Task<bool> ExistsAsync(string uri, CancellationToken ct = default) => Task.FromResult(File.Exists(PathOfUri(uri)));

    public Task DeleteAsync(string uri, CancellationToken ct = default)
    {
        var p = PathOfUri(uri);
        if (File.Exists(p)) File.Delete(p);
        return Task.CompletedTask;
    }

    public async IAsyncEnumerable<StoredEntry> ListEntriesAsync(string prefix, [EnumeratorCancellation] CancellationToken ct = default)
    {
        await Task.Yield();
        if (!Directory.Exists(_root)) yield break;
        foreach (var f in Directory.EnumerateFiles(_root, "*", SearchOption.AllDirectories).Order())
        {
            var key = Path.GetRelativePath(_root, f).Replace('\\', '/');
            if (key.StartsWith(".tmp/")) continue;
            if (key.StartsWith(prefix, StringComparison.Ordinal)) yield return new StoredEntry(UriOf(key), File.GetLastWriteTimeUtc(f));
        }
    }

    /// <summary>Local path of an object, for consumers that need a file (e.g. memory-mapped npz).</summary>
    public string LocalPath(string uri) => PathOfUri(uri);

    string UriOf(string key) => "file:///" + key;

    string PathOfUri(string uri)
    {
        if (!uri.StartsWith("file:///")) throw new ArgumentException($"not a filesystem artifact uri: {uri}");
        return PathOf(ArtifactNames.Validate(uri["file:///".Length..]));
    }

    string PathOf(string key)
    {
        var p = Path.GetFullPath(Path.Combine(_root, key));
        if (!p.StartsWith(_root + Path.DirectorySeparatorChar)) throw new ArgumentException($"artifact key '{key}' escapes the store root");
        return p;
    }
}

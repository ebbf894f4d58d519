using System.Security.Cryptography;
using System.Text.RegularExpressions;

namespace ReTok.Tracking.Artifacts;

public sealed record StoredObject(string Uri, long SizeBytes, string Sha256);

/// <summary>
/// Byte storage for artifacts. Contract: an object becomes visible only after all its bytes are written and hashed
/// (no half-written objects after a crash); reads verify the sha256 when one is given.
/// </summary>
public interface IArtifactStore
{
    /// <summary>URI scheme this store answers: "file" or "blob".</summary>
    string Scheme { get; }
    Task<StoredObject> PutAsync(string key, Stream content, string contentType = "application/octet-stream", CancellationToken ct = default);
    /// <summary>Opens for reading; when <paramref name="expectedSha256"/> is set the stream throws on a mismatch at its end.</summary>
    Task<Stream> OpenReadAsync(string uri, string? expectedSha256 = null, CancellationToken ct = default);
    Task<bool> ExistsAsync(string uri, CancellationToken ct = default);
    Task DeleteAsync(string uri, CancellationToken ct = default);
    /// <summary>Objects under <paramref name="prefix"/> with their last-modified time (the orphan sweep's age).</summary>
    IAsyncEnumerable<StoredEntry> ListEntriesAsync(string prefix, CancellationToken ct = default);
}

public sealed record StoredEntry(string Uri, DateTimeOffset LastModified);

public static class ArtifactStoreExtensions
{
    public static async IAsyncEnumerable<string> ListAsync(this IArtifactStore s, string prefix, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct = default)
    {
        await foreach (var e in s.ListEntriesAsync(prefix, ct)) yield return e.Uri;
    }

    public static async Task<StoredObject> PutFileAsync(this IArtifactStore s, string key, string path, string contentType = "application/octet-stream", CancellationToken ct = default)
    {
        await using var f = File.OpenRead(path);
        return await s.PutAsync(key, f, contentType, ct);
    }

    /// <summary>Downloads to <paramref name="path"/> via a temp file, verifying the hash before the rename.</summary>
    public static async Task DownloadToFileAsync(this IArtifactStore s, string uri, string path, string? expectedSha256, CancellationToken ct = default)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + $".part-{Guid.NewGuid():N}";
        try
        {
            await using (var src = await s.OpenReadAsync(uri, expectedSha256, ct))
            await using (var dst = new FileStream(tmp, FileMode.CreateNew))
                await src.CopyToAsync(dst, 1 << 20, ct);
            File.Move(tmp, full, overwrite: true);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }

    public static async Task<byte[]> ReadAllBytesAsync(this IArtifactStore s, string uri, string? expectedSha256 = null, CancellationToken ct = default)
    {
        await using var src = await s.OpenReadAsync(uri, expectedSha256, ct);
        using var ms = new MemoryStream();
        await src.CopyToAsync(ms, ct);
        return ms.ToArray();
    }
}

public static partial class ArtifactNames
{
    [GeneratedRegex(@"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")]
    private static partial Regex Valid();

    /// <summary>Relative, '/'-separated names of letters, digits, '_', '-', '.'; no '..', no absolute paths.</summary>
    public static string Validate(string name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Length > 400 || !Valid().IsMatch(name)
            || name.Split('/').Any(p => p is "." or ".."))
            throw new ArgumentException($"invalid artifact name '{name}': use relative names of letters, digits, '_', '-', '.' separated by '/', without '..' or a leading '/'", nameof(name));
        return name;
    }
}

public sealed class ArtifactIntegrityException(string message) : IOException(message);

/// <summary>Hashes what passes through it and checks the digest when the end is reached.</summary>
internal sealed class VerifyingStream(Stream inner, string expectedSha256, string what) : Stream
{
    readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    bool _checked;

    public override int Read(byte[] buffer, int offset, int count) => Check(inner.Read(buffer, offset, count), buffer.AsSpan(offset));
    public override int Read(Span<byte> buffer) => Check(inner.Read(buffer), buffer);
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default) => Check(await inner.ReadAsync(buffer, ct), buffer.Span);
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken ct) => ReadAsync(buffer.AsMemory(offset, count), ct).AsTask();

    int Check(int n, ReadOnlySpan<byte> data)
    {
        if (n > 0) _hash.AppendData(data[..n]);
        else if (!_checked)
        {
            _checked = true;
            var got = Convert.ToHexStringLower(_hash.GetHashAndReset());
            if (!string.Equals(got, expectedSha256, StringComparison.OrdinalIgnoreCase))
                throw new ArtifactIntegrityException($"artifact {what}: sha256 mismatch (recorded {expectedSha256}, stored bytes hash to {got}); refusing corrupt data");
        }
        return n;
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => inner.Length;
    public override long Position { get => inner.Position; set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    protected override void Dispose(bool disposing) { if (disposing) { inner.Dispose(); _hash.Dispose(); } base.Dispose(disposing); }
}

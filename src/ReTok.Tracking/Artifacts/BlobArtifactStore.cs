using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using Azure;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;
using Azure.Storage.Blobs.Specialized;

namespace ReTok.Tracking.Artifacts;

/// <summary>
/// Azure Blob Storage. Uploads stage blocks and commit the block list last, so a blob is visible only once complete;
/// multi-GB checkpoints stream through in 8 MiB blocks. The sha256 is stored as blob metadata too.
/// </summary>
public sealed class BlobArtifactStore : IArtifactStore
{
    const int BlockSize = 8 << 20;
    readonly BlobContainerClient _container;
    public string Scheme => "blob";

    public BlobArtifactStore(string connectionString, string container, BlobClientOptions? options = null)
    {
        _container = new BlobContainerClient(connectionString, container, options ?? new BlobClientOptions(BlobClientOptions.ServiceVersion.V2025_11_05));
    }

    public BlobContainerClient Container => _container;

    public async Task EnsureContainerAsync(CancellationToken ct = default)
    {
        try { await _container.CreateIfNotExistsAsync(cancellationToken: ct); }
        catch (RequestFailedException ex) { throw new IOException($"blob container '{_container.Name}' at {_container.Uri} is not reachable: {ex.Message}", ex); }
        catch (AggregateException ex) { throw new IOException($"blob endpoint {_container.Uri} is not reachable: {ex.InnerException?.Message}", ex); }
    }

    public async Task<StoredObject> PutAsync(string key, Stream content, string contentType = "application/octet-stream", CancellationToken ct = default)
    {
        ArtifactNames.Validate(key);
        var blob = _container.GetBlockBlobClient(key);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var ids = new List<string>();
        var buf = new byte[BlockSize];
        long size = 0;
        while (true)
        {
            int filled = 0, n;
            while (filled < buf.Length && (n = await content.ReadAsync(buf.AsMemory(filled), ct)) > 0) filled += n;
            if (filled == 0 && ids.Count > 0) break;
            hash.AppendData(buf, 0, filled);
            size += filled;
            var id = Convert.ToBase64String(BitConverter.GetBytes((long)ids.Count).Concat(Guid.NewGuid().ToByteArray()).ToArray());
            using (var ms = new MemoryStream(buf, 0, filled, writable: false))
                await blob.StageBlockAsync(id, ms, cancellationToken: ct);
            ids.Add(id);
            if (filled < buf.Length) break;
        }
        var sha = Convert.ToHexStringLower(hash.GetHashAndReset());
        await blob.CommitBlockListAsync(ids, new CommitBlockListOptions
        {
            HttpHeaders = new BlobHttpHeaders { ContentType = contentType },
            Metadata = new Dictionary<string, string> { ["sha256"] = sha }
        }, ct);
        return new StoredObject(UriOf(key), size, sha);
    }

    public async Task<Stream> OpenReadAsync(string uri, string? expectedSha256 = null, CancellationToken ct = default)
    {
        var blob = _container.GetBlobClient(KeyOf(uri));
        try
        {
            var s = await blob.OpenReadAsync(new BlobOpenReadOptions(allowModifications: false) { BufferSize = 4 << 20 }, ct);
            return expectedSha256 is null ? s : new VerifyingStream(s, expectedSha256, uri);
        }
        catch (RequestFailedException ex) when (ex.Status == 404)
        {
            throw new FileNotFoundException($"artifact object {uri} is missing from blob container '{_container.Name}'", ex);
        }
    }

    public async Task<bool> ExistsAsync(string uri, CancellationToken ct = default) => (await _container.GetBlobClient(KeyOf(uri)).ExistsAsync(ct)).Value;

    public Task DeleteAsync(string uri, CancellationToken ct = default) => _container.GetBlobClient(KeyOf(uri)).DeleteIfExistsAsync(cancellationToken: ct);

    public async IAsyncEnumerable<StoredEntry> ListEntriesAsync(string prefix, [EnumeratorCancellation] CancellationToken ct = default)
    {
        await foreach (var b in _container.GetBlobsAsync(BlobTraits.None, BlobStates.None, prefix, ct))
            yield return new StoredEntry(UriOf(b.Name), b.Properties.LastModified ?? DateTimeOffset.UtcNow);
    }

    /// <summary>Short-lived read-only SAS link for downloads from the dashboard (needs a shared-key connection string).</summary>
    public Uri? ReadSas(string uri, TimeSpan lifetime)
    {
        var blob = _container.GetBlobClient(KeyOf(uri));
        return blob.CanGenerateSasUri ? blob.GenerateSasUri(Azure.Storage.Sas.BlobSasPermissions.Read, DateTimeOffset.UtcNow.Add(lifetime)) : null;
    }

    string UriOf(string key) => $"blob://{_container.Name}/{key}";

    string KeyOf(string uri)
    {
        var prefix = $"blob://{_container.Name}/";
        if (!uri.StartsWith(prefix)) throw new ArgumentException($"artifact uri {uri} does not belong to blob container '{_container.Name}'");
        return ArtifactNames.Validate(uri[prefix.Length..]);
    }
}

using System.Security.Cryptography;
using ReTok.Tracking.Artifacts;

namespace ReTok.Tests.Tracking;

/// <summary>One contract, two stores: every test here runs against the filesystem store and against Azurite.</summary>
public abstract class ArtifactStoreContract
{
    protected abstract IArtifactStore Store { get; }
    /// <summary>Replaces the stored bytes behind the store's back (bit rot, a manual edit).</summary>
    protected abstract Task CorruptAsync(string uri, byte[] bytes);

    static byte[] Bytes(int n, int seed) { var b = new byte[n]; new Random(seed).NextBytes(b); return b; }
    static string Sha(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));
    readonly string _prefix = $"t{Guid.NewGuid():N}"[..12];

    [Fact]
    public async Task PutThenGetReturnsBytesSizeAndSha256()
    {
        var data = Bytes(300_000, 1);
        var o = await Store.PutAsync($"{_prefix}/runs/1/model.bin", new MemoryStream(data));
        Assert.Equal(data.Length, o.SizeBytes);
        Assert.Equal(Sha(data), o.Sha256);
        Assert.True(await Store.ExistsAsync(o.Uri));
        Assert.Equal(data, await Store.ReadAllBytesAsync(o.Uri, o.Sha256));
        var empty = await Store.PutAsync($"{_prefix}/runs/1/empty.txt", new MemoryStream());
        Assert.Equal(0, empty.SizeBytes);
        Assert.Equal(Sha(Array.Empty<byte>()), empty.Sha256);
        Assert.Empty(await Store.ReadAllBytesAsync(empty.Uri, empty.Sha256));
    }

    [Fact]
    public async Task ListReturnsObjectsUnderPrefixOnly()
    {
        var a = await Store.PutAsync($"{_prefix}/a/x.txt", new MemoryStream(Bytes(10, 2)));
        var b = await Store.PutAsync($"{_prefix}/a/sub/y.txt", new MemoryStream(Bytes(10, 3)));
        await Store.PutAsync($"{_prefix}/b/z.txt", new MemoryStream(Bytes(10, 4)));
        var listed = new List<string>();
        await foreach (var u in Store.ListAsync($"{_prefix}/a/")) listed.Add(u);
        Assert.Equal(new[] { a.Uri, b.Uri }.Order(), listed.Order());
    }

    [Fact]
    public async Task PutOverwritesAnExistingKey()
    {
        var key = $"{_prefix}/checkpoints/latest";
        await Store.PutAsync(key, new MemoryStream(Bytes(1000, 5)));
        var v2 = Bytes(2000, 6);
        var o = await Store.PutAsync(key, new MemoryStream(v2));
        Assert.Equal(v2, await Store.ReadAllBytesAsync(o.Uri, Sha(v2)));
    }

    [Fact]
    public async Task FailingStreamMidUploadLeavesNothingVisible()
    {
        // 9 MiB then an exception: the blob store has staged a full 8 MiB block by then, the filesystem a temp file.
        var key = $"{_prefix}/big.bin";
        await Assert.ThrowsAsync<IOException>(() => Store.PutAsync(key, new FailingStream(9 << 20)));
        Assert.False(await Store.ExistsAsync(UriOf(key)));
        await foreach (var u in Store.ListAsync($"{_prefix}/")) Assert.Fail($"unexpected object {u}");

        // An existing object survives a failed overwrite intact.
        var v1 = Bytes(5000, 7);
        var o = await Store.PutAsync(key, new MemoryStream(v1));
        await Assert.ThrowsAsync<IOException>(() => Store.PutAsync(key, new FailingStream(9 << 20)));
        Assert.Equal(v1, await Store.ReadAllBytesAsync(o.Uri, o.Sha256));
    }

    [Theory]
    [InlineData("../x")]
    [InlineData("a/../../x")]
    [InlineData("/etc/passwd")]
    [InlineData("a//b")]
    [InlineData("")]
    public async Task EscapingOrMalformedNamesAreRejected(string name)
    {
        var ex = await Assert.ThrowsAsync<ArgumentException>(() => Store.PutAsync(name, new MemoryStream(Bytes(4, 8))));
        Assert.Contains("invalid artifact name", ex.Message);
    }

    [Fact]
    public async Task CorruptedObjectFailsTheHashCheckOnDownload()
    {
        var data = Bytes(50_000, 9);
        var o = await Store.PutAsync($"{_prefix}/data.npz", new MemoryStream(data));
        var bad = (byte[])data.Clone();
        bad[12345] ^= 0x40;
        await CorruptAsync(o.Uri, bad);
        var ex = await Assert.ThrowsAsync<ArtifactIntegrityException>(() => Store.ReadAllBytesAsync(o.Uri, o.Sha256));
        Assert.Contains(o.Sha256, ex.Message);
        var dest = Path.Combine(Directory.CreateTempSubdirectory("dl").FullName, "data.npz");
        await Assert.ThrowsAsync<ArtifactIntegrityException>(() => Store.DownloadToFileAsync(o.Uri, dest, o.Sha256));
        Assert.False(File.Exists(dest));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(dest)!));
    }

    [Fact]
    public async Task MissingObjectGivesFileNotFound()
    {
        await Assert.ThrowsAsync<FileNotFoundException>(() => Store.OpenReadAsync(UriOf($"{_prefix}/nope.bin")));
    }

    protected abstract string UriOf(string key);

    /// <summary>Yields <c>n</c> bytes, then throws like a dropped network stream.</summary>
    sealed class FailingStream(long n) : Stream
    {
        long _pos;
        public override int Read(byte[] buffer, int offset, int count)
        {
            if (_pos >= n) throw new IOException("simulated failure mid-upload");
            var k = (int)Math.Min(count, n - _pos);
            Array.Fill(buffer, (byte)7, offset, k);
            _pos += k;
            return k;
        }
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _pos; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

public sealed class FileSystemArtifactStoreTests : ArtifactStoreContract, IDisposable
{
    readonly FileSystemArtifactStore _store = new(Directory.CreateTempSubdirectory("fs-store").FullName);
    protected override IArtifactStore Store => _store;
    protected override string UriOf(string key) => "file:///" + key;
    protected override Task CorruptAsync(string uri, byte[] bytes) => File.WriteAllBytesAsync(_store.LocalPath(uri), bytes);
    public void Dispose() => Directory.Delete(_store.Root, true);
}

public sealed class BlobArtifactStoreTests : ArtifactStoreContract, IAsyncLifetime
{
    readonly BlobArtifactStore _store = new(TestServers.Blob, $"retok-t-{Guid.NewGuid():N}");
    protected override IArtifactStore Store => _store;
    protected override string UriOf(string key) => $"blob://{_store.Container.Name}/{key}";
    protected override async Task CorruptAsync(string uri, byte[] bytes) =>
        await _store.Container.GetBlobClient(uri[$"blob://{_store.Container.Name}/".Length..]).UploadAsync(new BinaryData(bytes), overwrite: true);
    public Task InitializeAsync() => _store.EnsureContainerAsync();
    public async Task DisposeAsync() => await _store.Container.DeleteIfExistsAsync();
}

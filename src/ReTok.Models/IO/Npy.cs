using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.IO;

/// <summary>
/// Our own .npy/.npz reader/writer (numpy format 1.0/2.0, little-endian, C order), because no maintained .NET
/// package on this registry reads numpy files into TorchSharp tensors. Arrays over 2 GB go through the streaming API.
/// </summary>
public sealed record NpyArray(string Dtype, long[] Shape, byte[] Data)
{
    public long Count => Shape.Aggregate(1L, (a, b) => a * b);

    public static NpyArray FromTensor(Tensor t)
    {
        var c = t.detach().cpu().contiguous();
        var dtype = Npy.DtypeOf(c.dtype);
        var bytes = new byte[c.NumberOfElements * c.ElementSize];
        if (bytes.Length > 0) c.bytes.CopyTo(bytes);
        return new NpyArray(dtype, c.shape.ToArray(), bytes);
    }

    public Tensor ToTensor()
    {
        var st = Npy.ScalarTypeOf(Dtype);
        var t = torch.empty(Shape, st);
        if (Data.Length > 0) t.bytes = Data;
        return t;
    }

    public static NpyArray Of<T>(T[] values, params long[] shape) where T : unmanaged
    {
        var bytes = new byte[values.Length * System.Runtime.InteropServices.Marshal.SizeOf<T>()];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        var dtype = typeof(T) == typeof(byte) ? "|u1" : typeof(T) == typeof(int) ? "<i4" : typeof(T) == typeof(long) ? "<i8"
            : typeof(T) == typeof(float) ? "<f4" : typeof(T) == typeof(double) ? "<f8" : throw new NotSupportedException(typeof(T).Name);
        if (shape.Length == 0) shape = new long[] { values.Length };
        return new NpyArray(dtype, shape, bytes);
    }

    public T[] As<T>() where T : unmanaged
    {
        var size = System.Runtime.InteropServices.Marshal.SizeOf<T>();
        if (Npy.ItemSize(Dtype) != size) throw new InvalidDataException($"array dtype {Dtype} cannot be read as {typeof(T).Name}");
        var r = new T[Data.Length / size];
        Buffer.BlockCopy(Data, 0, r, 0, Data.Length);
        return r;
    }
}

public sealed record NpyHeader(string Dtype, long[] Shape, bool FortranOrder)
{
    public long Count => Shape.Aggregate(1L, (a, b) => a * b);
    public int ItemSize => Npy.ItemSize(Dtype);
}

public static class Npy
{
    static readonly byte[] Magic = { 0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y' };

    public static string DtypeOf(ScalarType st) => st switch
    {
        ScalarType.Byte => "|u1",
        ScalarType.Int8 => "|i1",
        ScalarType.Bool => "|b1",
        ScalarType.Int16 => "<i2",
        ScalarType.Int32 => "<i4",
        ScalarType.Int64 => "<i8",
        ScalarType.Float16 => "<f2",
        ScalarType.Float32 => "<f4",
        ScalarType.Float64 => "<f8",
        _ => throw new NotSupportedException($"dtype {st} has no numpy equivalent we write (cast to float32 first)")
    };

    public static ScalarType ScalarTypeOf(string dtype) => Normalize(dtype) switch
    {
        "|u1" => ScalarType.Byte,
        "|i1" => ScalarType.Int8,
        "|b1" => ScalarType.Bool,
        "<i2" => ScalarType.Int16,
        "<i4" => ScalarType.Int32,
        "<i8" => ScalarType.Int64,
        "<f2" => ScalarType.Float16,
        "<f4" => ScalarType.Float32,
        "<f8" => ScalarType.Float64,
        var d => throw new NotSupportedException($"numpy dtype '{d}' is not supported (big-endian or exotic types)")
    };

    public static int ItemSize(string dtype) => Normalize(dtype) switch
    {
        "|u1" or "|i1" or "|b1" => 1,
        "<i2" or "<f2" => 2,
        "<i4" or "<f4" => 4,
        "<i8" or "<f8" => 8,
        var d => throw new NotSupportedException($"numpy dtype '{d}' is not supported")
    };

    static string Normalize(string d) => d switch
    {
        "<u1" or "u1" or "B" => "|u1",
        "<i1" or "i1" => "|i1",
        "<b1" or "?" => "|b1",
        _ => d.StartsWith('=') ? "<" + d[1..] : d
    };

    public static NpyHeader ReadHeader(Stream s, string what = "npy")
    {
        var magic = ReadExactly(s, 8, what);
        if (!magic.AsSpan(0, 6).SequenceEqual(Magic))
            throw new InvalidDataException($"{what}: not a numpy .npy stream (bad magic)");
        int major = magic[6];
        int hlen = major == 1 ? BitConverter.ToUInt16(ReadExactly(s, 2, what)) : major is 2 or 3
            ? (int)BitConverter.ToUInt32(ReadExactly(s, 4, what)) : throw new InvalidDataException($"{what}: unsupported npy version {major}");
        var header = Encoding.Latin1.GetString(ReadExactly(s, hlen, what));
        var descr = Regex.Match(header, @"'descr'\s*:\s*'([^']+)'");
        var fortran = Regex.Match(header, @"'fortran_order'\s*:\s*(True|False)");
        var shape = Regex.Match(header, @"'shape'\s*:\s*\(([^)]*)\)");
        if (!descr.Success || !fortran.Success || !shape.Success)
            throw new InvalidDataException($"{what}: malformed npy header: {header.Trim()}");
        var dims = shape.Groups[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(long.Parse).ToArray();
        var h = new NpyHeader(Normalize(descr.Groups[1].Value), dims, fortran.Groups[1].Value == "True");
        if (h.FortranOrder && dims.Length > 1) throw new InvalidDataException($"{what}: Fortran-order arrays are not supported; save with np.ascontiguousarray");
        ItemSize(h.Dtype); // validates
        return h;
    }

    public static void WriteHeader(Stream s, string dtype, long[] shape)
    {
        var shp = shape.Length == 1 ? $"({shape[0]},)" : "(" + string.Join(", ", shape) + ")";
        var dict = $"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shp}, }}";
        // Pad so data starts on a 64-byte boundary, as numpy does.
        int total = 10 + dict.Length + 1;
        int pad = (64 - total % 64) % 64;
        var text = dict + new string(' ', pad) + "\n";
        bool v2 = text.Length > ushort.MaxValue;
        s.Write(Magic);
        s.WriteByte(v2 ? (byte)2 : (byte)1); s.WriteByte(0);
        if (v2) s.Write(BitConverter.GetBytes((uint)text.Length)); else s.Write(BitConverter.GetBytes((ushort)text.Length));
        s.Write(Encoding.Latin1.GetBytes(text));
    }

    public static NpyArray Read(Stream s, string what = "npy")
    {
        var h = ReadHeader(s, what);
        long n = h.Count * h.ItemSize;
        if (n > Array.MaxLength) throw new InvalidDataException($"{what}: array of {n} bytes is too large to load at once; use the streaming reader");
        return new NpyArray(h.Dtype, h.Shape, ReadExactly(s, (int)n, what));
    }

    public static void Write(Stream s, NpyArray a)
    {
        WriteHeader(s, a.Dtype, a.Shape);
        s.Write(a.Data);
    }

    public static NpyArray Load(string path)
    {
        try { using var f = File.OpenRead(path); return Read(f, path); }
        catch (FileNotFoundException) { throw new FileNotFoundException($"npy file not found: {path}", path); }
    }

    public static void Save(string path, NpyArray a) => AtomicFile.Write(path, s => Write(s, a));
    public static void Save(string path, Tensor t) => Save(path, NpyArray.FromTensor(t));

    internal static byte[] ReadExactly(Stream s, int n, string what)
    {
        var b = new byte[n];
        int off = 0;
        while (off < n)
        {
            int r = s.Read(b, off, n - off);
            if (r == 0) throw new InvalidDataException($"{what}: truncated (expected {n} bytes, got {off})");
            off += r;
        }
        return b;
    }
}

/// <summary>.npz = zip of .npy entries (numpy's savez: stored; savez_compressed: deflated; both are read).</summary>
public static class Npz
{
    /// <summary>numpy's savez stamps members 1980-01-01 00:00 (ZipInfo default); so do we, so equal arrays give byte-identical files.</summary>
    public static readonly DateTimeOffset EntryTime = new(1980, 1, 1, 0, 0, 0, TimeSpan.Zero);

    public static Dictionary<string, NpyArray> Load(string path)
    {
        using var zip = OpenZip(path);
        var r = new Dictionary<string, NpyArray>();
        foreach (var e in zip.Entries)
        {
            using var s = e.Open();
            r[KeyOf(e.FullName)] = Npy.Read(s, $"{path}:{e.FullName}");
        }
        return r;
    }

    public static NpyArray LoadKey(string path, string key)
    {
        using var zip = OpenZip(path);
        var e = zip.GetEntry(key + ".npy") ?? throw new KeyNotFoundException(
            $"{path}: no array '{key}' (has: {string.Join(", ", zip.Entries.Select(x => KeyOf(x.FullName)))})");
        using var s = e.Open();
        return Npy.Read(s, $"{path}:{key}");
    }

    public static IReadOnlyList<string> Keys(string path)
    {
        using var zip = OpenZip(path);
        return zip.Entries.Select(e => KeyOf(e.FullName)).ToList();
    }

    /// <summary>Header of one entry without loading its data.</summary>
    public static NpyHeader Header(string path, string key)
    {
        using var zip = OpenZip(path);
        var e = zip.GetEntry(key + ".npy") ?? throw new KeyNotFoundException($"{path}: no array '{key}'");
        using var s = e.Open();
        return Npy.ReadHeader(s, $"{path}:{key}");
    }

    /// <summary>
    /// Streams the leading-axis rows of one entry in chunks (for arrays too big for one byte[]), from row
    /// <paramref name="fromRow"/> on: a resumed job or a shard skips the rows before it without decoding them (a seek
    /// when the entry is stored, as ours are; a discarding read when it is deflated). Chunks start at fromRow + i * rowsPerChunk.
    /// </summary>
    public static IEnumerable<(long Start, NpyArray Chunk)> ReadRows(string path, string key, int rowsPerChunk, long fromRow = 0)
    {
        using var zip = OpenZip(path);
        var e = zip.GetEntry(key + ".npy") ?? throw new KeyNotFoundException($"{path}: no array '{key}'");
        using var s = e.Open();
        var h = Npy.ReadHeader(s, $"{path}:{key}");
        long rows = h.Shape.Length == 0 ? 1 : h.Shape[0];
        long rowBytes = h.ItemSize * h.Shape.Skip(1).Aggregate(1L, (a, b) => a * b);
        if (fromRow < 0) throw new ArgumentOutOfRangeException(nameof(fromRow), $"must be >= 0, got {fromRow}");
        fromRow = Math.Min(fromRow, rows);
        Skip(s, fromRow * rowBytes, $"{path}:{key}");
        for (long start = fromRow; start < rows; start += rowsPerChunk)
        {
            int n = (int)Math.Min(rowsPerChunk, rows - start);
            var shape = h.Shape.ToArray(); shape[0] = n;
            yield return (start, new NpyArray(h.Dtype, shape, Npy.ReadExactly(s, checked((int)(n * rowBytes)), $"{path}:{key}")));
        }
    }

    static void Skip(Stream s, long bytes, string what)
    {
        if (bytes == 0) return;
        if (s.CanSeek) { s.Seek(bytes, SeekOrigin.Current); return; }
        var buf = new byte[1 << 20];
        while (bytes > 0)
        {
            int got = s.Read(buf, 0, (int)Math.Min(buf.Length, bytes));
            if (got == 0) throw new EndOfStreamException($"{what}: data ends {bytes} bytes early");
            bytes -= got;
        }
    }

    public static void Save(string path, IReadOnlyDictionary<string, NpyArray> arrays, bool compress = false)
        => AtomicFile.Write(path, f =>
        {
            using var zip = new ZipArchive(f, ZipArchiveMode.Create, leaveOpen: true);
            foreach (var (k, a) in arrays)
            {
                var e = zip.CreateEntry(k + ".npy", compress ? CompressionLevel.Fastest : CompressionLevel.NoCompression);
                e.LastWriteTime = Npz.EntryTime;
                using var s = e.Open();
                Npy.Write(s, a);
            }
        });

    static ZipArchive OpenZip(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"npz file not found: {path}", path);
        try { return ZipFile.OpenRead(path); }
        catch (InvalidDataException ex) { throw new InvalidDataException($"{path}: not a valid .npz (zip) file: {ex.Message}", ex); }
    }

    static string KeyOf(string entry) => entry.EndsWith(".npy") ? entry[..^4] : entry;
}

/// <summary>Streaming .npz writer for arrays whose leading axis is filled chunk by chunk.</summary>
public sealed class NpzStreamWriter : IDisposable
{
    readonly string _final, _tmp;
    readonly FileStream _file;
    readonly ZipArchive _zip;
    Stream? _entry;
    long _expected, _written;
    string? _key;
    bool _done;

    public NpzStreamWriter(string path)
    {
        _final = path;
        _tmp = path + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        _file = new FileStream(_tmp, FileMode.CreateNew, FileAccess.ReadWrite);
        _zip = new ZipArchive(_file, ZipArchiveMode.Create, leaveOpen: true);
    }

    public void BeginArray(string key, string dtype, long[] shape)
    {
        EndArray();
        _key = key;
        var e = _zip.CreateEntry(key + ".npy", CompressionLevel.NoCompression);
        e.LastWriteTime = Npz.EntryTime;
        _entry = e.Open();
        Npy.WriteHeader(_entry, dtype, shape);
        _expected = shape.Aggregate(1L, (a, b) => a * b) * Npy.ItemSize(dtype);
        _written = 0;
    }

    public void Append(ReadOnlySpan<byte> data)
    {
        if (_entry is null) throw new InvalidOperationException("BeginArray first");
        _entry.Write(data);
        _written += data.Length;
    }

    public void Add(string key, NpyArray a) { BeginArray(key, a.Dtype, a.Shape); Append(a.Data); EndArray(); }

    void EndArray()
    {
        if (_entry is null) return;
        if (_written != _expected) throw new InvalidOperationException($"npz array '{_key}': wrote {_written} bytes, header promises {_expected}");
        _entry.Dispose();
        _entry = null;
    }

    /// <summary>Finishes the file and moves it into place; without Commit nothing appears at the path.</summary>
    public void Commit()
    {
        EndArray();
        _zip.Dispose();
        _file.Flush(true);
        _file.Dispose();
        File.Move(_tmp, _final, overwrite: true);
        _done = true;
    }

    public void Dispose()
    {
        if (_done) return;
        try { _entry?.Dispose(); _zip.Dispose(); } catch { /* abandoning */ }
        _file.Dispose();
        try { File.Delete(_tmp); } catch { }
    }
}

/// <summary>Write-to-temp-then-rename so a crash never leaves a half-written file under the final name.</summary>
public static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        try
        {
            using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                write(f);
                f.Flush(true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch (IOException ex) when (IsDiskFull(ex))
        {
            TryDelete(tmp);
            throw new IOException($"disk full while writing {full}: free space on {Path.GetPathRoot(full)} and retry", ex);
        }
        catch { TryDelete(tmp); throw; }
    }

    public static bool IsDiskFull(IOException ex) => (ex.HResult & 0xFFFF) is 28 or 0x70 || ex.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);

    static void TryDelete(string p) { try { File.Delete(p); } catch { } }
}

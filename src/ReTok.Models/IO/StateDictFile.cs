using System.IO.Compression;
using System.Numerics;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.IO;

/// <summary>What `inspect` shows about a checkpoint file.</summary>
public sealed record CheckpointInfo(
    string Path, string Format, IReadOnlyList<(string Name, string What)> Entries, string? Chosen,
    int TensorCount, long ParameterCount, IReadOnlyDictionary<string, long> DtypeCounts, IReadOnlyDictionary<string, object?> Scalars)
{
    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"file: {Path} ({Format})");
        foreach (var (n, w) in Entries) sb.AppendLine($"  {n}: {w}");
        sb.AppendLine($"weights: {Chosen ?? "top level"}, {TensorCount} tensors, {ParameterCount:N0} values");
        sb.Append("dtypes: " + string.Join(", ", DtypeCounts.Select(kv => $"{kv.Key} ({kv.Value} tensors)")));
        return sb.ToString();
    }
}

/// <summary>
/// The one home for state-dict files. Reads `.safetensors` and PyTorch files written by torch.save, both the zip
/// format (`.pt/.pth/.bin`, torch ≥ 1.6) and the legacy pickle stream (the released pt_inception-2015-12-05,
/// vgg16-397923af and LPIPS vgg.pth), through the restricted <see cref="Unpickler"/>, so nested training checkpoints
/// {model, ema, optimizer, steps, args} load without running any pickle code. Writes `.safetensors` atomically.
/// Loads into a module strictly, with one error listing every missing, unexpected and mis-shaped key.
/// State dicts are name → CPU tensor in the stored dtype, in file order.
/// </summary>
public static class StateDictFile
{
    /// <summary>
    /// Reads the state dict of a `.safetensors` file or a torch.save file (zip or legacy), chosen by content. In nested
    /// checkpoints the entry <paramref name="prefer"/> wins when present, then ema, model, module, state_dict, then the
    /// top level itself (the order of the reference evaluation scripts). Non-tensor entries (optimizer state, steps,
    /// args) are skipped. A common "module." prefix (DDP) is stripped. Unreadable files throw
    /// <see cref="InvalidDataException"/> naming the file.
    /// </summary>
    public static Dictionary<string, Tensor> Read(string path, string prefer = "ema")
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"state dict file {path} does not exist", path);
        try
        {
            if (IsSafetensors(path)) return Safetensors.Load(path);
            return WithTorchPickle(path, file =>
            {
                var (sd, _) = Choose(file.Root, prefer, path);
                var result = new Dictionary<string, Tensor>();
                var storages = new Dictionary<string, Tensor>();
                try
                {
                    foreach (var (k, v) in sd)
                        if (v is PickleTensor pt) result[k.ToString()!] = Materialise(pt, storages, file.BytesOf, path);
                }
                finally { foreach (var s in storages.Values) s.Dispose(); }
                return StripModulePrefix(result);
            });
        }
        catch (Exception e) when (IsFormatError(e, path))
        {
            throw new InvalidDataException($"{path}: cannot read a state dict ({e.Message})", e);
        }
    }

    /// <summary>Top-level entries, which weights Read would pick, dtypes and value count, without loading tensor data.</summary>
    public static CheckpointInfo Describe(string path, string prefer = "ema")
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"state dict file {path} does not exist", path);
        if (IsSafetensors(path))
        {
            var header = Safetensors.ReadHeader(path);
            return new CheckpointInfo(path, "safetensors", new[] { ("(flat)", $"state dict, {header.Count} tensors") }, null, header.Count,
                header.Values.Sum(h => h.Shape.Aggregate(1L, (a, b) => a * b)),
                header.Values.GroupBy(h => Safetensors.DtypeName(h.Dtype)).ToDictionary(g => g.Key, g => (long)g.Count()), new Dictionary<string, object?>());
        }
        return WithTorchPickle(path, file =>
        {
            var root = file.Root;
            var entries = new List<(string, string)>();
            var scalars = new Dictionary<string, object?>();
            if (root is Dictionary<object, object?> top && !top.Values.Any(v => v is PickleTensor))
                foreach (var (k, v) in top)
                {
                    entries.Add((k.ToString()!, Summarise(v)));
                    if (v is long or double or string or bool) scalars[k.ToString()!] = v;
                }
            else entries.Add(("(top level)", Summarise(root)));
            var (sd, chosen) = Choose(root, prefer, path);
            var tensors = sd.Values.OfType<PickleTensor>().ToList();
            return new CheckpointInfo(path, file.Format, entries, chosen, tensors.Count,
                tensors.Sum(t => t.Size.Aggregate(1L, (a, b) => a * b)),
                tensors.GroupBy(t => DtypeName(t.Storage.StorageType)).ToDictionary(g => g.Key, g => (long)g.Count()), scalars);
        });
    }

    /// <summary>Writes a flat state dict as safetensors, atomically (tensors are written contiguous, from the CPU, in their own dtype).</summary>
    public static void WriteSafetensors(string path, IReadOnlyDictionary<string, Tensor> sd, IReadOnlyDictionary<string, string>? metadata = null)
        => Safetensors.Save(path, sd, metadata);

    /// <summary>
    /// Copies <paramref name="stateDict"/> into the module's parameters and persistent buffers, strictly: every missing,
    /// unexpected and mis-shaped key is listed together in one error that names <paramref name="source"/>.
    /// Keys for which <paramref name="mayBeMissing"/> holds may be absent (they keep their current values); file keys
    /// for which <paramref name="mayBeUnexpected"/> holds are ignored. Values are cast to each parameter's dtype and device.
    /// </summary>
    public static void LoadInto(nn.Module m, IEnumerable<KeyValuePair<string, Tensor>> stateDict, string source,
        Func<string, bool>? mayBeMissing = null, Func<string, bool>? mayBeUnexpected = null)
    {
        var sd = AsDictionary(stateDict);
        var own = CheckFits(m, sd, source, mayBeMissing, mayBeUnexpected);
        using var _ = torch.no_grad();
        foreach (var (k, dst) in own)
            if (sd.TryGetValue(k, out var src)) dst.copy_(src.to(dst.dtype, dst.device));
    }

    /// <summary>
    /// The name and shape half of <see cref="LoadInto"/>: throws the same error, copies nothing (so it works on a model
    /// built on the meta device). Returns the module's own state dict.
    /// </summary>
    public static Dictionary<string, Tensor> CheckFits(nn.Module m, IEnumerable<KeyValuePair<string, Tensor>> stateDict, string source,
        Func<string, bool>? mayBeMissing = null, Func<string, bool>? mayBeUnexpected = null)
    {
        var sd = AsDictionary(stateDict);
        var own = m.state_dict();
        var missing = own.Keys.Where(k => !sd.ContainsKey(k) && !(mayBeMissing?.Invoke(k) ?? false)).ToList();
        var unexpected = sd.Keys.Where(k => !own.ContainsKey(k) && !(mayBeUnexpected?.Invoke(k) ?? false)).ToList();
        var shapes = own.Where(kv => sd.TryGetValue(kv.Key, out var t) && !t.shape.SequenceEqual(kv.Value.shape))
            .Select(kv => $"{kv.Key}: checkpoint {Shape(sd[kv.Key])} vs model {Shape(kv.Value)}").ToList();
        if (missing.Count + unexpected.Count + shapes.Count > 0)
        {
            var sb = new StringBuilder($"checkpoint {source} does not fit {m.GetType().Name} ({own.Count} keys in the model, {sd.Count} in the file):");
            void List(string title, List<string> items)
            {
                if (items.Count == 0) return;
                sb.Append($"\n  {items.Count} {title}:");
                foreach (var i in items.Take(25)) sb.Append("\n    ").Append(i);
                if (items.Count > 25) sb.Append($"\n    … and {items.Count - 25} more");
            }
            List("missing keys", missing);
            List("unexpected keys", unexpected);
            List("shape mismatches", shapes);
            throw new InvalidDataException(sb.ToString());
        }
        return own;
    }

    /// <summary>BatchNorm's num_batches_tracked: absent from pre-1.0 checkpoints (the released Inception/VGG weights), unused in eval.</summary>
    public static bool IsBatchNormCounter(string key) => key.EndsWith("num_batches_tracked");

    // ------------------------------------------------------------------ internals

    static IReadOnlyDictionary<string, Tensor> AsDictionary(IEnumerable<KeyValuePair<string, Tensor>> sd) =>
        sd as IReadOnlyDictionary<string, Tensor> ?? sd.ToDictionary(kv => kv.Key, kv => kv.Value);

    static string Shape(Tensor t) => $"[{string.Join(",", t.shape)}]";

    // Parse failures deep in a file (a truncated pickle, a malformed tuple) become one error naming the file; I/O
    // failures of the disk itself stay IOExceptions, so the job engine may retry them.
    static bool IsFormatError(Exception e, string path) => e switch
    {
        FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or OutOfMemoryException => false,
        InvalidDataException when e.Message.Contains(path) => false,
        EndOfStreamException => true,
        IOException => false,
        _ => true,
    };

    static bool IsSafetensors(string path)
    {
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return true;
        using var f = File.OpenRead(path);
        Span<byte> head = stackalloc byte[9];
        if (f.Read(head) < 9) return false;
        return head[0] != (byte)'P' && head[8] == (byte)'{';   // zip starts "PK"; safetensors: u64 length then '{'
    }

    /// <summary>An unpickled torch.save root and where its storages' bytes come from.</summary>
    sealed record TorchPickle(object? Root, string Format, Func<PickleStorage, byte[]> BytesOf);

    static T WithTorchPickle<T>(string path, Func<TorchPickle, T> use)
    {
        using var f = File.OpenRead(path);
        var head = new byte[2];
        int n = f.Read(head);
        f.Position = 0;
        if (n == 2 && head[0] == (byte)'P' && head[1] == (byte)'K')
        {
            using var zip = new ZipArchive(f, ZipArchiveMode.Read, leaveOpen: true);
            var (root, prefix) = ReadZipPickle(zip, path);
            return use(new TorchPickle(root, "torch zip-pickle", st => ZipStorageBytes(zip, prefix, st, path)));
        }
        if (n >= 1 && head[0] == 0x80)   // pickle PROTO: the legacy stream format (torch < 1.6 default)
        {
            var (root, data) = ReadLegacy(f, path);
            return use(new TorchPickle(root, "torch legacy pickle", st => data.TryGetValue(st.Key, out var b) ? b
                : throw new InvalidDataException($"checkpoint {path}: storage {st.Key} missing from the file")));
        }
        throw new InvalidDataException($"checkpoint {path} is neither a torch.save file (zip or legacy pickle) nor safetensors");
    }

    static (object? Root, string Prefix) ReadZipPickle(ZipArchive zip, string path)
    {
        var pkl = zip.Entries.FirstOrDefault(e => e.FullName.EndsWith("/data.pkl") || e.FullName == "data.pkl")
            ?? throw new InvalidDataException($"checkpoint {path}: zip has no data.pkl (not a torch.save file)");
        var prefix = pkl.FullName[..^"data.pkl".Length];
        using var s = pkl.Open();
        using var ms = new MemoryStream();
        s.CopyTo(ms);
        ms.Position = 0;
        return (Unpickler.Load(ms, path), prefix);
    }

    static byte[] ZipStorageBytes(ZipArchive zip, string prefix, PickleStorage st, string path)
    {
        var entry = zip.GetEntry(prefix + "data/" + st.Key)
            ?? throw new InvalidDataException($"checkpoint {path}: storage data/{st.Key} missing from the zip");
        var bytes = new byte[entry.Length];
        using (var s = entry.Open()) s.ReadExactly(bytes);
        return bytes;
    }

    static readonly BigInteger LegacyMagic = BigInteger.Parse("119547037146038801333356");

    /// <summary>
    /// torch/serialization.py _legacy_save: pickles of the magic number, protocol 1001 and sys_info, then the object
    /// (storages as persistent ids), then the list of storage keys, then per storage an int64 element count and the raw
    /// little-endian bytes.
    /// </summary>
    static (object? Root, Dictionary<string, byte[]> Data) ReadLegacy(Stream f, string path)
    {
        if (Unpickler.Load(f, path) is not BigInteger magic || magic != LegacyMagic)
            throw new InvalidDataException($"checkpoint {path}: a pickle stream, but not a torch.save file (bad magic number)");
        var protocol = Unpickler.Load(f, path);
        if (protocol is not long p || p != 1001) throw new InvalidDataException($"checkpoint {path}: unsupported legacy torch protocol {protocol}");
        Unpickler.Load(f, path);   // sys_info
        var root = Unpickler.Load(f, path);
        if (Unpickler.Load(f, path) is not List<object?> keys)
            throw new InvalidDataException($"checkpoint {path}: legacy torch file without its storage key list");
        var types = new Dictionary<string, string>();
        Collect(root, types);
        var data = new Dictionary<string, byte[]>();
        var br = new BinaryReader(f, Encoding.UTF8, leaveOpen: true);
        foreach (var key in keys.Select(k => k?.ToString() ?? ""))
        {
            long count = br.ReadInt64();
            long size = types.TryGetValue(key, out var type) ? ElementSize(StorageScalarType(type, path)) : 1;
            data[key] = br.ReadBytes(checked((int)(count * size)));
            if (data[key].Length != count * size)
                throw new InvalidDataException($"checkpoint {path}: truncated (storage {key} needs {count * size} bytes)");
        }
        return (root, data);
    }

    // Storage types by key, for the legacy format's byte counts (the key list carries no types).
    static void Collect(object? o, Dictionary<string, string> types)
    {
        switch (o)
        {
            case PickleTensor t: types[t.Storage.Key] = t.Storage.StorageType; break;
            case Dictionary<object, object?> d: foreach (var v in d.Values) Collect(v, types); break;
            case List<object?> l: foreach (var v in l) Collect(v, types); break;
            case object?[] a: foreach (var v in a) Collect(v, types); break;
        }
    }

    static (Dictionary<object, object?> Sd, string? Chosen) Choose(object? root, string prefer, string path)
    {
        if (root is not Dictionary<object, object?> top)
            throw new InvalidDataException($"checkpoint {path}: top-level object is {root?.GetType().Name ?? "None"}, expected a dict / state dict (save model.state_dict(), not the model)");
        foreach (var name in new[] { prefer, "ema", "model", "module", "state_dict" }.Distinct())
            if (top.TryGetValue(name, out var v) && v is Dictionary<object, object?> d && d.Values.Any(x => x is PickleTensor))
                return (d, name);
        if (top.Values.Any(x => x is PickleTensor)) return (top, null);
        throw new InvalidDataException($"checkpoint {path}: no state dict found (top-level keys: {string.Join(", ", top.Keys)})");
    }

    static string Summarise(object? v) => v switch
    {
        Dictionary<object, object?> d when d.Values.Any(x => x is PickleTensor) => $"state dict, {d.Values.Count(x => x is PickleTensor)} tensors",
        Dictionary<object, object?> d => $"dict with {d.Count} entries ({string.Join(", ", d.Keys.Take(6))}{(d.Count > 6 ? ", …" : "")})",
        PickleTensor t => $"tensor {DtypeName(t.Storage.StorageType)} [{string.Join(", ", t.Size)}]",
        PickleObject o => $"object {o.FullName}",
        List<object?> l => $"list of {l.Count}",
        null => "None",
        _ => $"{v.GetType().Name} {v}",
    };

    static string DtypeName(string storageType) => storageType switch
    {
        "FloatStorage" => "float32", "HalfStorage" => "float16", "BFloat16Storage" => "bfloat16", "DoubleStorage" => "float64",
        "LongStorage" => "int64", "IntStorage" => "int32", "ShortStorage" => "int16", "CharStorage" => "int8",
        "ByteStorage" => "uint8", "BoolStorage" => "bool", _ => storageType,
    };

    static ScalarType StorageScalarType(string storageType, string path) => storageType switch
    {
        "FloatStorage" => ScalarType.Float32, "HalfStorage" => ScalarType.Float16, "BFloat16Storage" => ScalarType.BFloat16,
        "DoubleStorage" => ScalarType.Float64, "LongStorage" => ScalarType.Int64, "IntStorage" => ScalarType.Int32,
        "ShortStorage" => ScalarType.Int16, "CharStorage" => ScalarType.Int8, "ByteStorage" => ScalarType.Byte,
        "BoolStorage" => ScalarType.Bool,
        _ => throw new InvalidDataException($"checkpoint {path}: unsupported storage type {storageType}"),
    };

    static long ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1,
    };

    static Tensor Materialise(PickleTensor pt, Dictionary<string, Tensor> storages, Func<PickleStorage, byte[]> bytesOf, string path)
    {
        if (!storages.TryGetValue(pt.Storage.Key, out var storage))
        {
            var st = StorageScalarType(pt.Storage.StorageType, path);
            var bytes = bytesOf(pt.Storage);
            long expect = pt.Storage.Numel * ElementSize(st);
            if (bytes.Length != expect)
                throw new InvalidDataException($"checkpoint {path}: storage {pt.Storage.Key} has {bytes.Length} bytes, expected {expect}");
            storage = torch.empty(pt.Storage.Numel, st);
            if (bytes.Length > 0) storage.bytes = bytes;
            storages[pt.Storage.Key] = storage;
        }
        return storage.as_strided(pt.Size, pt.Stride, pt.Offset).clone();
    }

    static Dictionary<string, Tensor> StripModulePrefix(Dictionary<string, Tensor> sd) =>
        sd.Count > 0 && sd.Keys.All(k => k.StartsWith("module.")) ? sd.ToDictionary(kv => kv.Key["module.".Length..], kv => kv.Value) : sd;
}

/// <summary>safetensors: u64 LE header length, JSON header {name: {dtype, shape, data_offsets}}, raw LE data.</summary>
internal static class Safetensors
{
    public sealed record Entry(string Dtype, long[] Shape, long Begin, long End);

    static readonly Dictionary<string, ScalarType> Types = new()
    {
        ["F32"] = ScalarType.Float32, ["F16"] = ScalarType.Float16, ["BF16"] = ScalarType.BFloat16, ["F64"] = ScalarType.Float64,
        ["I64"] = ScalarType.Int64, ["I32"] = ScalarType.Int32, ["I16"] = ScalarType.Int16, ["I8"] = ScalarType.Int8,
        ["U8"] = ScalarType.Byte, ["BOOL"] = ScalarType.Bool,
    };

    /// <summary>safetensors dtype tag → torch-style name (float32, bfloat16, …).</summary>
    public static string DtypeName(string tag) => tag switch
    {
        "F32" => "float32", "F16" => "float16", "BF16" => "bfloat16", "F64" => "float64", "I64" => "int64", "I32" => "int32",
        "I16" => "int16", "I8" => "int8", "U8" => "uint8", "BOOL" => "bool", _ => tag,
    };

    public static Dictionary<string, Entry> ReadHeader(string path)
    {
        using var f = File.OpenRead(path);
        return ReadHeader(f, path).Entries;
    }

    static (Dictionary<string, Entry> Entries, long DataStart) ReadHeader(Stream f, string path)
    {
        var lenBytes = new byte[8];
        if (f.Read(lenBytes) != 8) throw new InvalidDataException($"{path}: too short for safetensors");
        long len = BitConverter.ToInt64(lenBytes);
        if (len <= 0 || len > 100_000_000 || 8 + len > f.Length) throw new InvalidDataException($"{path}: bad safetensors header length {len}");
        var json = new byte[len];
        f.ReadExactly(json);
        var entries = new Dictionary<string, Entry>();
        using var doc = JsonDocument.Parse(json);
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            if (p.Name == "__metadata__") continue;
            var offs = p.Value.GetProperty("data_offsets").EnumerateArray().Select(x => x.GetInt64()).ToArray();
            entries[p.Name] = new Entry(p.Value.GetProperty("dtype").GetString()!,
                p.Value.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray(), offs[0], offs[1]);
        }
        return (entries, 8 + len);
    }

    public static Dictionary<string, Tensor> Load(string path)
    {
        using var f = File.OpenRead(path);
        var (entries, start) = ReadHeader(f, path);
        var result = new Dictionary<string, Tensor>();
        foreach (var (name, e) in entries.OrderBy(kv => kv.Value.Begin))
        {
            if (!Types.TryGetValue(e.Dtype, out var st)) throw new InvalidDataException($"{path}: tensor {name} has unsupported dtype {e.Dtype}");
            var t = torch.empty(e.Shape, st);
            long n = e.End - e.Begin;
            if (n != t.NumberOfElements * t.ElementSize) throw new InvalidDataException($"{path}: tensor {name} has {n} bytes for shape [{string.Join(",", e.Shape)}] {e.Dtype}");
            if (n > 0)
            {
                var bytes = new byte[n];
                f.Position = start + e.Begin;
                try { f.ReadExactly(bytes); }
                catch (EndOfStreamException) { throw new InvalidDataException($"{path}: truncated: tensor {name} ends at byte {start + e.End}, the file has {f.Length}"); }
                t.bytes = bytes;
            }
            result[name] = t;
        }
        return result;
    }

    public static void Save(string path, IReadOnlyDictionary<string, Tensor> sd, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = sd.Keys.ToList();
        var header = new Dictionary<string, object>();
        if (metadata != null) header["__metadata__"] = metadata;
        long off = 0;
        var tensors = new List<Tensor>();
        foreach (var n in names)
        {
            var t = sd[n].detach().cpu().contiguous();
            var dt = Types.FirstOrDefault(kv => kv.Value == t.dtype).Key ?? throw new NotSupportedException($"tensor {n}: dtype {t.dtype} not writable to safetensors");
            long size = t.NumberOfElements * t.ElementSize;
            header[n] = new Dictionary<string, object> { ["dtype"] = dt, ["shape"] = t.shape, ["data_offsets"] = new[] { off, off + size } };
            off += size;
            tensors.Add(t);
        }
        var json = JsonSerializer.SerializeToUtf8Bytes(header);
        int pad = (8 - json.Length % 8) % 8;
        json = json.Concat(Enumerable.Repeat((byte)' ', pad)).ToArray();
        AtomicFile.Write(path, s =>
        {
            s.Write(BitConverter.GetBytes((long)json.Length));
            s.Write(json);
            foreach (var t in tensors) if (t.NumberOfElements > 0) s.Write(t.bytes);
        });
    }
}

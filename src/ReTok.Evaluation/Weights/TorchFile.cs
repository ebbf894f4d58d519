using System.IO.Compression;
using System.Numerics;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Evaluation.Weights;

/// <summary>
/// Reads PyTorch state dicts saved with <c>torch.save</c>, both the legacy pickle-stream format (used by the released
/// pt_inception-2015-12-05, vgg16-397923af and LPIPS vgg.pth files, which TorchSharp.PyBridge cannot read) and the
/// zip format, plus .safetensors through PyBridge. A tiny pickle VM of our own: only the opcodes torch state dicts use,
/// and no process-global constructor registry (Razorvine's is shared with PyBridge).
/// </summary>
public static class TorchFile
{
    /// <summary>The one entry point the evaluation uses for weights: .safetensors, zip .pth or legacy .pth, by content.</summary>
    public static Dictionary<string, Tensor> LoadStateDict(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"weights file not found: {path}", path);
        using var f = File.OpenRead(path);
        var head = new byte[8];
        int n = f.Read(head, 0, 8);
        f.Position = 0;
        try
        {
            if (n >= 2 && head[0] == 0x80) return LoadLegacy(f, path);
            if (n >= 4 && head[0] == (byte)'P' && head[1] == (byte)'K') return LoadZip(f, path);
            if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            {
                f.Dispose();
                return TorchSharp.PyBridge.Safetensors.LoadStateDict(path);
            }
        }
        catch (Exception ex) when (ex is not InvalidDataException and not FileNotFoundException)
        {
            throw new InvalidDataException($"{path}: cannot read weights: {ex.Message}", ex);
        }
        throw new InvalidDataException($"{path}: not a PyTorch (.pth/.pt) or .safetensors weights file");
    }

    sealed record StorageRef(string Key, ScalarType Dtype, long Numel);
    sealed record TensorRef(StorageRef Storage, long Offset, long[] Size, long[] Stride);
    sealed record Global(string Module, string Name);
    sealed class PyDict : Dictionary<object, object?> { }

    static Dictionary<string, Tensor> LoadLegacy(Stream f, string path)
    {
        var magic = new Pickle(f, null).Load();
        if (magic is not BigInteger m || m != BigInteger.Parse("119547037146038801333356"))
            throw new InvalidDataException($"{path}: legacy torch file with a bad magic number");
        var protocol = new Pickle(f, null).Load();
        if (Convert.ToInt64(protocol) != 1001) throw new InvalidDataException($"{path}: unsupported torch protocol {protocol}");
        new Pickle(f, null).Load(); // sys_info
        var storages = new Dictionary<string, StorageRef>();
        var root = new Pickle(f, pid => PersistentStorage(pid, storages, path)).Load();
        var keys = (List<object?>)new Pickle(f, null).Load()!;
        var data = new Dictionary<string, byte[]>();
        var br = new BinaryReader(f);
        foreach (var k in keys.Cast<string>())
        {
            var st = storages[k];
            long count = br.ReadInt64();
            int es = (int)ElementSize(st.Dtype);
            data[k] = ReadBytes(f, checked((int)(count * es)), path);
        }
        return Materialize(root, storages, data, path);
    }

    static Dictionary<string, Tensor> LoadZip(Stream f, string path)
    {
        using var zip = new ZipArchive(f, ZipArchiveMode.Read, leaveOpen: true);
        var pkl = zip.Entries.FirstOrDefault(e => e.FullName.EndsWith("/data.pkl") || e.FullName == "data.pkl")
            ?? throw new InvalidDataException($"{path}: zip without data.pkl, not a torch.save file");
        var prefix = pkl.FullName[..^"data.pkl".Length];
        var storages = new Dictionary<string, StorageRef>();
        object? root;
        using (var s = pkl.Open()) root = new Pickle(s, pid => PersistentStorage(pid, storages, path)).Load();
        var data = new Dictionary<string, byte[]>();
        foreach (var (k, st) in storages)
        {
            var e = zip.GetEntry(prefix + "data/" + k) ?? throw new InvalidDataException($"{path}: missing storage data/{k}");
            using var s = e.Open();
            data[k] = ReadBytes(s, checked((int)e.Length), path);
        }
        return Materialize(root, storages, data, path);
    }

    static object PersistentStorage(object? pid, Dictionary<string, StorageRef> storages, string path)
    {
        // ('storage', storage_type, key, location, numel[, view_metadata])
        if (pid is not object?[] t || t.Length < 5 || t[0] as string != "storage")
            throw new InvalidDataException($"{path}: unsupported persistent id in pickle");
        if (t.Length > 5 && t[5] is not null) throw new InvalidDataException($"{path}: storage views are not supported");
        var g = (Global)t[1]!;
        var key = t[2]!.ToString()!;
        if (!storages.TryGetValue(key, out var st))
            storages[key] = st = new StorageRef(key, DtypeOf(g.Name, path), Convert.ToInt64(t[4]));
        return st;
    }

    static ScalarType DtypeOf(string storage, string path) => storage switch
    {
        "FloatStorage" => ScalarType.Float32,
        "DoubleStorage" => ScalarType.Float64,
        "HalfStorage" => ScalarType.Float16,
        "BFloat16Storage" => ScalarType.BFloat16,
        "LongStorage" => ScalarType.Int64,
        "IntStorage" => ScalarType.Int32,
        "ShortStorage" => ScalarType.Int16,
        "CharStorage" => ScalarType.Int8,
        "ByteStorage" => ScalarType.Byte,
        "BoolStorage" => ScalarType.Bool,
        _ => throw new InvalidDataException($"{path}: unsupported storage type {storage}")
    };

    static long ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1
    };

    static Dictionary<string, Tensor> Materialize(object? root, Dictionary<string, StorageRef> storages, Dictionary<string, byte[]> data, string path)
    {
        if (root is not PyDict d) throw new InvalidDataException($"{path}: the pickle does not hold a dict (save model.state_dict(), not the model)");
        var flat = new Dictionary<string, Tensor>();
        var cache = new Dictionary<string, Tensor>();
        void Walk(PyDict dict, string prefix)
        {
            foreach (var (k, v) in dict)
            {
                var name = prefix + k;
                if (v is TensorRef tr)
                {
                    if (!cache.TryGetValue(tr.Storage.Key, out var whole))
                    {
                        whole = torch.empty(new[] { tr.Storage.Numel }, tr.Storage.Dtype);
                        if (tr.Storage.Numel > 0) whole.bytes = data[tr.Storage.Key];
                        cache[tr.Storage.Key] = whole;
                    }
                    flat[name] = whole.as_strided(tr.Size, tr.Stride, tr.Offset).clone();
                }
                else if (v is PyDict sub) Walk(sub, name + ".");
            }
        }
        Walk(d, "");
        foreach (var t in cache.Values) t.Dispose();
        return flat;
    }

    static byte[] ReadBytes(Stream s, int n, string path)
    {
        var b = new byte[n];
        int off = 0;
        while (off < n)
        {
            int r = s.Read(b, off, n - off);
            if (r == 0) throw new InvalidDataException($"{path}: truncated (expected {n} bytes of tensor data)");
            off += r;
        }
        return b;
    }

    /// <summary>Minimal pickle VM (protocols 2-4) for torch state dicts.</summary>
    sealed class Pickle
    {
        readonly BinaryReader _r;
        readonly Func<object?, object>? _persistent;
        readonly List<object?> _stack = new();
        readonly List<int> _marks = new();
        readonly Dictionary<int, object?> _memo = new();

        public Pickle(Stream s, Func<object?, object>? persistent)
        {
            _r = new BinaryReader(s, Encoding.UTF8, leaveOpen: true);
            _persistent = persistent;
        }

        object? Pop() { var v = _stack[^1]; _stack.RemoveAt(_stack.Count - 1); return v; }
        List<object?> PopMark()
        {
            int m = _marks[^1]; _marks.RemoveAt(_marks.Count - 1);
            var items = _stack.GetRange(m, _stack.Count - m);
            _stack.RemoveRange(m, _stack.Count - m);
            return items;
        }

        string Str(int n) => Encoding.UTF8.GetString(_r.ReadBytes(n));

        public object? Load()
        {
            while (true)
            {
                byte op = _r.ReadByte();
                switch (op)
                {
                    case 0x80: _r.ReadByte(); break;                                    // PROTO
                    case 0x95: _r.ReadInt64(); break;                                   // FRAME
                    case (byte)'.': return Pop();                                       // STOP
                    case (byte)'(': _marks.Add(_stack.Count); break;                    // MARK
                    case (byte)'N': _stack.Add(null); break;
                    case 0x88: _stack.Add(true); break;
                    case 0x89: _stack.Add(false); break;
                    case (byte)'J': _stack.Add((long)_r.ReadInt32()); break;            // BININT
                    case (byte)'K': _stack.Add((long)_r.ReadByte()); break;             // BININT1
                    case (byte)'M': _stack.Add((long)_r.ReadUInt16()); break;           // BININT2
                    case 0x8a:                                                          // LONG1
                    {
                        int n = _r.ReadByte();
                        var v = new BigInteger(_r.ReadBytes(n), isUnsigned: false, isBigEndian: false);
                        _stack.Add(v >= long.MinValue && v <= long.MaxValue ? (object)(long)v : v);
                        break;
                    }
                    case (byte)'G': { var b = _r.ReadBytes(8); Array.Reverse(b); _stack.Add(BitConverter.ToDouble(b)); break; }
                    case (byte)'X': _stack.Add(Str(_r.ReadInt32())); break;             // BINUNICODE
                    case 0x8c: _stack.Add(Str(_r.ReadByte())); break;                   // SHORT_BINUNICODE
                    case (byte)'T': _stack.Add(Encoding.Latin1.GetString(_r.ReadBytes(_r.ReadInt32()))); break; // BINSTRING
                    case (byte)'U': _stack.Add(Encoding.Latin1.GetString(_r.ReadBytes(_r.ReadByte()))); break;  // SHORT_BINSTRING
                    case (byte)'B': _stack.Add(_r.ReadBytes(_r.ReadInt32())); break;    // BINBYTES
                    case (byte)'C': _stack.Add(_r.ReadBytes(_r.ReadByte())); break;     // SHORT_BINBYTES
                    case (byte)'}': _stack.Add(new PyDict()); break;
                    case (byte)']': _stack.Add(new List<object?>()); break;
                    case (byte)')': _stack.Add(Array.Empty<object?>()); break;
                    case (byte)'t': _stack.Add(PopMark().ToArray()); break;             // TUPLE
                    case 0x85: _stack.Add(new[] { Pop() }); break;                      // TUPLE1
                    case 0x86: { var b = Pop(); var a = Pop(); _stack.Add(new[] { a, b }); break; }
                    case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); _stack.Add(new[] { a, b, c }); break; }
                    case (byte)'l': _stack.Add(PopMark()); break;                       // LIST
                    case (byte)'d':                                                     // DICT
                    {
                        var items = PopMark(); var dd = new PyDict();
                        for (int i = 0; i < items.Count; i += 2) dd[items[i]!] = items[i + 1];
                        _stack.Add(dd); break;
                    }
                    case (byte)'a': { var v = Pop(); ((List<object?>)_stack[^1]!).Add(v); break; } // APPEND
                    case (byte)'e': { var items = PopMark(); ((List<object?>)_stack[^1]!).AddRange(items); break; } // APPENDS
                    case (byte)'s': { var v = Pop(); var k = Pop(); ((PyDict)_stack[^1]!)[k!] = v; break; }       // SETITEM
                    case (byte)'u':                                                     // SETITEMS
                    {
                        var items = PopMark(); var dd = (PyDict)_stack[^1]!;
                        for (int i = 0; i < items.Count; i += 2) dd[items[i]!] = items[i + 1];
                        break;
                    }
                    case (byte)'q': _memo[_r.ReadByte()] = _stack[^1]; break;           // BINPUT
                    case (byte)'r': _memo[_r.ReadInt32()] = _stack[^1]; break;          // LONG_BINPUT
                    case 0x94: _memo[_memo.Count] = _stack[^1]; break;                  // MEMOIZE
                    case (byte)'h': _stack.Add(_memo[_r.ReadByte()]); break;            // BINGET
                    case (byte)'j': _stack.Add(_memo[_r.ReadInt32()]); break;           // LONG_BINGET
                    case (byte)'c':                                                     // GLOBAL
                    {
                        var mod = ReadLine(); var name = ReadLine();
                        _stack.Add(new Global(mod, name)); break;
                    }
                    case 0x93: { var name = (string)Pop()!; var mod = (string)Pop()!; _stack.Add(new Global(mod, name)); break; } // STACK_GLOBAL
                    case (byte)'Q':                                                     // BINPERSID
                    {
                        if (_persistent is null) throw new InvalidDataException("unexpected persistent id");
                        _stack.Add(_persistent(Pop())); break;
                    }
                    case (byte)'R': { var args = (object?[])Pop()!; var fn = (Global)Pop()!; _stack.Add(Reduce(fn, args)); break; } // REDUCE
                    case 0x81: { var args = (object?[])Pop()!; var cls = (Global)Pop()!; _stack.Add(Reduce(cls, args)); break; }    // NEWOBJ
                    case (byte)'b': Pop(); break;                                       // BUILD: drop state (OrderedDict _metadata)
                    default: throw new InvalidDataException($"unsupported pickle opcode 0x{op:x2}");
                }
            }
        }

        string ReadLine()
        {
            var sb = new StringBuilder();
            for (byte b; (b = _r.ReadByte()) != (byte)'\n';) sb.Append((char)b);
            return sb.ToString();
        }

        // Python 3 pickles OrderedDict() and adds items with SETITEMS; Python 2 era files pass [[k, v], ...] to the constructor.
        static PyDict OrderedDict(object?[] a)
        {
            var d = new PyDict();
            if (a.Length > 0 && a[0] is List<object?> items)
                foreach (var it in items)
                {
                    var kv = it as IList<object?> ?? throw new InvalidDataException("OrderedDict item is not a pair");
                    d[kv[0]!] = kv[1];
                }
            return d;
        }

        static object? Reduce(Global fn, object?[] a) => (fn.Module, fn.Name) switch
        {
            ("collections", "OrderedDict") => OrderedDict(a),
            ("torch._utils", "_rebuild_tensor_v2") or ("torch._utils", "_rebuild_tensor") => new TensorRef(
                (StorageRef)a[0]!, Convert.ToInt64(a[1]), ((object?[])a[2]!).Select(Convert.ToInt64).ToArray(),
                ((object?[])a[3]!).Select(Convert.ToInt64).ToArray()),
            ("torch._utils", "_rebuild_parameter") => a[0],
            _ => fn // unknown callables stay opaque; they only matter if they end up where a tensor is expected
        };
    }
}

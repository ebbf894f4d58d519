using System.Numerics;
using System.Text;

namespace ReTok.Models.IO;

/// <summary>An object the unpickler does not model: a global (`module.name`), or the result of calling/building one.</summary>
public sealed class PickleObject(string module, string name)
{
    public string Module { get; } = module;
    public string Name { get; } = name;
    public object?[] Args { get; set; } = [];
    public object? State { get; set; }
    public string FullName => Module + "." + Name;
    public override string ToString() => $"<{FullName}>";
}

/// <summary>torch storage reference from a persistent id ('storage', type, key, location, numel).</summary>
public sealed record PickleStorage(string StorageType, string Key, string Location, long Numel);

/// <summary>torch._utils._rebuild_tensor_v2 / _rebuild_parameter arguments, materialised later from the zip.</summary>
public sealed record PickleTensor(PickleStorage Storage, long Offset, long[] Size, long[] Stride, bool IsParameter = false);

/// <summary>
/// A minimal unpickler for what torch.save writes, zip and legacy stream formats alike (protocol 2, and the
/// protocol-4/5 opcodes for safety); the only pickle VM in the project (StateDictFile reads through it). It never
/// executes code: globals become <see cref="PickleObject"/>s, except the few torch/collections callables it models
/// (OrderedDict, _rebuild_tensor_v2, _rebuild_parameter). Dicts become Dictionary&lt;object, object?&gt;, lists
/// List&lt;object?&gt;, tuples object?[].
/// </summary>
public sealed class Unpickler
{
    readonly BinaryReader r;
    readonly List<object?> stack = new();
    readonly Stack<int> marks = new();
    readonly Dictionary<long, object?> memo = new();
    readonly string source;

    Unpickler(Stream s, string source) { r = new BinaryReader(s, Encoding.UTF8, leaveOpen: true); this.source = source; }

    public static object? Load(Stream s, string source = "pickle") => new Unpickler(s, source).Run();

    static readonly object MarkObj = new();

    object? Pop() { var o = stack[^1]; stack.RemoveAt(stack.Count - 1); return o; }
    object? Top => stack[^1];
    List<object?> PopMark()
    {
        int m = marks.Pop();
        var items = stack.GetRange(m, stack.Count - m);
        stack.RemoveRange(m, stack.Count - m);
        return items;
    }

    InvalidDataException Bad(string msg) => new($"{source}: {msg}");

    object? Run()
    {
        while (true)
        {
            long at = r.BaseStream.CanSeek ? r.BaseStream.Position : -1;
            int op = r.BaseStream.ReadByte();
            if (op < 0) throw Bad("pickle ended without STOP");
            switch ((byte)op)
            {
                case 0x80: r.ReadByte(); break;                                   // PROTO
                case 0x95: r.ReadInt64(); break;                                  // FRAME
                case (byte)'.': return Pop();                                     // STOP
                case (byte)'(': marks.Push(stack.Count); break;                   // MARK
                case (byte)'}': stack.Add(new Dictionary<object, object?>()); break;
                case (byte)']': stack.Add(new List<object?>()); break;
                case (byte)')': stack.Add(Array.Empty<object?>()); break;
                case (byte)'N': stack.Add(null); break;
                case 0x88: stack.Add(true); break;
                case 0x89: stack.Add(false); break;
                case (byte)'K': stack.Add((long)r.ReadByte()); break;             // BININT1
                case (byte)'M': stack.Add((long)r.ReadUInt16()); break;           // BININT2
                case (byte)'J': stack.Add((long)r.ReadInt32()); break;            // BININT
                case 0x8a: stack.Add(Long(r.ReadBytes(r.ReadByte()))); break;     // LONG1
                case 0x8b: stack.Add(Long(r.ReadBytes(r.ReadInt32()))); break;    // LONG4
                case (byte)'G':                                                   // BINFLOAT (big-endian)
                    { var b = r.ReadBytes(8); Array.Reverse(b); stack.Add(BitConverter.ToDouble(b)); break; }
                case (byte)'I': stack.Add(ParseInt(Line())); break;               // INT (text)
                case (byte)'L': stack.Add(ParseInt(Line().TrimEnd('L'))); break;  // LONG (text)
                case (byte)'F': stack.Add(double.Parse(Line(), System.Globalization.CultureInfo.InvariantCulture)); break;
                case (byte)'X': stack.Add(Encoding.UTF8.GetString(r.ReadBytes(r.ReadInt32()))); break;       // BINUNICODE
                case 0x8c: stack.Add(Encoding.UTF8.GetString(r.ReadBytes(r.ReadByte()))); break;             // SHORT_BINUNICODE
                case 0x8d: stack.Add(Encoding.UTF8.GetString(r.ReadBytes(checked((int)r.ReadInt64())))); break; // BINUNICODE8
                case (byte)'T': stack.Add(Encoding.Latin1.GetString(r.ReadBytes(r.ReadInt32()))); break;     // BINSTRING
                case (byte)'U': stack.Add(Encoding.Latin1.GetString(r.ReadBytes(r.ReadByte()))); break;      // SHORT_BINSTRING
                case (byte)'B': stack.Add(r.ReadBytes(r.ReadInt32())); break;                                // BINBYTES
                case (byte)'C': stack.Add(r.ReadBytes(r.ReadByte())); break;                                 // SHORT_BINBYTES
                case 0x8e: stack.Add(r.ReadBytes(checked((int)r.ReadInt64()))); break;                       // BINBYTES8
                case 0x96: stack.Add(r.ReadBytes(checked((int)r.ReadInt64()))); break;                       // BYTEARRAY8
                case (byte)'V': stack.Add(Line()); break;                                                    // UNICODE (raw)
                case (byte)'S': stack.Add(Line().Trim('\'', '"')); break;                                    // STRING
                case (byte)'t': stack.Add(PopMark().ToArray()); break;            // TUPLE
                case 0x85: stack.Add(new[] { Pop() }); break;                     // TUPLE1
                case 0x86: { var b = Pop(); var a = Pop(); stack.Add(new[] { a, b }); break; }
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); stack.Add(new[] { a, b, c }); break; }
                case (byte)'l': stack.Add(PopMark()); break;                      // LIST
                case (byte)'a': { var v = Pop(); ((List<object?>)Top!).Add(v); break; }           // APPEND
                case (byte)'e': { var items = PopMark(); ((List<object?>)Top!).AddRange(items); break; }  // APPENDS
                case (byte)'d':                                                   // DICT
                    { var items = PopMark(); var d = new Dictionary<object, object?>(); for (int i = 0; i + 1 < items.Count; i += 2) d[Key(items[i])] = items[i + 1]; stack.Add(d); break; }
                case (byte)'s': { var v = Pop(); var k = Pop(); SetItem(Top, k, v); break; }      // SETITEM
                case (byte)'u':                                                   // SETITEMS
                    { var items = PopMark(); for (int i = 0; i + 1 < items.Count; i += 2) SetItem(Top, items[i], items[i + 1]); break; }
                case 0x8f: stack.Add(new HashSet<object>()); break;               // EMPTY_SET
                case 0x90: { var items = PopMark(); var set = (HashSet<object>)Top!; foreach (var i in items) set.Add(Key(i)); break; }  // ADDITEMS
                case 0x91: stack.Add(new HashSet<object>(PopMark().Select(Key))); break;                   // FROZENSET
                case (byte)'q': memo[r.ReadByte()] = Top; break;                  // BINPUT
                case (byte)'r': memo[r.ReadUInt32()] = Top; break;                // LONG_BINPUT
                case (byte)'p': memo[long.Parse(Line())] = Top; break;            // PUT
                case 0x94: memo[memo.Count] = Top; break;                         // MEMOIZE
                case (byte)'h': stack.Add(Memo(r.ReadByte())); break;             // BINGET
                case (byte)'j': stack.Add(Memo(r.ReadUInt32())); break;           // LONG_BINGET
                case (byte)'g': stack.Add(Memo(long.Parse(Line()))); break;       // GET
                case (byte)'c': { var mod = Line(); var name = Line(); stack.Add(new PickleObject(mod, name)); break; }   // GLOBAL
                case 0x93: { var name = (string)Pop()!; var mod = (string)Pop()!; stack.Add(new PickleObject(mod, name)); break; }  // STACK_GLOBAL
                case (byte)'R': { var args = (object?[])Pop()!; var f = Pop(); stack.Add(Call(f, args)); break; }        // REDUCE
                case 0x81: { var args = (object?[])Pop()!; var cls = Pop(); stack.Add(Call(cls, args)); break; }        // NEWOBJ
                case 0x92: { Pop(); var args = (object?[])Pop()!; var cls = Pop(); stack.Add(Call(cls, args)); break; } // NEWOBJ_EX
                case (byte)'b': { var state = Pop(); Build(Top, state); break; }  // BUILD
                case (byte)'Q': stack.Add(Persistent(Pop())); break;              // BINPERSID
                case (byte)'P': stack.Add(Persistent(Line())); break;             // PERSID
                case (byte)'0': Pop(); break;                                     // POP
                case (byte)'1': PopMark(); break;                                 // POP_MARK
                case (byte)'2': stack.Add(Top); break;                            // DUP
                default: throw Bad($"unsupported pickle opcode 0x{op:x2} at byte {at} (not a torch.save file?)");
            }
        }
    }

    string Line()
    {
        var sb = new StringBuilder();
        int c;
        while ((c = r.BaseStream.ReadByte()) >= 0 && c != '\n') sb.Append((char)c);
        return sb.ToString();
    }

    static object ParseInt(string s) => s switch { "00" => false, "01" => true, _ => long.Parse(s) };

    static object Long(byte[] le)
    {
        if (le.Length == 0) return 0L;
        var v = new BigInteger(le, isUnsigned: false, isBigEndian: false);
        return v >= long.MinValue && v <= long.MaxValue ? (long)v : v;
    }

    object? Memo(long i) => memo.TryGetValue(i, out var v) ? v : throw Bad($"pickle memo key {i} missing");

    static object Key(object? k) => k switch
    {
        null => "None",
        object?[] t => string.Join(",", t.Select(x => x?.ToString())),   // tuple keys (rare in checkpoints) as text
        _ => k,
    };

    static void SetItem(object? target, object? k, object? v)
    {
        switch (target)
        {
            case Dictionary<object, object?> d: d[Key(k)] = v; break;
            case PickleObject p: p.State ??= new Dictionary<object, object?>(); if (p.State is Dictionary<object, object?> pd) pd[Key(k)] = v; break;
            default: throw new InvalidDataException($"SETITEM on {target?.GetType().Name ?? "null"}");
        }
    }

    static void Build(object? target, object? state)
    {
        // OrderedDict state_dicts carry `_metadata` through BUILD; plain objects (argparse.Namespace) keep their dict.
        if (target is PickleObject p) p.State = state;
    }

    object Persistent(object? pid)
    {
        if (pid is object?[] t && t.Length >= 5 && t[0] as string == "storage")
        {
            if (t.Length > 5 && t[5] is not null) throw Bad("storage views (pre-0.4 torch files) are not supported");
            var type = t[1] switch { PickleObject g => g.Name, string s => s, var o => o?.ToString() ?? "?" };
            return new PickleStorage(type, t[2]!.ToString()!, t[3]?.ToString() ?? "cpu", Convert.ToInt64(t[4]));
        }
        throw Bad($"unsupported persistent id {pid} (only torch storages are supported)");
    }

    object? Call(object? f, object?[] args)
    {
        if (f is not PickleObject g) throw Bad($"REDUCE on a non-global {f?.GetType().Name}");
        switch (g.FullName)
        {
            case "collections.OrderedDict":
            case "builtins.dict":
                var d = new Dictionary<object, object?>();
                if (args.Length > 0 && args[0] is List<object?> pairs)
                    foreach (var pair in pairs) if (pair is IList<object?> kv && kv.Count == 2) d[Key(kv[0])] = kv[1];   // (k, v) or py2-era [k, v]
                return d;
            case "torch._utils._rebuild_tensor_v2":
            case "torch._utils._rebuild_tensor":
                if (args.Length < 4 || args[0] is not PickleStorage st) throw Bad("malformed _rebuild_tensor_v2 arguments");
                return new PickleTensor(st, Convert.ToInt64(args[1]), Longs(args[2]), Longs(args[3]));
            case "torch._utils._rebuild_parameter":
            case "torch._utils._rebuild_parameter_with_state":
                return args.Length > 0 && args[0] is PickleTensor pt ? pt with { IsParameter = true } : args.FirstOrDefault();
            case "builtins.set":
            case "builtins.frozenset":
                return new HashSet<object>((args.FirstOrDefault() as List<object?> ?? new()).Select(Key));
            case "builtins.list":
                return args.FirstOrDefault() as List<object?> ?? new List<object?>();
            case "builtins.tuple":
                return (args.FirstOrDefault() as List<object?>)?.ToArray() ?? Array.Empty<object?>();
            default:
                return new PickleObject(g.Module, g.Name) { Args = args };
        }
    }

    static long[] Longs(object? o) => o switch
    {
        object?[] t => t.Select(Convert.ToInt64).ToArray(),
        List<object?> l => l.Select(Convert.ToInt64).ToArray(),
        _ => throw new InvalidDataException($"expected a tuple of ints, got {o}"),
    };
}

using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace ReTok.Evaluation.Images;

/// <summary>One row of the devkit's synsets table.</summary>
public sealed record Synset(int Id, string Wnid, string Words);

/// <summary>
/// Reads `synsets` (ILSVRC2012_ID, WNID, words) from the ILSVRC2012 devkit's data/meta.mat: a MATLAB level-5 MAT-file
/// (possibly with zlib-compressed elements), read here with a minimal reader of numeric, char, cell and struct arrays;
/// enough for meta.mat, not a general MAT reader.
/// </summary>
public static class DevkitMeta
{
    public static List<Synset> Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"devkit_meta: {path} does not exist", path);
        var vars = MatFile.Read(File.ReadAllBytes(path), path);
        if (!vars.TryGetValue("synsets", out var s) || s is not MatStruct st)
            throw new InvalidDataException($"{path}: no struct variable 'synsets' ({vars.Count} other variables); is this the devkit's data/meta.mat?");
        foreach (var f in new[] { "ILSVRC2012_ID", "WNID" })
            if (!st.Fields.Contains(f)) throw new InvalidDataException($"{path}: synsets has no field '{f}' ({st.Fields.Count} other fields)");
        return st.Elements.Select((e, i) =>
        {
            int id = e["ILSVRC2012_ID"] is double[] { Length: 1 } d ? (int)d[0] : throw new InvalidDataException($"{path}: synsets({i + 1}).ILSVRC2012_ID is not a number");
            var wnid = e["WNID"] as string ?? throw new InvalidDataException($"{path}: synsets({i + 1}).WNID is not text");
            var words = e.TryGetValue("words", out var w) && w is string ws ? ws : "";
            return new Synset(id, wnid, words);
        }).ToList();
    }
}

/// <summary>A MATLAB struct array: field names and one field→value map per element (column-major order).</summary>
public sealed record MatStruct(IReadOnlyList<string> Fields, IReadOnlyList<Dictionary<string, object?>> Elements);

/// <summary>Minimal MAT v5 reader: numeric arrays → double[], char arrays → string, cells → object?[], structs → <see cref="MatStruct"/>.</summary>
public static class MatFile
{
    const int MiInt8 = 1, MiUint8 = 2, MiInt16 = 3, MiUint16 = 4, MiInt32 = 5, MiUint32 = 6, MiSingle = 7, MiDouble = 9,
        MiInt64 = 12, MiUint64 = 13, MiMatrix = 14, MiCompressed = 15, MiUtf8 = 16, MiUtf16 = 17, MiUtf32 = 18;
    const int MxCell = 1, MxStruct = 2, MxChar = 4;

    public static Dictionary<string, object?> Read(byte[] file, string what)
    {
        if (file.Length < 128 || !Encoding.ASCII.GetString(file, 0, 6).StartsWith("MATLAB"))
            throw new InvalidDataException($"{what}: not a MATLAB 5.0 MAT-file (MATLAB v7.3/HDF5 files are not supported)");
        if (file[126] != (byte)'I' || file[127] != (byte)'M')
            throw new InvalidDataException($"{what}: big-endian MAT-files are not supported");
        var vars = new Dictionary<string, object?>();
        int pos = 128;
        while (pos + 8 <= file.Length)
        {
            var (type, size, data, next) = Element(file, pos, what);
            pos = next;
            if (type == MiCompressed)
            {
                using var z = new ZLibStream(new MemoryStream(file, data, size), CompressionMode.Decompress);
                using var ms = new MemoryStream();
                z.CopyTo(ms);
                var inner = ms.ToArray();
                var (t2, s2, d2, _) = Element(inner, 0, what);
                if (t2 != MiMatrix) continue;
                var (name, value) = Matrix(inner, d2, s2, what);
                vars[name] = value;
            }
            else if (type == MiMatrix)
            {
                var (name, value) = Matrix(file, data, size, what);
                vars[name] = value;
            }
        }
        return vars;
    }

    /// <summary>Tag at <paramref name="pos"/>: (type, byte count, data offset, offset of the next element).</summary>
    static (int Type, int Size, int Data, int Next) Element(byte[] b, int pos, string what)
    {
        if (pos + 8 > b.Length) throw new InvalidDataException($"{what}: truncated MAT element at byte {pos}");
        uint first = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(pos));
        if ((first >> 16) != 0) return ((int)(first & 0xFFFF), (int)(first >> 16), pos + 4, pos + 8); // small data element
        int type = (int)first, size = BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(pos + 4));
        if (size < 0 || pos + 8L + size > b.Length) throw new InvalidDataException($"{what}: MAT element at byte {pos} claims {size} bytes past the end");
        int next = type == MiCompressed ? pos + 8 + size : pos + 8 + ((size + 7) & ~7);
        return (type, size, pos + 8, next);
    }

    static (string Name, object? Value) Matrix(byte[] b, int start, int size, string what)
    {
        if (size == 0) return ("", null);
        int end = start + size, p = start;
        var (ft, _, fd, fn) = Element(b, p, what);
        if (ft != MiUint32) throw new InvalidDataException($"{what}: array flags expected at byte {p}");
        int cls = b[fd] & 0xFF;
        p = fn;
        var (_, ds, dd, dn) = Element(b, p, what);
        var dims = Numbers(b, MiInt32, dd, ds).Select(x => (int)x).ToArray();
        p = dn;
        var (_, ns, nd, nn) = Element(b, p, what);
        var name = Encoding.ASCII.GetString(b, nd, ns);
        p = nn;
        int count = dims.Aggregate(1, (a, x) => a * x);
        switch (cls)
        {
            case MxChar:
            {
                if (count == 0) return (name, "");
                var (ct, cs, cd, _) = Element(b, p, what);
                string text = ct switch
                {
                    MiUtf8 or MiUint8 or MiInt8 => Encoding.UTF8.GetString(b, cd, cs),
                    MiUtf16 or MiUint16 => Encoding.Unicode.GetString(b, cd, cs),
                    _ => new string(Numbers(b, ct, cd, cs).Select(x => (char)x).ToArray()),
                };
                // column-major: for a 1 x n row vector the order is the text order; for m x n take rows
                if (dims.Length == 2 && dims[0] > 1)
                    text = string.Join("\n", Enumerable.Range(0, dims[0]).Select(r => new string(Enumerable.Range(0, dims[1]).Select(c => text[c * dims[0] + r]).ToArray())));
                return (name, text);
            }
            case MxCell:
            {
                var items = new object?[count];
                for (int i = 0; i < count; i++)
                {
                    var (_, s, d, n) = Element(b, p, what);
                    items[i] = Matrix(b, d, s, what).Value;
                    p = n;
                }
                return (name, items);
            }
            case MxStruct:
            {
                var (_, ls, ld, ln) = Element(b, p, what);
                int flen = (int)Numbers(b, MiInt32, ld, ls)[0];
                p = ln;
                var (_, fs, fdd, fnn) = Element(b, p, what);
                p = fnn;
                int nf = flen == 0 ? 0 : fs / flen;
                var fields = Enumerable.Range(0, nf).Select(i => Encoding.ASCII.GetString(b, fdd + i * flen, flen).TrimEnd('\0')).ToList();
                var elements = new List<Dictionary<string, object?>>(count);
                for (int e = 0; e < count; e++)
                {
                    var d = new Dictionary<string, object?>();
                    foreach (var f in fields)
                    {
                        var (_, s, dd2, n) = Element(b, p, what);
                        d[f] = Matrix(b, dd2, s, what).Value;
                        p = n;
                    }
                    elements.Add(d);
                }
                return (name, new MatStruct(fields, elements));
            }
            case >= 6 and <= 15:
            {
                if (count == 0 || p >= end) return (name, Array.Empty<double>());
                var (rt, rs, rd, _) = Element(b, p, what);
                return (name, Numbers(b, rt, rd, rs));
            }
            default: return (name, null); // sparse, objects, function handles: not needed
        }
    }

    static double[] Numbers(byte[] b, int type, int at, int size)
    {
        int item = type switch
        {
            MiInt8 or MiUint8 => 1, MiInt16 or MiUint16 => 2, MiInt32 or MiUint32 or MiSingle => 4, MiDouble or MiInt64 or MiUint64 => 8,
            _ => throw new InvalidDataException($"MAT data type {type} is not a number type"),
        };
        var r = new double[size / item];
        for (int i = 0; i < r.Length; i++)
        {
            var s = b.AsSpan(at + i * item, item);
            r[i] = type switch
            {
                MiInt8 => (sbyte)s[0], MiUint8 => s[0],
                MiInt16 => BinaryPrimitives.ReadInt16LittleEndian(s), MiUint16 => BinaryPrimitives.ReadUInt16LittleEndian(s),
                MiInt32 => BinaryPrimitives.ReadInt32LittleEndian(s), MiUint32 => BinaryPrimitives.ReadUInt32LittleEndian(s),
                MiSingle => BinaryPrimitives.ReadSingleLittleEndian(s), MiDouble => BinaryPrimitives.ReadDoubleLittleEndian(s),
                MiInt64 => BinaryPrimitives.ReadInt64LittleEndian(s), _ => BinaryPrimitives.ReadUInt64LittleEndian(s),
            };
        }
        return r;
    }
}

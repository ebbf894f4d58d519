using System.Buffers.Binary;
using System.IO.Compression;
using ReTok.Models.Images;
using SkiaSharp;

namespace ReTok.Evaluation.Images;

/// <summary>
/// Decode like PIL's <c>Image.open(p).convert('RGB')</c> and write 8-bit RGB PNGs. SkiaSharp's libjpeg-turbo/libpng decode is
/// bit-identical to PIL for JPEG and PNG (platform.md section 4). Grey is replicated, alpha is dropped without
/// premultiplying (we decode unpremultiplied), palettes are expanded, no colour management and no EXIF rotation are applied
/// (PIL applies neither). Adobe (inverted) CMYK JPEGs come out as PIL's cmyk2rgb does (both compute round(c*k/255)).
/// </summary>
public static class ImageIO
{
    public static readonly string[] Extensions = { ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp" };

    public static bool IsImageFile(string path) => Extensions.Contains(Path.GetExtension(path).ToLowerInvariant());

    public static RgbImage LoadRgb(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"image not found: {path}", path);
        return DecodeRgb(File.ReadAllBytes(path), path);
    }

    public static unsafe RgbImage DecodeRgb(byte[] bytes, string what = "image")
    {
        using var data = SKData.CreateCopy(bytes); // native buffer: no managed-stream callbacks while decoding
        using var codec = SKCodec.Create(data)
            ?? throw new InvalidDataException($"{what}: cannot decode image; the file is corrupt or not an image");
        int w = codec.Info.Width, h = codec.Info.Height;
        // ColorSpace null = no colour conversion, as PIL.
        var info = new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var rgba = new byte[checked(w * h * 4)];
        SKCodecResult r;
        fixed (byte* p = rgba) r = codec.GetPixels(info, (IntPtr)p);
        // PIL refuses truncated files by default (LOAD_TRUNCATED_IMAGES = False), so do we.
        if (r != SKCodecResult.Success)
            throw new InvalidDataException($"{what}: cannot decode image ({r}); the file is corrupt or truncated");
        var img = new RgbImage(w, h);
        for (int i = 0, n = w * h; i < n; i++)
        {
            img.Pixels[i * 3] = rgba[i * 4];
            img.Pixels[i * 3 + 1] = rgba[i * 4 + 1];
            img.Pixels[i * 3 + 2] = rgba[i * 4 + 2];
        }
        return img;
    }

    /// <summary>Writes an 8-bit RGB PNG (colour type 2) atomically, so PIL reads it back as mode 'RGB'.</summary>
    public static void SavePng(string path, RgbImage img) => ReTok.Models.IO.AtomicFile.Write(path, s => WritePng(s, img));

    public static byte[] EncodePng(RgbImage img)
    {
        using var ms = new MemoryStream();
        WritePng(ms, img);
        return ms.ToArray();
    }

    public static void WritePng(Stream s, RgbImage img)
    {
        s.Write(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A });
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, img.Width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), img.Height);
        ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
        Chunk(s, "IHDR", ihdr);
        using (var raw = new MemoryStream())
        {
            using (var z = new ZLibStream(raw, CompressionLevel.Fastest, leaveOpen: true))
            {
                int stride = img.Width * 3;
                var prev = new byte[stride];
                var cand = new byte[5][];
                for (int f = 0; f < 5; f++) cand[f] = new byte[stride];
                for (int y = 0; y < img.Height; y++)
                {
                    var row = img.Pixels.AsSpan(y * stride, stride);
                    int best = FilterRow(row, prev, cand);
                    z.WriteByte((byte)best);
                    z.Write(cand[best]);
                    row.CopyTo(prev);
                }
            }
            Chunk(s, "IDAT", raw.ToArray());
        }
        Chunk(s, "IEND", Array.Empty<byte>());
    }

    /// <summary>libpng's default heuristic: try the five filters, keep the one with the smallest sum of |signed bytes|.</summary>
    static int FilterRow(ReadOnlySpan<byte> row, byte[] prev, byte[][] cand)
    {
        int n = row.Length, best = 0;
        long bestSum = long.MaxValue;
        for (int f = 0; f < 5; f++)
        {
            var o = cand[f];
            long sum = 0;
            for (int i = 0; i < n; i++)
            {
                int a = i >= 3 ? row[i - 3] : 0, b = prev[i], c = i >= 3 ? prev[i - 3] : 0;
                int pred = f switch { 0 => 0, 1 => a, 2 => b, 3 => (a + b) >> 1, _ => Paeth(a, b, c) };
                byte v = (byte)(row[i] - pred);
                o[i] = v;
                sum += Math.Abs((int)(sbyte)v);
            }
            if (sum < bestSum) { bestSum = sum; best = f; }
        }
        return best;
    }

    static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }

    static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
        s.Write(len);
        var t = System.Text.Encoding.ASCII.GetBytes(type);
        s.Write(t);
        s.Write(data);
        uint crc = Crc32(Crc32(0xFFFFFFFFu, t), data) ^ 0xFFFFFFFFu;
        BinaryPrimitives.WriteUInt32BigEndian(len, crc);
        s.Write(len);
    }

    static readonly uint[] CrcTable = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        return c;
    }).ToArray();

    static uint Crc32(uint crc, byte[] data)
    {
        foreach (var b in data) crc = CrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }
}

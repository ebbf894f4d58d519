namespace ReTok.Models.Images;

public enum PilFilter { Box, Bilinear, Bicubic }

/// <summary>
/// Bit-exact port of Pillow's 8-bit resampler (src/libImaging/Resample.c, unchanged from 9.x to 10.4): separable,
/// horizontal pass first into a uint8 image, then vertical; weights normalised in double and rounded to 22-bit fixed point;
/// each output = clip8((2^21 + sum(pixel * w)) >> 22). Only the full-image box (Image.resize without box=) is supported.
/// Same integer arithmetic as PIL, so results are bit-identical (ImageTests.PilResizeIsBitIdenticalForBoxBilinearBicubic,
/// DataTests.PilResizeIsBitExact).
/// </summary>
public static class PilResize
{
    const int PrecisionBits = 32 - 8 - 2;

    static double Support(PilFilter f) => f switch { PilFilter.Box => 0.5, PilFilter.Bilinear => 1.0, _ => 2.0 };

    static double Filter(PilFilter f, double x)
    {
        switch (f)
        {
            case PilFilter.Box:
                return x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
            case PilFilter.Bilinear:
                if (x < 0.0) x = -x;
                return x < 1.0 ? 1.0 - x : 0.0;
            default:
                const double a = -0.5; // Pillow's bicubic uses a = -0.5 (torch uses -0.75)
                if (x < 0.0) x = -x;
                if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
                if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
                return 0.0;
        }
    }

    /// <summary>precompute_coeffs + normalize_coeffs_8bpc: per output index the first input index, the tap count and fixed-point weights.</summary>
    internal static (int[] Bounds, int[] Kk, int KSize) Coefficients(int inSize, int outSize, PilFilter filter)
    {
        double scale = (double)inSize / outSize, filterscale = scale < 1.0 ? 1.0 : scale;
        double support = Support(filter) * filterscale;
        int ksize = (int)Math.Ceiling(support) * 2 + 1;
        var bounds = new int[outSize * 2];
        var kk = new int[outSize * ksize];
        var k = new double[ksize];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            for (int x = 0; x < xmax; x++) { double w = Filter(filter, (x + xmin - center + 0.5) * ss); k[x] = w; ww += w; }
            for (int x = 0; x < xmax; x++) if (ww != 0.0) k[x] /= ww;
            for (int x = 0; x < ksize; x++)
            {
                double v = x < xmax ? k[x] : 0.0;
                kk[xx * ksize + x] = v < 0 ? (int)(-0.5 + v * (1 << PrecisionBits)) : (int)(0.5 + v * (1 << PrecisionBits));
            }
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        return (bounds, kk, ksize);
    }

    static byte Clip8(int v) => v >= (1 << PrecisionBits << 8) ? (byte)255 : v <= 0 ? (byte)0 : (byte)(v >> PrecisionBits);

    /// <summary>PIL <c>img.resize((w, h), resample)</c> for an RGB image.</summary>
    public static RgbImage Resize(RgbImage src, int outW, int outH, PilFilter filter)
    {
        if (outW <= 0 || outH <= 0) throw new ArgumentOutOfRangeException(nameof(outW), $"resize to {outW}x{outH}: sizes must be positive");
        if (outW == src.Width && outH == src.Height) return src with { Pixels = (byte[])src.Pixels.Clone() }; // PIL returns a copy
        bool needH = outW != src.Width, needV = outH != src.Height;
        var (bh, kh, ksh) = Coefficients(src.Width, outW, filter);
        var (bv, kv, ksv) = Coefficients(src.Height, outH, filter);
        int yFirst = bv[0], yLast = bv[outH * 2 - 2] + bv[outH * 2 - 1];

        RgbImage cur = src;
        if (needH)
        {
            // Like PIL, only the source rows the vertical pass will read are resampled horizontally.
            for (int i = 0; i < outH; i++) bv[i * 2] -= yFirst;
            var tmp = new RgbImage(outW, yLast - yFirst);
            Parallel.For(0, tmp.Height, yy =>
            {
                int inRow = (yy + yFirst) * src.Width * 3, outRow = yy * outW * 3;
                var p = src.Pixels;
                for (int xx = 0; xx < outW; xx++)
                {
                    int xmin = bh[xx * 2], xmax = bh[xx * 2 + 1], kb = xx * ksh;
                    int s0 = 1 << (PrecisionBits - 1), s1 = s0, s2 = s0;
                    for (int x = 0; x < xmax; x++)
                    {
                        int w = kh[kb + x], o = inRow + (x + xmin) * 3;
                        s0 += p[o] * w; s1 += p[o + 1] * w; s2 += p[o + 2] * w;
                    }
                    tmp.Pixels[outRow + xx * 3] = Clip8(s0);
                    tmp.Pixels[outRow + xx * 3 + 1] = Clip8(s1);
                    tmp.Pixels[outRow + xx * 3 + 2] = Clip8(s2);
                }
            });
            cur = tmp;
        }
        // else no horizontal pass: the vertical pass reads the source directly with unshifted bounds.
        if (!needV) return cur;

        var dst = new RgbImage(cur.Width, outH);
        int rowLen = cur.Width * 3;
        Parallel.For(0, outH, () => new int[rowLen], (yy, _, acc) =>
        {
            int ymin = bv[yy * 2], ymax = bv[yy * 2 + 1], kb = yy * ksv;
            var p = cur.Pixels;
            Array.Fill(acc, 1 << (PrecisionBits - 1));
            for (int y = 0; y < ymax; y++) // row-major accumulation: same integer sums as PIL's per-pixel loop
            {
                int k = kv[kb + y], row = (y + ymin) * rowLen;
                for (int i = 0; i < rowLen; i++) acc[i] += p[row + i] * k;
            }
            for (int i = 0; i < rowLen; i++) dst.Pixels[yy * rowLen + i] = Clip8(acc[i]);
            return acc;
        }, _ => { });
        return dst;
    }
}

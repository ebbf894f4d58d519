namespace ReTok.Evaluation.Metrics;

/// <summary>
/// Per-image PSNR and SSIM exactly as ReTok's reconstruction_ddp.py computes them with scikit-image:
/// gt = (Normalize(ToTensor(v)) + 1) / 2 and restored = u8 / 255 in float32;
/// PSNR = peak_signal_noise_ratio(restored, gt): data_range 1, MSE of float32 differences accumulated in float64;
/// SSIM = structural_similarity(restored, gt, channel_axis=-1, data_range=2.0): note data_range 2.0 on [0,1] data
/// (C1 = 4e-4, C2 = 3.6e-3; the reference's quirk, kept), 7x7 uniform window (scipy uniform_filter with its running-mean
/// arithmetic and 'reflect' borders), sample covariance 49/48, float32 maps, 3-pixel crop, float64 mean per channel,
/// channel mean in float32.
/// </summary>
public static class ReconMetrics
{
    /// <summary>Both inputs uint8 HWC RGB of the same size (gt first).</summary>
    public static double Psnr(ReadOnlySpan<byte> gt, ReadOnlySpan<byte> recon)
    {
        if (gt.Length != recon.Length || gt.Length == 0) throw new ArgumentException($"PSNR: image sizes differ ({gt.Length} vs {recon.Length} values)");
        double acc = 0;
        for (int i = 0; i < gt.Length; i++)
        {
            float d = Restored(recon[i]) - Gt(gt[i]);
            acc += d * d; // float32 square, float64 accumulation
        }
        double mse = acc / gt.Length;
        return 10 * Math.Log10(1.0 / mse);
    }

    static float Gt(byte v) => ((v / 255f - 0.5f) / 0.5f + 1f) / 2f;
    static float Restored(byte v) => v / 255f;

    public static double Ssim(ReadOnlySpan<byte> gt, ReadOnlySpan<byte> recon, int height, int width, int channels = 3, double dataRange = 2.0)
    {
        if (gt.Length != recon.Length || gt.Length != height * width * channels)
            throw new ArgumentException($"SSIM: expected {height}x{width}x{channels} images, got {gt.Length} and {recon.Length} values");
        if (height < 7 || width < 7) throw new ArgumentException("SSIM: win_size 7 exceeds image extent");
        var x = new float[height * width];
        var y = new float[height * width];
        float sum = 0f;
        for (int c = 0; c < channels; c++)
        {
            for (int i = 0; i < height * width; i++)
            {
                x[i] = Restored(recon[i * channels + c]); // im1 = restored
                y[i] = Gt(gt[i * channels + c]);         // im2 = gt
            }
            sum += (float)SsimPlane(x, y, height, width, dataRange);
        }
        return sum / channels;
    }

    /// <summary>skimage structural_similarity on one float32 plane (gaussian_weights=False, win 7, sample covariance).</summary>
    public static double SsimPlane(float[] x, float[] y, int h, int w, double dataRange)
    {
        int n = h * w;
        var xx = new float[n]; var yy = new float[n]; var xy = new float[n];
        for (int i = 0; i < n; i++) { xx[i] = x[i] * x[i]; yy[i] = y[i] * y[i]; xy[i] = x[i] * y[i]; }
        var ux = UniformFilter(x, h, w, 7); var uy = UniformFilter(y, h, w, 7);
        var uxx = UniformFilter(xx, h, w, 7); var uyy = UniformFilter(yy, h, w, 7); var uxy = UniformFilter(xy, h, w, 7);
        // numpy: python-float scalars meet float32 arrays as float32.
        float covNorm = (float)(49.0 / 48.0), c1 = (float)Math.Pow(0.01 * dataRange, 2), c2 = (float)Math.Pow(0.03 * dataRange, 2);
        const int pad = 3;
        double acc = 0;
        for (int r = pad; r < h - pad; r++)
            for (int c = pad; c < w - pad; c++)
            {
                int i = r * w + c;
                float vx = covNorm * (uxx[i] - ux[i] * ux[i]);
                float vy = covNorm * (uyy[i] - uy[i] * uy[i]);
                float vxy = covNorm * (uxy[i] - ux[i] * uy[i]);
                float a1 = 2 * ux[i] * uy[i] + c1, a2 = 2 * vxy + c2;
                float b1 = ux[i] * ux[i] + uy[i] * uy[i] + c1, b2 = vx + vy + c2;
                float d = b1 * b2;
                acc += (a1 * a2) / d;
            }
        return acc / ((h - 2 * pad) * (w - 2 * pad));
    }

    /// <summary>scipy.ndimage.uniform_filter (mode 'reflect') on float32: axis 0 then axis 1, running mean in double, float32 in between.</summary>
    public static float[] UniformFilter(float[] src, int h, int w, int size)
    {
        var tmp = new float[h * w];
        var dst = new float[h * w];
        var line = new double[Math.Max(h, w) + size];
        var outLine = new double[Math.Max(h, w)];
        int size1 = size / 2, size2 = size - size1 - 1;
        for (int c = 0; c < w; c++)
        {
            for (int j = 0; j < h + size1 + size2; j++) line[j] = src[Reflect(j - size1, h) * w + c];
            Filter1D(line, h, size, outLine);
            for (int r = 0; r < h; r++) tmp[r * w + c] = (float)outLine[r];
        }
        for (int r = 0; r < h; r++)
        {
            for (int j = 0; j < w + size1 + size2; j++) line[j] = tmp[r * w + Reflect(j - size1, w)];
            Filter1D(line, w, size, outLine);
            for (int c = 0; c < w; c++) dst[r * w + c] = (float)outLine[c];
        }
        return dst;
    }

    // NI_UniformFilter1D: ext holds the line extended by size/2 values on the left
    static void Filter1D(double[] ext, int len, int size, double[] o)
    {
        double tmp = 0.0;
        for (int l = 0; l < size; l++) tmp += ext[l];
        tmp /= size;
        o[0] = tmp;
        for (int l = 1; l < len; l++)
        {
            tmp += (ext[l + size - 1] - ext[l - 1]) / size;
            o[l] = tmp;
        }
    }

    // scipy 'reflect' (half-sample symmetric): d c b a | a b c d | d c b a
    static int Reflect(int i, int n)
    {
        if (n == 1) return 0;
        int period = 2 * n;
        i %= period;
        if (i < 0) i += period;
        return i < n ? i : period - 1 - i;
    }
}

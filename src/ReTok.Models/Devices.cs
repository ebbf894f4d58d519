using TorchSharp;

namespace ReTok.Models;

/// <summary>The one place that turns a device request into a torch device.</summary>
public static class Devices
{
    /// <summary>
    /// "cpu", "cuda", "cuda:N", "auto" or a bare GPU index; "auto" = cuda:0 when available, CPU otherwise. CUDA devices
    /// always come back with an explicit index: TorchSharp's <c>torch.CUDA</c> and <c>new Device("cuda")</c> have index
    /// -1, which libtorch reads as "the current device" and which breaks device comparisons and per-device settings.
    /// On a CUDA device the process-wide math settings (<see cref="GpuMath"/>: TF32) are applied.
    /// </summary>
    public static torch.Device Resolve(string? request = "auto")
    {
        bool cuda = torch.cuda.is_available();
        var canonical = Canonical(request, cuda, cuda ? torch.cuda.device_count() : 0);
        var dev = new torch.Device(canonical);
        if (dev.type == DeviceType.CUDA) GpuMath.Apply();
        return dev;
    }

    /// <summary>The request as "cpu" or "cuda:N" (N explicit), given what the machine offers; bad requests throw with the value.</summary>
    public static string Canonical(string? request, bool cudaAvailable, int cudaDeviceCount)
    {
        var r = string.IsNullOrWhiteSpace(request) ? "auto" : request.Trim().ToLowerInvariant();
        if (r == "auto") return cudaAvailable && cudaDeviceCount > 0 ? "cuda:0" : "cpu";
        if (r == "cpu") return "cpu";
        if (int.TryParse(r, out var bare)) r = $"cuda:{bare}";
        int index;
        if (r == "cuda") index = 0;
        else if (r.StartsWith("cuda:") && int.TryParse(r.AsSpan(5), out var i) && i >= 0) index = i;
        else throw new ArgumentException($"unknown device '{request}': expected auto, cpu, cuda, cuda:N or N");
        if (!cudaAvailable)
            throw new InvalidOperationException($"device '{request}' requested but CUDA is not available in this build/machine (TorchBackend=cpu?)");
        if (index >= cudaDeviceCount)
            throw new InvalidOperationException($"device '{request}' requested but only {cudaDeviceCount} CUDA device(s) are visible");
        return $"cuda:{index}";
    }

    /// <summary>How many CUDA devices this process sees (CUDA_VISIBLE_DEVICES / the device plugin decide); 0 without CUDA.</summary>
    public static int CudaDeviceCount() => torch.cuda.is_available() ? torch.cuda.device_count() : 0;

    /// <summary>Human description for run records: "cpu (2 threads)" or "cuda:0".</summary>
    public static string Describe(torch.Device d) => d.type == DeviceType.CPU ? $"cpu ({torch.get_num_threads()} threads)" : $"cuda:{Math.Max(0, d.index)}";
}

/// <summary>
/// Process-wide CUDA math settings. TF32 (10-bit mantissa inputs, fp32 accumulate) for cuBLAS matmuls and cuDNN
/// convolutions is on by default because the authors' scripts turn both on (torch.backends.cuda.matmul.allow_tf32 =
/// True; torch.backends.cudnn.allow_tf32 = True), while libtorch/TorchSharp default matmuls to off; without it our
/// tokenizer ran 1.3-1.4x slower than the reference on an H200. RETOK_TF32=0 (or off/false) turns both off for strict
/// fp32. The flags are libtorch globals: they apply to every CUDA device of the process, and are (re)applied each time
/// a CUDA device is resolved, i.e. once per job.
/// </summary>
public static class GpuMath
{
    /// <summary>null = from RETOK_TF32 (default on); set by the CLI (e.g. `retok doctor --tf32 off`) to override.</summary>
    public static bool? Tf32Override { get; set; }

    public static bool Tf32 => Tf32Override ?? ParseTf32(Environment.GetEnvironmentVariable("RETOK_TF32"));

    /// <summary>RETOK_TF32: unset/empty/1/on/true = on, 0/off/false = off; anything else is an error naming the variable.</summary>
    public static bool ParseTf32(string? value) => (value ?? "").Trim().ToLowerInvariant() switch
    {
        "" or "1" or "on" or "true" or "yes" => true,
        "0" or "off" or "false" or "no" => false,
        _ => throw new ArgumentException($"RETOK_TF32='{value}': expected 1/on/true or 0/off/false"),
    };

    /// <summary>Set both TF32 flags to <see cref="Tf32"/> (they exist in every libtorch build, CPU included, and only
    /// affect CUDA kernels).</summary>
    public static void Apply() => Set(Tf32);

    public static void Set(bool tf32)
    {
        torch.backends.cuda.matmul.allow_tf32 = tf32;
        torch.backends.cudnn.allow_tf32 = tf32;
    }

    /// <summary>(matmul, cudnn) TF32 flags as libtorch has them now.</summary>
    public static (bool Matmul, bool Cudnn) Current => (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32);
}

using TorchSharp;

namespace ReTok.Models;

/// <summary>The one place that turns a device request into a torch device.</summary>
public static class Devices
{
    /// <summary>"cpu", "cuda", "cuda:N", "auto" or a bare GPU index; "auto" = CUDA 0 when available, CPU otherwise.</summary>
    public static torch.Device Resolve(string? request = "auto")
    {
        request = string.IsNullOrWhiteSpace(request) ? "auto" : request.Trim().ToLowerInvariant();
        if (request == "auto") return torch.cuda.is_available() ? torch.CUDA : torch.CPU;
        if (request == "cpu") return torch.CPU;
        if (int.TryParse(request, out var idx)) request = $"cuda:{idx}";
        if (request.StartsWith("cuda"))
        {
            if (!torch.cuda.is_available())
                throw new InvalidOperationException($"device '{request}' requested but CUDA is not available in this build/machine (TorchBackend=cpu?)");
            var dev = new torch.Device(request);
            if (dev.index >= torch.cuda.device_count())
                throw new InvalidOperationException($"device '{request}' requested but only {torch.cuda.device_count()} CUDA device(s) are visible");
            return dev;
        }
        throw new ArgumentException($"unknown device '{request}': expected auto, cpu, cuda, cuda:N or N");
    }

    /// <summary>How many CUDA devices this process sees (CUDA_VISIBLE_DEVICES / the device plugin decide); 0 without CUDA.</summary>
    public static int CudaDeviceCount() => torch.cuda.is_available() ? torch.cuda.device_count() : 0;

    /// <summary>Human description for run records: "cpu (2 threads)" or "cuda:0".</summary>
    public static string Describe(torch.Device d) => d.type == DeviceType.CPU ? $"cpu ({torch.get_num_threads()} threads)" : $"cuda:{d.index}";
}

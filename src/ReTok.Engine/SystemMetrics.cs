using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace ReTok.Engine;

/// <summary>One GPU's readings; null where the source cannot tell.</summary>
public sealed record GpuReading(int Index, double? UtilPct, double? MemUsedMiB, double? MemTotalMiB, double? TempC, double? PowerW);

/// <summary>Where GPU readings come from: NVML (the driver's library), nvidia-smi, or a fake in tests.</summary>
public interface IGpuMetricsSource
{
    string Name { get; }
    IReadOnlyList<GpuReading> Read(IReadOnlyList<int> indices);
}

/// <summary>Fixed readings per GPU index, for tests on machines without a GPU.</summary>
public sealed class FakeGpuSource(IReadOnlyDictionary<int, GpuReading> readings) : IGpuMetricsSource
{
    public string Name => "fake";
    public IReadOnlyList<GpuReading> Read(IReadOnlyList<int> indices) => indices.Where(readings.ContainsKey).Select(i => readings[i]).ToList();
}

/// <summary>
/// NVML through the driver's libnvidia-ml.so.1 (what nvidia-smi itself reads): no process per sample. NVML numbers GPUs
/// as the driver does, which is what `cuda:N` means on a worker started with --gpus N and no CUDA_VISIBLE_DEVICES.
/// </summary>
public sealed class NvmlSource : IGpuMetricsSource
{
    const string Lib = "libnvidia-ml.so.1";
    public string Name => "nvml";

    [StructLayout(LayoutKind.Sequential)] struct Utilization { public uint Gpu, Memory; }
    [StructLayout(LayoutKind.Sequential)] struct Memory { public ulong Total, Free, Used; }

    [DllImport(Lib, EntryPoint = "nvmlInit_v2")] static extern int Init();
    [DllImport(Lib, EntryPoint = "nvmlDeviceGetHandleByIndex_v2")] static extern int Handle(uint index, out IntPtr device);
    [DllImport(Lib, EntryPoint = "nvmlDeviceGetUtilizationRates")] static extern int Util(IntPtr device, out Utilization u);
    [DllImport(Lib, EntryPoint = "nvmlDeviceGetMemoryInfo")] static extern int Mem(IntPtr device, out Memory m);
    [DllImport(Lib, EntryPoint = "nvmlDeviceGetTemperature")] static extern int Temp(IntPtr device, int sensor, out uint celsius);
    [DllImport(Lib, EntryPoint = "nvmlDeviceGetPowerUsage")] static extern int Power(IntPtr device, out uint milliwatts);

    NvmlSource() { }

    /// <summary>Null when the driver library is absent or does not initialise (a CPU machine).</summary>
    public static NvmlSource? TryCreate()
    {
        if (!NativeLibrary.TryLoad(Lib, out _)) return null;
        try { return Init() == 0 ? new NvmlSource() : null; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

    public IReadOnlyList<GpuReading> Read(IReadOnlyList<int> indices)
    {
        var list = new List<GpuReading>();
        foreach (var i in indices)
        {
            if (Handle((uint)i, out var d) != 0) continue;
            double? util = Util(d, out var u) == 0 ? u.Gpu : null;
            var (used, total) = Mem(d, out var m) == 0 ? ((double?)m.Used / 1048576, (double?)m.Total / 1048576) : (null, null);
            double? temp = Temp(d, 0, out var t) == 0 ? t : null;   // sensor 0 = NVML_TEMPERATURE_GPU
            double? power = Power(d, out var mw) == 0 ? mw / 1000.0 : null;
            list.Add(new GpuReading(i, util, used, total, temp, power));
        }
        return list;
    }
}

/// <summary>`nvidia-smi --query-gpu` where NVML cannot be loaded directly but the tool exists.</summary>
public sealed class NvidiaSmiSource : IGpuMetricsSource
{
    public string Name => "nvidia-smi";

    public static NvidiaSmiSource? TryCreate() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, "nvidia-smi"))) ? new NvidiaSmiSource() : null;

    public IReadOnlyList<GpuReading> Read(IReadOnlyList<int> indices)
    {
        var psi = new ProcessStartInfo("nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw --format=csv,noheader,nounits")
            { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var text = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(5000)) { p.Kill(); return []; }
        return Parse(text).Where(r => indices.Contains(r.Index)).ToList();
    }

    /// <summary>Lines "0, 87, 40536, 81559, 61, 312.45"; "[N/A]" fields read as null.</summary>
    public static IEnumerable<GpuReading> Parse(string csv)
    {
        static double? D(string s) => double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : null;
        foreach (var line in csv.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var f = line.Split(',');
            if (f.Length < 6 || !int.TryParse(f[0].Trim(), out var i)) continue;
            yield return new GpuReading(i, D(f[1]), D(f[2]), D(f[3]), D(f[4]), D(f[5]));
        }
    }
}

/// <summary>
/// System metrics of one execution: the GPUs it holds (never the worker's other GPUs, which other runs use), this
/// process's CPU and resident memory, and the host's memory. Keys are run metrics under <c>sys/</c>.
/// </summary>
public sealed class SystemSampler(IGpuMetricsSource? gpus)
{
    TimeSpan lastCpu = Process.GetCurrentProcess().TotalProcessorTime;
    DateTime lastAt = DateTime.UtcNow;

    /// <summary>The auto-detected source: NVML, else nvidia-smi, else none.</summary>
    public static IGpuMetricsSource? Detect() => (IGpuMetricsSource?)NvmlSource.TryCreate() ?? NvidiaSmiSource.TryCreate();

    public static IReadOnlyList<int> GpuIndices(IEnumerable<string> devices) =>
        devices.Select(d => d.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(d[5..], out var i) ? i : -1).Where(i => i >= 0).Distinct().ToList();

    public List<(string Key, double Value)> Sample(IReadOnlyList<string> devices)
    {
        var m = new List<(string, double)>();
        var indices = GpuIndices(devices);
        if (gpus is not null && indices.Count > 0)
        {
            IReadOnlyList<GpuReading> readings;
            try { readings = gpus.Read(indices); }
            catch (Exception) { readings = []; }   // a driver hiccup costs one sample, never the run
            foreach (var r in readings)
            {
                void Add(string name, double? v) { if (v is double x && double.IsFinite(x)) m.Add(($"sys/gpu{r.Index}/{name}", x)); }
                Add("util_pct", r.UtilPct); Add("mem_used_mib", r.MemUsedMiB); Add("mem_total_mib", r.MemTotalMiB); Add("temp_c", r.TempC); Add("power_w", r.PowerW);
            }
        }
        var proc = Process.GetCurrentProcess();
        var now = DateTime.UtcNow;
        var cpu = proc.TotalProcessorTime;
        double wall = (now - lastAt).TotalSeconds;
        if (wall > 0) m.Add(("sys/cpu_pct", 100 * (cpu - lastCpu).TotalSeconds / wall));   // 100 = one core busy
        (lastCpu, lastAt) = (cpu, now);
        m.Add(("sys/rss_mib", proc.WorkingSet64 / 1048576.0));
        if (HostMemoryMiB() is { } host) { m.Add(("sys/host_mem_used_mib", host.Total - host.Available)); m.Add(("sys/host_mem_total_mib", host.Total)); }
        return m;
    }

    static (double Total, double Available)? HostMemoryMiB()
    {
        try
        {
            double? total = null, avail = null;
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 2 || !double.TryParse(f[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var kb)) continue;
                if (f[0] == "MemTotal:") total = kb / 1024;
                else if (f[0] == "MemAvailable:") avail = kb / 1024;
            }
            return total is double t && avail is double a ? (t, a) : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }
}

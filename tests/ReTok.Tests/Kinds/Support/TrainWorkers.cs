using System.Diagnostics;
using System.Text;
using ReTok.Engine;
using ReTok.Models.Dinov2;
using ReTok.Models.IO;
using ReTok.Tests.Tracking;
using ReTok.Tracking;
using static TorchSharp.torch;

namespace ReTok.Tests.Kinds.Support;

/// <summary>A real `retok worker` process (dotnet retok.dll from the test output folder) serving the given queues.</summary>
public sealed class TrainWorker : IDisposable
{
    readonly Process _p;
    readonly StringBuilder _out = new();
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TrainWorker(string name, string queues, IDictionary<string, string> env)
    {
        Name = name;
        var psi = new ProcessStartInfo("dotnet", $"\"{Path.Combine(AppContext.BaseDirectory, "retok.dll")}\" worker --name {name} --queues {queues} --cpu-workers 1")
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var (k, v) in env) psi.Environment[k] = v;
        _p = new Process { StartInfo = psi, EnableRaisingEvents = true };
        _p.OutputDataReceived += (_, e) => Line(e.Data);
        _p.ErrorDataReceived += (_, e) => Line(e.Data);
        _p.Exited += (_, _) => _ready.TrySetException(new InvalidOperationException($"worker {name} exited early:\n{Output}"));
        _p.Start();
        _p.BeginOutputReadLine();
        _p.BeginErrorReadLine();
    }

    void Line(string? l)
    {
        if (l is null || l.Contains("NNPACK")) return;
        lock (_out) _out.AppendLine(l);
        if (l.Contains(" ready")) _ready.TrySetResult();
    }

    public string Name { get; }
    public string Output { get { lock (_out) return _out.ToString(); } }
    public Task WaitReadyAsync() => _ready.Task.WaitAsync(TimeSpan.FromSeconds(180));

    /// <summary>SIGKILL: no chance to checkpoint or release the lease.</summary>
    public void Kill() { _p.Kill(); _p.WaitForExit(10_000); }

    public void Dispose()
    {
        try { if (!_p.HasExited) { _p.Kill(); _p.WaitForExit(10_000); } } catch (InvalidOperationException) { }
        _p.Dispose();
    }
}

/// <summary>Database, artifact folder and worker settings for the train-tokenizer job tests (short engine intervals).</summary>
public sealed class TrainJobEnvironment : IAsyncLifetime
{
    readonly TestDatabase _db = new();
    readonly List<TrainWorker> _workers = new();
    public string Root { get; } = Directory.CreateTempSubdirectory("retok-jobs-train").FullName;
    public JobClient Client { get; private set; } = null!;
    public Tracker Tracker => Client.Tracker;

    public async Task InitializeAsync()
    {
        await _db.InitializeAsync();
        Client = new JobClient(new EngineOptions
        {
            Db = _db.ConnectionString, Artifacts = Path.Combine(Root, "artifacts"), Scratch = Path.Combine(Root, "scratch-client"),
            QueuePollInterval = TimeSpan.FromMilliseconds(200),
        });
        _ = Client.Storage; // install the Hangfire schema once, before workers race for it
        TeacherWeights = Path.Combine(Root, "tiny_teacher.safetensors");
        WriteTinyTeacher(TeacherWeights);
    }

    /// <summary>A 1-layer 32-dim DINOv2 (16x16 grid) with sin-formula weights, as the semantic teacher of the tiny tokenizer.</summary>
    public string TeacherWeights { get; private set; } = "";

    static void WriteTinyTeacher(string path)
    {
        using var m = new DinoVisionTransformer(new Dinov2Config(ImgSize: 224, EmbedDim: 32, Depth: 1, NumHeads: 2));
        var sd = new Dictionary<string, Tensor>();
        int j = 0;
        foreach (var (k, v) in m.state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var s = sin(arange(v.numel(), dtype: float64) * 0.37 + 0.5 * j++).reshape(v.shape);
            sd[k] = (k.Contains("norm") && k.EndsWith(".weight") ? 1 + 0.1 * s : k.EndsWith(".bias") ? 0.02 * s
                : k.EndsWith(".gamma") ? 0.1 + 0.05 * s : s * (v.dim() > 1 ? 1.0 / Math.Sqrt(v.numel() / v.shape[0]) : 0.05)).to(float32);
        }
        StateDictFile.WriteSafetensors(path, sd);
    }

    public Dictionary<string, string> Env(string scratch) => new()
    {
        ["RETOK_DB"] = _db.ConnectionString,
        ["RETOK_ARTIFACTS"] = Path.Combine(Root, "artifacts"),
        ["RETOK_SCRATCH"] = Path.Combine(Root, "scratch-" + scratch),
        ["RETOK_HOME"] = Root,                       // weights folder Root/weights: empty
        ["RETOK_ENGINE_POLL_MS"] = "200",
        ["RETOK_ENGINE_INVISIBILITY_S"] = "5",
        ["RETOK_ENGINE_LEASE_TTL_S"] = "3",
        ["RETOK_ENGINE_HEARTBEAT_MS"] = "300",
        ["RETOK_ENGINE_RETRY_BASE_MS"] = "300",
        ["RETOK_ENGINE_SCHEDULE_POLL_MS"] = "250",
        ["RETOK_ENGINE_RECONCILE_MS"] = "1000",
        ["RETOK_ENGINE_RECONCILE_QUEUED_MS"] = "15000",
        ["RETOK_ENGINE_SHUTDOWN_S"] = "20",
        ["RETOK_CODE_VERSION"] = "test",
    };

    public TrainWorker StartWorker(string name, string queues)
    {
        var w = new TrainWorker(name, queues, Env(name));
        lock (_workers) _workers.Add(w);
        return w;
    }

    public string WorkerLogs() { lock (_workers) return string.Join("\n", _workers.Select(w => $"--- {w.Name} ---\n{w.Output}")); }

    public async Task<Run> WaitRunAsync(long id, Func<Run, bool> until, string what, int seconds = 240)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        Run? r = null;
        while (DateTime.UtcNow < deadline)
        {
            r = await Tracker.Runs.GetAsync(id);
            if (r is not null && until(r)) return r;
            await Task.Delay(200);
        }
        throw new TimeoutException($"run {id}: {what} not reached in {seconds} s (now {r?.Status}, {r?.ProgressMessage}, {r?.FailureReason})\n{WorkerLogs()}");
    }

    public Task<Run> WaitTerminalAsync(long id, int seconds = 240) => WaitRunAsync(id, r => r.Status.IsTerminal(), "a terminal status", seconds);

    public async Task DisposeAsync()
    {
        lock (_workers) foreach (var w in _workers) w.Dispose();
        await Client.DisposeAsync();
        await _db.DisposeAsync();
        try { Directory.Delete(Root, true); } catch (IOException) { }
    }
}

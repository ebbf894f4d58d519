using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using ReTok.Engine;
using ReTok.Tests.Infra;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Engine;

/// <summary>A real `retok worker` process (dotnet retok.dll from the test output folder).</summary>
public sealed class WorkerProcess : IDisposable
{
    readonly Process _p;
    readonly StringBuilder _out = new();
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public WorkerProcess(string name, string args, IDictionary<string, string> env)
    {
        Name = name;
        var psi = new ProcessStartInfo("dotnet", $"\"{Path.Combine(AppContext.BaseDirectory, "retok.dll")}\" worker --name {name} {args}")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
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
        if (l is null || l.Contains("NNPACK")) return; // libtorch's CPU warning, once per process
        lock (_out) _out.AppendLine(l);
        if (l.Contains(" ready")) _ready.TrySetResult();
    }

    public string Name { get; }
    public int Pid => _p.Id;
    public string Output { get { lock (_out) return _out.ToString(); } }
    public bool HasExited => _p.HasExited;
    public int ExitCode => _p.ExitCode;

    /// <summary>Until the worker prints " ready" (it loads TorchSharp and the job kinds first: slow on a busy machine).</summary>
    public Task WaitReadyAsync() => _ready.Task.WaitAsync(TimeSpan.FromSeconds(180));

    /// <summary>SIGKILL: no chance to checkpoint or release anything.</summary>
    public void Kill() { _p.Kill(); _p.WaitForExit(10_000); }

    [DllImport("libc", SetLastError = true)] static extern int kill(int pid, int sig);

    /// <summary>SIGTERM: the graceful path.</summary>
    public void Terminate() => kill(_p.Id, 15);

    public Task<bool> WaitExitAsync(TimeSpan t) => _p.WaitForExitAsync(new CancellationTokenSource(t).Token).ContinueWith(x => x.IsCompletedSuccessfully);

    public void Dispose()
    {
        try { if (!_p.HasExited) { _p.Kill(); _p.WaitForExit(10_000); } } catch (InvalidOperationException) { }
        _p.Dispose();
    }
}

/// <summary>
/// One database and artifact store for the worker-process tests; workers get short engine intervals. Subclasses add
/// inputs of their own (<c>Kinds/Support/TrainJobEnvironment</c>: the tiny DINOv2 teacher) and a longer default wait.
/// </summary>
public class EngineEnvironment : IAsyncLifetime
{
    readonly TestDatabase _db = new();
    readonly List<WorkerProcess> _workers = new();
    readonly int _waitSeconds;

    public EngineEnvironment() : this("retok-engine", waitSeconds: 90) { }

    /// <param name="rootName">prefix of the temporary root folder</param>
    /// <param name="waitSeconds">default of <see cref="WaitRunAsync"/> and <see cref="WaitTerminalAsync"/></param>
    protected EngineEnvironment(string rootName, int waitSeconds)
    {
        Root = Directory.CreateTempSubdirectory(rootName).FullName;
        _waitSeconds = waitSeconds;
    }

    public string Root { get; }
    public JobClient Client { get; private set; } = null!;
    public Tracker Tracker => Client.Tracker;

    /// <summary>Test intervals: dead worker noticed in ~5 s (Hangfire invisibility), lease 3 s, heartbeat 300 ms.</summary>
    public EngineOptions Options => new()
    {
        Db = _db.ConnectionString, Artifacts = Path.Combine(Root, "artifacts"), Scratch = Path.Combine(Root, "scratch-client"),
        QueuePollInterval = TimeSpan.FromMilliseconds(150), InvisibilityTimeout = TimeSpan.FromSeconds(5),
        LeaseTtl = TimeSpan.FromSeconds(3), Heartbeat = TimeSpan.FromMilliseconds(300), RetryBaseDelay = TimeSpan.FromMilliseconds(300),
        SchedulePollInterval = TimeSpan.FromMilliseconds(250), ReconcileInterval = TimeSpan.FromSeconds(1), ReconcileQueuedAfter = TimeSpan.FromSeconds(15),
    };

    public virtual async Task InitializeAsync()
    {
        await _db.InitializeAsync();
        Client = new JobClient(Options);
        _ = Client.Storage; // install the Hangfire schema once, before workers race for it
    }

    public Dictionary<string, string> Env(string scratchName) => new()
    {
        ["RETOK_DB"] = _db.ConnectionString,
        ["RETOK_ARTIFACTS"] = Path.Combine(Root, "artifacts"),
        ["RETOK_SCRATCH"] = Path.Combine(Root, "scratch-" + scratchName),
        ["RETOK_HOME"] = Root,
        ["RETOK_ENGINE_POLL_MS"] = "150",
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

    public WorkerProcess StartWorker(string name, string queues, int cpuWorkers = 1)
    {
        var w = new WorkerProcess(name, $"--queues {queues} --cpu-workers {cpuWorkers}", Env(name));
        lock (_workers) _workers.Add(w);
        return w;
    }

    public WorkerProcess Worker(string name) { lock (_workers) return _workers.First(w => w.Name == name); }

    Task? _shared;

    /// <summary>Two long-lived workers on queue "shared" (3 + 2 slots) for the scenarios that do not kill their worker.</summary>
    public Task SharedWorkersAsync()
    {
        lock (_workers)
            return _shared ??= Task.WhenAll(StartWorker("shared-1", "shared", 3).WaitReadyAsync(), StartWorker("shared-2", "shared", 2).WaitReadyAsync());
    }

    public string WorkerLogs() { lock (_workers) return string.Join("\n", _workers.Select(w => $"--- {w.Name} ---\n{w.Output}")); }

    public async Task<Run> WaitRunAsync(long id, Func<Run, bool> until, string what, int? seconds = null)
    {
        var limit = seconds ?? _waitSeconds;
        var deadline = DateTime.UtcNow.AddSeconds(limit);
        Run? r = null;
        while (DateTime.UtcNow < deadline)
        {
            r = await Tracker.Runs.GetAsync(id);
            if (r is not null && until(r)) return r;
            await Task.Delay(100);
        }
        throw new TimeoutException($"run {id}: {what} not reached in {limit} s (now {r?.Status}, {r?.ProgressMessage}, {r?.FailureReason})\n{WorkerLogs()}");
    }

    public Task<Run> WaitTerminalAsync(long id, int? seconds = null) => WaitRunAsync(id, r => r.Status.IsTerminal(), "a terminal status", seconds);

    public async Task<string> ResultJsonAsync(long runId)
    {
        var a = await Tracker.GetArtifactAsync(runId, "result.json") ?? throw new Xunit.Sdk.XunitException($"run {runId} has no result.json\n{WorkerLogs()}");
        await using var s = await Tracker.OpenArtifactAsync(a);
        return await new StreamReader(s).ReadToEndAsync();
    }

    /// <summary>Runs the CLI once (`dotnet retok.dll ARGS`) against this environment; returns exit code and output.</summary>
    public async Task<(int Code, string Out)> CliAsync(params string[] args)
    {
        using var p = await Proc.RunAsync("dotnet", [Path.Combine(AppContext.BaseDirectory, "retok.dll"), .. args],
            Env("cli").ToDictionary(kv => kv.Key, kv => (string?)kv.Value), TimeSpan.FromSeconds(120), Directory.GetCurrentDirectory());
        return (p.ExitCode, p.Stdout + p.Stderr);
    }

    public async Task DisposeAsync()
    {
        lock (_workers) foreach (var w in _workers) w.Dispose();
        await Client.DisposeAsync();
        await _db.DisposeAsync();
        try { Directory.Delete(Root, true); } catch (IOException) { }
    }
}

using System.Diagnostics;
using System.Text;

namespace ReTok.Tests.Infra;

/// <summary>Runs a command of the repository (scripts, `dotnet retok.dll`) and collects its output.</summary>
public sealed class Proc : IDisposable
{
    readonly Process _p;
    readonly StringBuilder _out = new(), _err = new();
    readonly Stopwatch _clock = Stopwatch.StartNew();

    public static string Root => RepoPaths.Root;

    /// <param name="env">variables to set; a null value removes the variable (e.g. the port overrides test.sh sets)</param>
    /// <param name="clearEnv">start from an empty environment (a container's), not this process's</param>
    public Proc(string file, IEnumerable<string> args, IDictionary<string, string?>? env = null, string? cwd = null, bool clearEnv = false)
    {
        var psi = new ProcessStartInfo(file) { WorkingDirectory = cwd ?? Root, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (clearEnv) psi.Environment.Clear();
        foreach (var (k, v) in env ?? new Dictionary<string, string?>())
            if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        _p = new Process { StartInfo = psi };
        _p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_out) _out.AppendLine(e.Data); };
        _p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_err) _err.AppendLine(e.Data); };
        _p.Start();
        _p.BeginOutputReadLine();
        _p.BeginErrorReadLine();
    }

    public string Stdout { get { lock (_out) return _out.ToString(); } }
    public string Stderr { get { lock (_err) return _err.ToString(); } }
    public string Output => $"--- stdout\n{Stdout}--- stderr\n{Stderr}";
    public int Pid => _p.Id;
    public bool HasExited => _p.HasExited;
    public int ExitCode => _p.ExitCode;
    public TimeSpan Elapsed { get; private set; }

    /// <summary>Waits for exit (killing the process tree after <paramref name="timeout"/>) and returns the exit code.</summary>
    public async Task<int> WaitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try { await _p.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException) { _p.Kill(true); throw new TimeoutException($"{_p.StartInfo.FileName} {string.Join(' ', _p.StartInfo.ArgumentList)} ran over {timeout}\n{Output}"); }
        _p.WaitForExit();   // drains the output events
        Elapsed = _clock.Elapsed;
        return _p.ExitCode;
    }

    /// <summary>Waits until stdout or stderr contains <paramref name="text"/>; fails if the process exits first.</summary>
    public async Task WaitForAsync(string text, TimeSpan timeout)
    {
        var end = DateTime.UtcNow + timeout;
        while (!(Stdout + Stderr).Contains(text))
        {
            if (_p.HasExited) { _p.WaitForExit(); if ((Stdout + Stderr).Contains(text)) return; throw new Xunit.Sdk.XunitException($"exited ({_p.ExitCode}) before printing '{text}'\n{Output}"); }
            if (DateTime.UtcNow > end) throw new TimeoutException($"no '{text}' within {timeout}\n{Output}");
            await Task.Delay(100);
        }
    }

    public static async Task<Proc> RunAsync(string file, IEnumerable<string> args, IDictionary<string, string?>? env = null, TimeSpan? timeout = null, string? cwd = null)
    {
        var p = new Proc(file, args, env, cwd);
        await p.WaitAsync(timeout ?? TimeSpan.FromMinutes(3));
        return p;
    }

    /// <summary>Blocking variant for constructors and other synchronous set-up.</summary>
    public static Proc Run(string file, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var p = new Proc(file, args);
        if (!p._p.WaitForExit(timeout ?? TimeSpan.FromMinutes(1))) { p._p.Kill(true); throw new TimeoutException($"{file} ran over its time\n{p.Output}"); }
        p._p.WaitForExit();
        return p;
    }

    /// <summary>SIGTERM (the container runtime's stop).</summary>
    public void Terminate() { if (!_p.HasExited) kill(_p.Id, 15); }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)] static extern int kill(int pid, int sig);

    public void Dispose()
    {
        try { if (!_p.HasExited) { _p.Kill(true); _p.WaitForExit(10_000); } } catch (InvalidOperationException) { }
        _p.Dispose();
    }
}

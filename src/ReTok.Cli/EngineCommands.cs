using System.CommandLine;
using System.Runtime.InteropServices;
using ReTok.Engine;

namespace ReTok.Cli;

/// <summary>`retok submit SPEC [--set k=v]...`, `retok worker --queues gpu,cpu --gpus 0,1` and `retok kinds`.</summary>
public static class EngineCommands
{
    public static IEnumerable<Command> Build()
    {
        yield return Submit();
        yield return Worker();
        yield return Kinds();
    }

    static Command Submit()
    {
        var spec = new Argument<string>("spec") { Description = "YAML job or pipeline spec (jobs/*.yaml)" };
        var set = new Option<string[]>("--set") { Description = "override a parameter: KEY.PATH=VALUE (pipelines: STEP.KEY=VALUE); repeatable", AllowMultipleArgumentsPerToken = false };
        var dryRun = new Option<bool>("--dry-run") { Description = "validate and print the resolved parameters without submitting" };
        var cmd = new Command("submit", "validate a spec and submit it; prints the run (or pipeline) ids") { spec, set, dryRun };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            var plan = JobSpecs.Load(pr.GetValue(spec)!, pr.GetValue(set) ?? [], JobKindRegistry.Default);
            if (pr.GetValue(dryRun))
            {
                foreach (var s in plan.Steps)
                    Console.WriteLine($"{s.Step}: {s.Kind.Name} on {s.Queue}{(s.Needs.Count > 0 ? $" needs {string.Join(",", s.Needs)}" : "")} params {s.ParamsJson}");
                return 0;
            }
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var r = await c.SubmitAsync(plan, ct);
            if (r.PipelineId is { } p) Console.WriteLine($"pipeline {p}");
            foreach (var run in r.Runs)
                Console.WriteLine($"run {run.RunId} {run.Kind}{(plan.IsPipeline ? $" step {run.Step}" : "")} {run.Status.ToString().ToLowerInvariant()} on {run.Queue}");
            return 0;
        }));
        return cmd;
    }

    static Command Worker()
    {
        var queues = new Option<string>("--queues") { Description = "queues to serve, comma-separated", DefaultValueFactory = _ => "gpu,cpu" };
        var gpus = new Option<string?>("--gpus") { Description = "GPU indices, e.g. 0,1, or all (every visible GPU): one gpu-queue worker per GPU, each job leases one device; none = gpu queue on CPU" };
        var cpuWorkers = new Option<int>("--cpu-workers") { Description = "concurrent jobs on the non-GPU queues", DefaultValueFactory = _ => 1 };
        var name = new Option<string?>("--name") { Description = "worker id (default host-pid-random)" };
        var scratch = new Option<string?>("--scratch") { Description = "scratch folder (default $RETOK_SCRATCH or .state/scratch)" };
        var pollMs = new Option<int?>("--poll-ms") { Description = "queue poll interval in ms (env RETOK_ENGINE_POLL_MS)" };
        var invis = new Option<double?>("--invisibility-s") { Description = "Hangfire invisibility timeout = dead-worker detection, seconds (env RETOK_ENGINE_INVISIBILITY_S)" };
        var ttl = new Option<double?>("--lease-ttl-s") { Description = "run lease TTL in seconds (env RETOK_ENGINE_LEASE_TTL_S)" };
        var hb = new Option<int?>("--heartbeat-ms") { Description = "executor heartbeat in ms (env RETOK_ENGINE_HEARTBEAT_MS)" };
        var cmd = new Command("worker", "run jobs from the queues until SIGTERM/Ctrl-C (graceful: running jobs checkpoint and are re-queued)")
            { queues, gpus, cpuWorkers, name, scratch, pollMs, invis, ttl, hb };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            var o = CliSupport.Engine(pr);
            o = o with
            {
                Scratch = pr.GetValue(scratch) ?? o.Scratch,
                QueuePollInterval = pr.GetValue(pollMs) is { } p ? TimeSpan.FromMilliseconds(p) : o.QueuePollInterval,
                InvisibilityTimeout = pr.GetValue(invis) is { } i ? TimeSpan.FromSeconds(i) : o.InvisibilityTimeout,
                LeaseTtl = pr.GetValue(ttl) is { } l ? TimeSpan.FromSeconds(l) : o.LeaseTtl,
                Heartbeat = pr.GetValue(hb) is { } h ? TimeSpan.FromMilliseconds(h) : o.Heartbeat,
            };
            var gpuList = ParseGpus(pr.GetValue(gpus));
            var w = new WorkerOptions
            {
                Queues = pr.GetValue(queues)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                Gpus = gpuList, CpuWorkers = pr.GetValue(cpuWorkers), Name = pr.GetValue(name),
            };
            // the server first, for one clear line (the database itself is created by the host's auto-migration)
            await Tracking.TrackingDb.CheckReachableAsync(new Npgsql.NpgsqlConnectionStringBuilder(o.Db) { Database = "postgres" }.ConnectionString, ct);
            await using var host = new WorkerHost(o, w);
            using var stop = new CancellationTokenSource();
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
            await host.StartAsync(ct);
            Console.WriteLine($"worker {host.WorkerId} ready");
            try { await Task.Delay(Timeout.Infinite, stop.Token); } catch (OperationCanceledException) { }
            await host.StopAsync();
            return 0;
        }));
        return cmd;
    }

    /// <summary>"0,1" -> [0, 1]; "all" -> every CUDA device this process sees (the images pass it: the device plugin decides).</summary>
    internal static List<int> ParseGpus(string? value)
    {
        if (string.Equals(value?.Trim(), "all", StringComparison.OrdinalIgnoreCase))
        {
            var n = ReTok.Models.Devices.CudaDeviceCount();
            if (n == 0)
                throw new CliError("--gpus all: no CUDA device is visible to this process (no NVIDIA GPU or driver, " +
                    "CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES empty, or a build with TorchSharp's CPU backend: TorchBackend=cpu); " +
                    "omit --gpus to serve the gpu queue on CPU", 2);
            return Enumerable.Range(0, n).ToList();
        }
        return (value ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(g => int.TryParse(g, out var n) && n >= 0 ? n : throw new CliError($"--gpus: '{g}' is not a device index or 'all'", 2)).ToList();
    }

    static Command Kinds()
    {
        var cmd = new Command("kinds", "list the registered job kinds and their parameters");
        cmd.SetAction(_ =>
        {
            foreach (var k in JobKindRegistry.Default.All)
            {
                Console.WriteLine($"{k.Name}  (queue {k.Queue}, max attempts {k.MaxAttempts}){(k.Description is null ? "" : "  " + k.Description)}");
                foreach (var p in k.ParamsType.GetProperties())
                    Console.WriteLine($"    {ParamBinder.KeyOf(p)}: {ParamBinder.Describe(p.PropertyType)}");
            }
            return 0;
        });
        return cmd;
    }
}

using System.CommandLine;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using ReTok.Dashboard;
using ReTok.Dashboard.Auth;
using ReTok.Engine;
using ReTok.Evaluation.Weights;
using ReTok.Jobs.Quickstart;
using ReTok.Tracking;
using Spectre.Console;

namespace ReTok.Cli;

/// <summary>
/// `retok quickstart`: the whole pipeline on the embedded default (local PostgreSQL + filesystem artifacts) with an
/// in-process worker and dashboard, on a synthetic dataset, in minutes on a 2-core CPU.
/// </summary>
public static class QuickstartCommands
{
    public static Command Build()
    {
        var spec = new Option<string>("--spec") { Description = "pipeline spec", DefaultValueFactory = _ => "jobs/quickstart.yaml" };
        var set = new Option<string[]>("--set") { Description = "override STEP.KEY=VALUE (repeatable)" };
        var classes = new Option<int>("--classes") { Description = "synthetic classes", DefaultValueFactory = _ => 4 };
        var perClass = new Option<int>("--per-class") { Description = "synthetic training images per class", DefaultValueFactory = _ => 32 };
        var valPerClass = new Option<int>("--val-per-class") { Description = "held-out synthetic images per class (reconstruction eval)", DefaultValueFactory = _ => 4 };
        var urls = new Option<string>("--urls") { Description = "dashboard URL (default: a free port when 5080 is taken)", DefaultValueFactory = _ => "http://127.0.0.1:5080" };
        var noDashboard = new Option<bool>("--no-dashboard") { Description = "do not start the dashboard" };
        var exit = new Option<bool>("--exit") { Description = "exit when the pipeline ends instead of serving the dashboard until Ctrl+C" };
        var workers = new Option<int>("--cpu-workers") { Description = "concurrent jobs in the in-process worker", DefaultValueFactory = _ => 2 };
        var cmd = new Command("quickstart", "run extract -> train tokenizer -> eval reconstruction -> codes -> train GPT -> gFID on a synthetic dataset")
            { spec, set, classes, perClass, valPerClass, urls, noDashboard, exit, workers };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, actionCt) => CliSupport.Guard(async () =>
        {
            // SIGTERM/SIGINT end the quickstart (worker stopped, dashboard disposed): System.CommandLine's own handling is
            // off (Program.cs), and the dashboard's host would otherwise take SIGTERM for itself and leave us serving.
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(actionCt);
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
            var ct = stop.Token;
            var o = CliSupport.Engine(pr);
            var settings = RetokSettings.FromEnvironment(o.Db, o.Artifacts);
            AnsiConsole.MarkupLine($"[bold]ReTok.Jobs quickstart[/]  home [blue]{Markup.Escape(settings.Home)}[/]");
            // The server must answer; the database itself is created and migrated by the client below.
            await TrackingDb.CheckReachableAsync(new Npgsql.NpgsqlConnectionStringBuilder(o.Db) { Database = "postgres" }.ConnectionString, ct);
            await using var client = new JobClient(o);
            await client.EnsureSchemaAsync(ct);
            AnsiConsole.MarkupLine($"tracking  [green]ok[/]  {Markup.Escape(Redact(o.Db))}; artifacts {Markup.Escape(o.Artifacts)}");

            // train and held-out val sets from different seeds: the eval reconstructs images the tokenizer never saw
            var data = Path.Combine(settings.Home, "quickstart", "images", "train");
            var val = Path.Combine(settings.Home, "quickstart", "images", "val");
            foreach (var (dir, per, seed) in new[] { (data, pr.GetValue(perClass), 0), (val, pr.GetValue(valPerClass), 1) })
            {
                if (!Directory.Exists(dir) || !Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Any())
                {
                    var n = SyntheticDataset.Generate(dir, pr.GetValue(classes), per, seed);
                    AnsiConsole.MarkupLine($"dataset   [green]generated[/] {n} synthetic images in {Markup.Escape(dir)}");
                }
                else AnsiConsole.MarkupLine($"dataset   [green]reused[/] {Markup.Escape(dir)}");
            }

            await using var worker = new WorkerHost(o, new WorkerOptions { Queues = ["gpu", "cpu"], CpuWorkers = pr.GetValue(workers), Name = $"quickstart-{Environment.ProcessId}" },
                log: _ => { });
            await worker.StartAsync(ct);
            AnsiConsole.MarkupLine($"worker    [green]started[/] {worker.WorkerId} (no GPU: gpu-queue jobs run on CPU)");

            DashboardServer? dashboard = null;
            string? password = null;
            if (!pr.GetValue(noDashboard))
            {
                password = await EnsureAdminAsync(o.Db, Path.Combine(settings.Home, "quickstart", "admin-password.txt"), ct);
                dashboard = await DashboardServer.StartAsync(new DashboardOptions
                {
                    Engine = o, Urls = [pr.GetValue(urls)!], JobsDir = Path.GetFullPath("jobs"),
                    // two checkouts' quickstarts side by side: the second gets a free port (printed below)
                    FreePortFallback = pr.GetResult(urls) is not { Implicit: false },
                    KeysDir = Path.Combine(settings.Home, "dashboard-keys"), LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
                }, ct: ct);
                AnsiConsole.MarkupLine($"dashboard [green]listening[/] {Markup.Escape(string.Join(", ", dashboard.Addresses))}  (user [bold]admin[/], password in {Markup.Escape(Path.Combine(settings.Home, "quickstart", "admin-password.txt"))})");
            }

            try
            {
                // the generator's class embedding covers the synthetic classes only, so samples are of classes it has seen
                var overrides = new List<string> { $"extract.source={data}", $"extract_val.source={val}" };
                // a custom --spec may stop before the generator (e.g. tokenizer-only experiments)
                if (JobSpecs.Load(pr.GetValue(spec)!, overrides, JobKindRegistry.Default).Steps.Any(s => s.Step == "gpt"))
                    overrides.Add($"gpt.num_classes={pr.GetValue(classes)}");
                overrides.AddRange(pr.GetValue(set) ?? []);
                var plan = JobSpecs.Load(pr.GetValue(spec)!, overrides, JobKindRegistry.Default);
                var submitted = await client.SubmitAsync(plan, ct);
                var pipeline = submitted.PipelineId ?? throw new CliError($"{pr.GetValue(spec)} is not a pipeline spec");
                AnsiConsole.MarkupLine($"pipeline  [green]submitted[/] {pipeline}: {string.Join(" -> ", submitted.Runs.Select(r => r.Step))}");

                var runs = await WatchAsync(client.Tracker, pipeline, ct);
                await PrintMetricsAsync(client.Tracker, runs, ct);
                var failed = runs.Where(r => r.Status != RunStatus.Succeeded).ToList();
                foreach (var f in failed.Where(r => r.Status != RunStatus.Waiting))
                    AnsiConsole.MarkupLine($"[red]{f.PipelineStep} ({f.Kind}) {f.Status}[/]: {Markup.Escape(f.FailureReason ?? "")} (`retok runs retry {f.Id}` continues the pipeline)");
                if (failed.Where(r => r.Status == RunStatus.Waiting).Select(r => r.PipelineStep).ToList() is { Count: > 0 } blocked)
                    AnsiConsole.MarkupLine($"[yellow]not run[/] (waiting on a failed step): {Markup.Escape(string.Join(", ", blocked))}");
                if (dashboard != null)
                    AnsiConsole.MarkupLine($"\nInspect runs, curves, grids and lineage at [link]{Markup.Escape(dashboard.Addresses.FirstOrDefault() ?? "")}[/] (user admin, password {Markup.Escape(password ?? "")})");
                if (dashboard != null && !pr.GetValue(exit))
                {
                    AnsiConsole.MarkupLine("Dashboard keeps serving; Ctrl+C stops it.");
                    try { await Task.Delay(Timeout.Infinite, ct); } catch (OperationCanceledException) { }
                }
                return failed.Count == 0 ? 0 : 1;
            }
            finally
            {
                if (dashboard != null) await dashboard.DisposeAsync();
                await worker.StopAsync();
            }
        }));
        return cmd;
    }

    /// <summary>Live table of the pipeline's runs (status, progress, ETA) until every run is terminal.</summary>
    static async Task<List<Run>> WatchAsync(Tracker tracker, Guid pipeline, CancellationToken ct)
    {
        List<Run> runs = new();
        if (!AnsiConsole.Profile.Capabilities.Interactive) return await WatchPlainAsync(tracker, pipeline, ct);
        var table = new Table().AddColumns("step", "kind", "run", "status", "progress", "ETA", "message");
        await AnsiConsole.Live(table).AutoClear(false).StartAsync(async live =>
        {
            while (true)
            {
                runs = await PipelineRunsAsync(tracker, pipeline, ct);
                table.Rows.Clear();
                foreach (var r in runs.Where(r => r.ParentRunId == null || r.PipelineStep != null))
                    table.AddRow(Markup.Escape(r.PipelineStep ?? "-"), r.Kind, r.Id.ToString(), Colour(r.Status),
                        $"{r.Progress * 100:F0}%", r.EtaSeconds is { } e && r.Status == RunStatus.Running ? CliSupport.Duration(TimeSpan.FromSeconds(e)) : "",
                        Markup.Escape(Trim(r.ProgressMessage ?? r.FailureReason ?? "", 60)));
                live.Refresh();
                if (Ended(runs)) break;
                await Task.Delay(1000, ct);
            }
        });
        return runs;
    }

    /// <summary>
    /// Every run terminal, or the pipeline stalled: a step failed and the rest wait on it. Steps that wait on a failed need
    /// stay Waiting (a retry of the failed run continues the pipeline), so "all terminal" alone would never come.
    /// </summary>
    internal static bool Ended(IReadOnlyList<Run> runs) =>
        runs.Count > 0 && runs.All(r => r.Status.IsTerminal() || r.Status == RunStatus.Waiting)
        && (runs.All(r => r.Status.IsTerminal()) || runs.Any(r => r.Status is RunStatus.Failed or RunStatus.Cancelled));

    static async Task<List<Run>> PipelineRunsAsync(Tracker tracker, Guid pipeline, CancellationToken ct) =>
        (await tracker.Runs.ListAsync(new RunFilter(PipelineId: pipeline, Limit: int.MaxValue), ct)).OrderBy(r => r.Id).ToList();

    /// <summary>Without a terminal (logs, CI): one line per status change or 10 % of progress, instead of redrawn tables.</summary>
    static async Task<List<Run>> WatchPlainAsync(Tracker tracker, Guid pipeline, CancellationToken ct)
    {
        var shown = new Dictionary<long, (RunStatus Status, int Decile)>();
        while (true)
        {
            var runs = await PipelineRunsAsync(tracker, pipeline, ct);
            foreach (var r in runs)
            {
                var now = (r.Status, (int)(r.Progress * 10));
                if (shown.TryGetValue(r.Id, out var was) && was == now) continue;
                shown[r.Id] = now;
                var eta = r.EtaSeconds is { } e && r.Status == RunStatus.Running ? $" ETA {CliSupport.Duration(TimeSpan.FromSeconds(e))}" : "";
                Console.WriteLine($"{DateTime.Now:HH:mm:ss} {r.PipelineStep ?? "-",-8} {r.Kind,-22} run {r.Id,-4} {r.Status.ToString().ToLowerInvariant(),-9} {r.Progress * 100,3:F0}%{eta}  {Trim(r.ProgressMessage ?? r.FailureReason ?? "", 70)}");
            }
            if (Ended(runs)) return runs;
            await Task.Delay(1000, ct);
        }
    }

    /// <summary>What each headline metric means, keyed by the part before "@" (the suffix names K or the CFG scale).</summary>
    static readonly Dictionary<string, string> Meaning = new()
    {
        ["psnr"] = "PSNR (dB) of held-out reconstructions decoded from the first K tokens; higher is better",
        ["ssim"] = "SSIM of those reconstructions (1 = identical)",
        ["lpips"] = "LPIPS perceptual distance of those reconstructions; lower is better",
        ["rfid"] = "reconstruction FID against the originals; lower is better",
        ["sfid"] = "spatial FID; lower is better",
        ["is"] = "Inception Score; higher is better",
        ["codebook_usage"] = "fraction of the codebook's entries the tokens use",
        ["gfid"] = "FID of the GPT's class-conditional samples; lower is better",
        ["precision"] = "share of samples inside the real images' manifold",
        ["recall"] = "share of real images inside the samples' manifold",
        ["loss"] = "training loss (next-token cross-entropy for the GPT, nats)",
        ["val_loss"] = "held-out next-token cross-entropy (nats); compare with the codes' unigram entropy",
        ["unigram_entropy"] = "entropy of the codes' unigram distribution (nats): the loss of a model that ignores context",
    };

    static async Task PrintMetricsAsync(Tracker tracker, List<Run> runs, CancellationToken ct)
    {
        var last = await tracker.GetLatestMetricsAsync(runs.Select(r => r.Id).ToList(), ct);
        var table = new Table().Title("metrics (last value per key)").AddColumns("step", "run", "metric", "value", "meaning");
        foreach (var r in runs.OrderBy(r => r.Id))
            foreach (var m in last.Where(m => m.RunId == r.Id && Meaning.ContainsKey(m.Key.Split('@')[0])).OrderBy(m => m.Key.Split('@')[0]).ThenBy(m => KOrder(m.Key)))
                table.AddRow(Markup.Escape(r.PipelineStep ?? r.Kind), r.Id.ToString(), Markup.Escape(m.Key), m.Value.ToString("G6"),
                    Markup.Escape(Meaning[m.Key.Split('@')[0]]));
        if (table.Rows.Count == 0) table.AddRow("-", "-", "no headline metrics recorded", "-", "-");
        AnsiConsole.Write(table);
        if (MissingWeightsNote() is { } note) AnsiConsole.MarkupLine($"[yellow]note[/] {Markup.Escape(note)}");
    }

    /// <summary>psnr@k=8 before psnr@k=64 (numeric, not string, order).</summary>
    static double KOrder(string key) => key.Split('=') is [_, var v] && double.TryParse(v, System.Globalization.CultureInfo.InvariantCulture, out var d) ? d : 0;

    /// <summary>One line for every metric the absent Inception/VGG weights held back, with the command that adds them
    /// (the jobs log a skip per run; the summary says it once).</summary>
    static string? MissingWeightsNote()
    {
        var missing = new List<(string Name, string Metrics)>();
        foreach (var (name, metrics) in new[] { ("inception", "rFID, sFID, IS, gFID, precision/recall"), ("vgg16", "LPIPS"), ("lpips-vgg", "LPIPS") })
        {
            try { WeightsRegistry.Resolve(name); }
            catch (MissingWeightsException) { missing.Add((name, metrics)); }
        }
        if (missing.Count == 0) return null;
        var sources = string.Join("; ", missing.Select(m => $"{m.Name}: {WeightsRegistry.Entry(m.Name).Source}"));
        return $"{string.Join(" and ", missing.Select(m => m.Metrics).Distinct())} not computed: weights absent from " +
               $"{WeightsRegistry.DefaultDir()}. Download them ({sources}), then `./retok weights import <file>` each and rerun.";
    }

    /// <summary>The quickstart's admin account: created once with a random password kept in the state folder.</summary>
    static async Task<string> EnsureAdminAsync(string db, string passwordFile, CancellationToken ct)
    {
        var store = new UserStore(db);
        if (File.Exists(passwordFile) && await store.AnyAdminAsync(ct)) return (await File.ReadAllTextAsync(passwordFile, ct)).Trim();
        var password = Convert.ToBase64String(RandomNumberGenerator.GetBytes(12)).Replace('/', 'x').Replace('+', 'y');
        await store.AddAsync("admin", password, UserRole.Admin, update: true, ct: ct);
        Directory.CreateDirectory(Path.GetDirectoryName(passwordFile)!);
        await File.WriteAllTextAsync(passwordFile, password + "\n", ct);
        return password;
    }

    static string Colour(RunStatus s) => s switch
    {
        RunStatus.Succeeded => "[green]succeeded[/]", RunStatus.Failed => "[red]failed[/]", RunStatus.Running => "[blue]running[/]",
        RunStatus.Cancelled => "[yellow]cancelled[/]", _ => s.ToString().ToLowerInvariant(),
    };

    static string Trim(string s, int n) => s.Length <= n ? s : s[..(n - 1)] + "…";
    static string Redact(string cs) => System.Text.RegularExpressions.Regex.Replace(cs, "(?i)password=[^;]*", "Password=***");
}

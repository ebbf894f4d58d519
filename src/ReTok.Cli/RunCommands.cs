using System.CommandLine;
using System.Text.Json;
using ReTok.Tracking;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace ReTok.Cli;

/// <summary>`retok runs list|show|watch|cancel|retry`.</summary>
public static class RunCommands
{
    static readonly Argument<long> RunId = new("run") { Description = "run id" };

    public static Command Build()
    {
        var runs = new Command("runs", "tracked runs: list, inspect, follow, cancel, retry, priority");
        runs.Subcommands.Add(List());
        runs.Subcommands.Add(Show());
        runs.Subcommands.Add(Checkpoints());
        runs.Subcommands.Add(Watch());
        runs.Subcommands.Add(Cancel());
        runs.Subcommands.Add(Retry());
        runs.Subcommands.Add(Priority());
        return runs;
    }

    static Command List()
    {
        var status = new Option<RunStatus?>("--status") { Description = "only runs with this status" };
        var kind = new Option<string?>("--kind") { Description = "only runs of this job kind" };
        var pipeline = new Option<Guid?>("--pipeline") { Description = "only runs of this pipeline" };
        var limit = new Option<int>("--limit") { Description = "at most this many (newest first)", DefaultValueFactory = _ => 30 };
        var cmd = new Command("list", "list runs, newest first") { status, kind, pipeline, limit };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var rows = await c.Tracker.Runs.ListAsync(new RunFilter(pr.GetValue(status), pr.GetValue(kind), pr.GetValue(pipeline), Limit: pr.GetValue(limit)), ct);
            var table = new Table().Border(TableBorder.Simple)
                .AddColumns("id", "kind", "name", "status", "progress", "att.", "device", "started", "took", "note");
            foreach (var r in rows)
                table.AddRow(r.Id.ToString(), Markup.Escape(r.Kind), Markup.Escape(r.Name ?? ""), StatusMarkup(r.Status) + (r.Priority == RunPriority.Normal ? "" : $" [grey]({r.Priority})[/]"),
                    r.Status == RunStatus.Running || r.Progress > 0 ? $"{r.Progress:P0}" : "", r.Attempt.ToString(),
                    Markup.Escape($"{r.Host}{(r.Device is null ? "" : " " + r.Device)}"), r.StartedAt?.ToLocalTime().ToString("MM-dd HH:mm:ss") ?? "",
                    r.StartedAt is { } s ? CliSupport.Duration((r.FinishedAt ?? DateTimeOffset.UtcNow) - s) : "",
                    Markup.Escape(Shorten(r.FailureReason ?? r.ProgressMessage ?? "", 60)));
            AnsiConsole.Write(table);
            if (rows.Count == 0) Console.WriteLine("no runs");
            return 0;
        }));
        return cmd;
    }

    static Command Checkpoints()
    {
        var cmd = new Command("checkpoints", "a run's checkpoints (latest and milestones): step, size, time, and the reference to use as an input") { RunId };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var id = pr.GetValue(RunId);
            _ = await c.Tracker.Runs.GetAsync(id, ct) ?? throw new CliError($"run {id} does not exist");
            var rows = (await c.Tracker.ListArtifactsAsync(id, ct))
                .Where(a => a.Name == ReTok.Engine.RunCheckpoints.Latest || a.Name.StartsWith(ReTok.Engine.RunCheckpoints.MilestonePrefix))
                .Select(a => (A: a, Step: System.Text.Json.Nodes.JsonNode.Parse(a.Metadata)?["step"]?.GetValue<long>()))
                .OrderBy(r => r.Step ?? -1).ThenBy(r => r.A.Name, StringComparer.Ordinal).ToList();
            var table = new Table().AddColumns("step", "name", "size", "saved", "use as");
            foreach (var (a, step) in rows)
                table.AddRow(step?.ToString() ?? "", Markup.Escape(a.Name), a.SizeBytes == 0 ? "[grey]released[/]" : $"{a.SizeBytes / 1e6:F1} MB",
                    a.CreatedAt.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss"), a.SizeBytes == 0 ? "" : Markup.Escape($"run:{id}/{a.Name}"));
            AnsiConsole.Write(table);
            if (rows.Count == 0) Console.WriteLine($"run {id} has no checkpoints");
            return 0;
        }));
        return cmd;
    }

    static Command Show()
    {
        var cmd = new Command("show", "everything about one run: parameters, status, metrics, artifacts, lineage, logs") { RunId };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var id = pr.GetValue(RunId);
            var r = await c.Tracker.Runs.GetAsync(id, ct) ?? throw new CliError($"run {id} does not exist");
            var grid = new Grid().AddColumn().AddColumn();
            void Row(string k, string? v) { if (!string.IsNullOrEmpty(v)) grid.AddRow($"[grey]{k}[/]", Markup.Escape(v)); }
            Row("run", $"{r.Id}  {r.Name}");
            Row("kind", $"{r.Kind} (queue {r.Queue})");
            grid.AddRow("[grey]status[/]", StatusMarkup(r.Status) + (r.CancelRequested && r.Status == RunStatus.Running ? " [yellow](cancel requested)[/]" : ""));
            Row("progress", r.Status is RunStatus.Running or RunStatus.Queued && r.Progress > 0 ? $"{r.Progress:P1} {r.ProgressMessage} {Eta(r.EtaSeconds)}" : r.ProgressMessage);
            Row("failure", r.FailureReason);
            Row("attempt", $"{r.Attempt} (lease generation {r.LeaseGeneration}{(r.LeaseOwner is null ? "" : $", held by {r.LeaseOwner} until {r.LeaseExpiresAt:HH:mm:ss}")})");
            Row("priority", r.Priority);
            Row("host", $"{r.Host} {r.Device}{(r.Gpus > 1 ? $" ({r.Gpus} devices leased together)" : "")}");
            Row("created", r.CreatedAt.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss"));
            Row("started", r.StartedAt?.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss"));
            Row("finished", r.FinishedAt?.ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss"));
            Row("config", $"hash {r.ConfigHash}, seed {r.Seed?.ToString() ?? "-"}, code {r.CodeVersion}");
            Row("pipeline", r.PipelineId is { } p ? $"{p} step {r.PipelineStep}{(r.DependsOn.Count > 0 ? $" (needs {string.Join(", ", r.DependsOn)})" : "")}" : null);
            Row("parent", r.ParentRunId?.ToString());
            Row("shard", r.FanInRunId is { } agg ? $"{r.ShardIndex} of aggregator run {agg}" : null);
            if (r.Nodes > 1)
            {
                var group = await c.Tracker.Runs.GetNodeGroupAsync(r.NodeRank == 0 ? r.Id : r.ParentRunId!.Value, ct);
                Row("nodes", $"rank {r.NodeRank} of {r.Nodes}: " + string.Join(", ", group.Select(g => $"rank {g.Rank} run {g.RunId} {g.Status}")));
            }
            Row("continued by", r.ContinuedByRunId?.ToString());
            Row("waiting for", r.Status == RunStatus.Waiting && r.PendingChildren > 0 ? $"{r.PendingChildren} shard(s)" : null);
            Row("hangfire job", r.HangfireJobId);
            AnsiConsole.Write(grid);
            AnsiConsole.Write(new Panel(new Text(JsonSerializer.Serialize(JsonDocument.Parse(r.Parameters), new JsonSerializerOptions { WriteIndented = true }))).Header("parameters"));
            if (r.Inputs != "{}") AnsiConsole.Write(new Panel(new Text(r.Inputs)).Header("inputs"));

            var metrics = await c.Tracker.GetLatestMetricsAsync([id], ct);
            if (metrics.Count > 0)
            {
                var mt = new Table().Border(TableBorder.Simple).Title("metrics (last point)").AddColumns("key", "step", "value");
                foreach (var m in metrics) mt.AddRow(Markup.Escape(m.Key), m.Step.ToString(), m.Value.ToString("G6"));
                AnsiConsole.Write(mt);
            }
            var arts = await c.Tracker.ListArtifactsAsync(id, ct);
            if (arts.Count > 0) AnsiConsole.Write(ArtifactCommands.Table(arts));
            var inputs = await c.Tracker.GetInputsAsync(id, ct);
            if (inputs.Count > 0)
            {
                var lt = new Table().Border(TableBorder.Simple).Title("lineage: inputs").AddColumns("role", "artifact", "from run", "sha256");
                foreach (var e in inputs) lt.AddRow(Markup.Escape(e.Use.Role), Markup.Escape(e.Artifact.Name), e.Artifact.RunId.ToString(), e.Artifact.Sha256[..12]);
                AnsiConsole.Write(lt);
            }
            var children = (await c.Tracker.Runs.ListAsync(new RunFilter(ParentRunId: id, Limit: int.MaxValue), ct)).OrderBy(x => x.Id).ToList();
            if (children.Count > 0)
            {
                var ct2 = new Table().Border(TableBorder.Simple).Title("child runs").AddColumns("id", "kind", "shard", "status", "attempt");
                foreach (var x in children) ct2.AddRow(x.Id.ToString(), Markup.Escape(x.Kind), x.ShardIndex?.ToString() ?? "aggregator", StatusMarkup(x.Status), x.Attempt.ToString());
                AnsiConsole.Write(ct2);
            }
            var logs = await c.Tracker.GetLogsAsync(id, ct: ct);
            if (logs.Count > 0)
            {
                AnsiConsole.MarkupLine("[grey]logs (last 20)[/]");
                foreach (var l in logs.TakeLast(20)) Console.WriteLine($"  {l.Time.ToLocalTime():HH:mm:ss.fff} {l.Level,-5} {Shorten(l.Message, 400)}");
            }
            return 0;
        }));
        return cmd;
    }

    static Command Watch()
    {
        var interval = new Option<int>("--interval-ms") { Description = "poll interval", DefaultValueFactory = _ => 500 };
        var cmd = new Command("watch", "follow a run live (progress bar with ETA) until it ends; exit 0 when it succeeded") { RunId, interval };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var id = pr.GetValue(RunId);
            var every = TimeSpan.FromMilliseconds(Math.Max(50, pr.GetValue(interval)));
            var r = await c.Tracker.Runs.GetAsync(id, ct) ?? throw new CliError($"run {id} does not exist");
            if (AnsiConsole.Profile.Capabilities.Interactive)
            {
                await AnsiConsole.Progress().AutoClear(false).HideCompleted(false)
                    .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new EtaColumn())
                    .StartAsync(async pc =>
                    {
                        var task = pc.AddTask(Describe(r), maxValue: 1000);
                        while (true)
                        {
                            task.Value = r.Progress * 1000;
                            task.Description = Describe(r);
                            task.State.Update<double>("eta", _ => r.Status == RunStatus.Running ? r.EtaSeconds ?? -1 : -1);
                            if (r.Status.IsTerminal()) { if (r.Status == RunStatus.Succeeded) task.Value = 1000; task.StopTask(); break; }
                            await Task.Delay(every, ct);
                            r = await c.Tracker.Runs.GetAsync(id, ct) ?? r;
                        }
                    });
            }
            else
            {
                string? last = null;
                while (true)
                {
                    var line = $"run {r.Id} {r.Status} {r.Progress:P0} {r.ProgressMessage} {Eta(r.EtaSeconds)}".TrimEnd();
                    if (line != last) Console.WriteLine(line);
                    last = line;
                    if (r.Status.IsTerminal()) break;
                    await Task.Delay(every, ct);
                    r = await c.Tracker.Runs.GetAsync(id, ct) ?? r;
                }
            }
            if (r.FailureReason is { } why && r.Status != RunStatus.Succeeded) Console.WriteLine($"{r.Status}: {why}");
            else Console.WriteLine($"run {r.Id} {r.Status}");
            return r.Status == RunStatus.Succeeded ? 0 : 1;
        }));
        return cmd;
    }

    static Command Cancel()
    {
        var cmd = new Command("cancel", "cancel a run (and its shards/aggregator and the waiting pipeline steps after it)") { RunId };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var id = pr.GetValue(RunId);
            _ = await c.Tracker.Runs.GetAsync(id, ct) ?? throw new CliError($"run {id} does not exist");
            var o = await c.CancelAsync(id, ct);
            if (!o.Any) { Console.WriteLine($"run {id} has already ended; nothing to cancel"); return 0; }
            if (o.CancelRequested.Count > 0) Console.WriteLine($"cancel requested for running run(s) {string.Join(", ", o.CancelRequested)} (they checkpoint and stop at the next heartbeat)");
            if (o.CancelledNow.Count > 0) Console.WriteLine($"cancelled run(s) {string.Join(", ", o.CancelledNow)} before they started");
            return 0;
        }));
        return cmd;
    }

    static Command Priority()
    {
        var level = new Argument<string>("priority") { Description = "high, normal or low" };
        level.AcceptOnlyFromAmong(RunPriority.All);
        var cmd = new Command("priority", "change the priority of a waiting or queued run (a queued run moves to its queue's new variant)") { RunId, level };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var id = pr.GetValue(RunId);
            var r = await c.Tracker.Runs.GetAsync(id, ct) ?? throw new CliError($"run {id} does not exist");
            if (await c.SetPriorityAsync(id, pr.GetValue(level)!, ct) is null) throw new CliError($"run {id} is {r.Status}: only a waiting or queued run can change priority");
            Console.WriteLine($"run {id}: priority {pr.GetValue(level)}");
            return 0;
        }));
        return cmd;
    }

    static Command Retry()
    {
        var cmd = new Command("retry", "re-queue a failed or cancelled run (a failed shard is retried alone; it resumes from its last checkpoint)") { RunId };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var id = pr.GetValue(RunId);
            var r = await c.Tracker.Runs.GetAsync(id, ct) ?? throw new CliError($"run {id} does not exist");
            var s = await c.RetryAsync(id, ct) ?? throw new CliError($"run {id} is {r.Status}; only Failed or Cancelled runs can be retried");
            Console.WriteLine(s == RunStatus.Queued ? $"run {id} queued again on {r.Queue}" : $"run {id} is waiting again (its needs or shards are not complete)");
            return 0;
        }));
        return cmd;
    }

    static string Describe(Run r) =>
        Markup.Escape($"run {r.Id} {r.Kind}{(r.Name is null ? "" : $" ({r.Name})")}") + " " + StatusMarkup(r.Status) + " " + Markup.Escape(Shorten(r.ProgressMessage ?? "", 50));

    static string StatusMarkup(RunStatus s) => s switch
    {
        RunStatus.Succeeded => "[green]Succeeded[/]", RunStatus.Failed => "[red]Failed[/]", RunStatus.Cancelled => "[yellow]Cancelled[/]",
        RunStatus.Running => "[blue]Running[/]", _ => s.ToString(),
    };

    static string Eta(double? seconds) => seconds is { } s && s >= 0 ? $"ETA {CliSupport.Duration(TimeSpan.FromSeconds(s))}" : "";

    static string Shorten(string s, int n) => s.Length <= n ? s.ReplaceLineEndings(" ") : s[..n].ReplaceLineEndings(" ") + "…";

    /// <summary>The engine's ETA (from the run's recent rate), not Spectre's own estimate.</summary>
    sealed class EtaColumn : ProgressColumn
    {
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime)
        {
            var eta = task.State.Get<double>("eta");
            return new Text(eta >= 0 ? $"ETA {CliSupport.Duration(TimeSpan.FromSeconds(eta))}" : "", new Style(Color.Grey));
        }
    }
}

using System.CommandLine;
using ReTok.Tracking;
using Spectre.Console;

namespace ReTok.Cli;

/// <summary>
/// `retok webhooks add|list|remove|test`: an experiment's webhooks (docs/dashboard.md "Notifications"). URLs are
/// secrets: every output shows them masked; pass `-` as the URL to read it from stdin (keeps it out of shell history
/// and the process list). Like every tracking command this acts with the database credentials (RETOK_DB), the trust
/// boundary; the dashboard API requires the operator role.
/// </summary>
public static class WebhookCommands
{
    static readonly Argument<string> Experiment = new("experiment") { Description = "experiment name" };
    static readonly Argument<long> Id = new("id") { Description = "webhook id (from `retok webhooks list`)" };

    public static Command Build()
    {
        var cmd = new Command("webhooks", "notifications of an experiment: Slack/Teams-compatible webhooks on run succeeded/failed/cancelled and pipeline finished");
        cmd.Subcommands.Add(Add());
        cmd.Subcommands.Add(List());
        cmd.Subcommands.Add(Remove());
        cmd.Subcommands.Add(Test());
        return cmd;
    }

    static Command Add()
    {
        var url = new Argument<string>("url") { Description = "http(s) URL to POST to; '-' reads it from stdin" };
        var events = new Option<string[]>("--events") { Description = $"events to send (default all): {string.Join(", ", WebhookEvents.All)}", AllowMultipleArgumentsPerToken = true };
        var name = new Option<string?>("--name") { Description = "a label, e.g. #tokenizer-runs" };
        var cmd = new Command("add", "add a webhook to an experiment (created if new)") { Experiment, url, events, name };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            var u = pr.GetValue(url)!;
            if (u == "-") u = (Console.In.ReadLine() ?? "").Trim();
            var evs = (pr.GetValue(events) ?? []).SelectMany(e => e.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();
            await using var c = await CliSupport.ClientAsync(pr, ct);
            WebhookInfo w;
            try { w = await c.Tracker.Webhooks.AddAsync(pr.GetValue(Experiment)!, u, evs, pr.GetValue(name), Environment.UserName, ct); }
            catch (WebhookValidationException ex) { throw new CliError(ex.Message, 2); }
            Console.WriteLine($"webhook {w.Id} added to experiment {w.Experiment}: {w.UrlMasked} ({string.Join(", ", w.Events)})");
            return 0;
        }));
        return cmd;
    }

    static Command List()
    {
        var deliveries = new Option<int>("--deliveries") { Description = "also show this many recent deliveries", DefaultValueFactory = _ => 10 };
        var cmd = new Command("list", "an experiment's webhooks (URLs masked) and recent deliveries") { Experiment, deliveries };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var exp = pr.GetValue(Experiment)!;
            var hooks = await c.Tracker.Webhooks.ListAsync(exp, ct) ?? throw new CliError($"experiment '{exp}' does not exist");
            var table = new Table().Border(TableBorder.Simple).AddColumns("id", "name", "url", "events", "added");
            foreach (var h in hooks)
                table.AddRow(h.Id.ToString(), Markup.Escape(h.Name ?? ""), Markup.Escape(h.UrlMasked), Markup.Escape(string.Join(", ", h.Events)),
                    Markup.Escape($"{h.CreatedAt.ToLocalTime():yyyy-MM-dd HH:mm} {h.CreatedBy}"));
            AnsiConsole.Write(table);
            if (hooks.Count == 0) { Console.WriteLine($"experiment {exp} has no webhooks"); return 0; }
            var n = pr.GetValue(deliveries);
            if (n <= 0) return 0;
            var ds = await c.Tracker.Webhooks.DeliveriesAsync(exp, limit: n, ct: ct);
            var dt = new Table().Border(TableBorder.Simple).AddColumns("delivery", "webhook", "event", "run", "status", "attempts", "last HTTP", "last error", "queued");
            foreach (var d in ds)
                dt.AddRow(d.Id.ToString(), d.SubscriptionId.ToString(), Markup.Escape(d.Event), d.RunId?.ToString() ?? "", Markup.Escape(d.Status.ToString()), d.Attempts.ToString(),
                    d.LastStatus?.ToString() ?? "", Markup.Escape(d.LastError ?? ""), d.CreatedAt.ToLocalTime().ToString("MM-dd HH:mm:ss"));
            AnsiConsole.Write(dt);
            return 0;
        }));
        return cmd;
    }

    static Command Remove()
    {
        var cmd = new Command("remove", "remove a webhook (and its delivery history)") { Experiment, Id };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var (exp, id) = (pr.GetValue(Experiment)!, pr.GetValue(Id));
            if (!await c.Tracker.Webhooks.RemoveAsync(exp, id, ct)) throw new CliError($"experiment '{exp}' has no webhook {id}");
            Console.WriteLine($"webhook {id} removed from experiment {exp}");
            return 0;
        }));
        return cmd;
    }

    static Command Test()
    {
        var cmd = new Command("test", "send a test message now and print the receiver's answer (status only; retries follow the usual backoff)") { Experiment, Id };
        cmd.WithStoreOptions();
        cmd.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var (exp, id) = (pr.GetValue(Experiment)!, pr.GetValue(Id));
            using var d = new WebhookDispatcher(c.Tracker, c.Options.Webhooks);
            var delivery = await c.Tracker.Webhooks.EnqueueTestAsync(exp, id, d.Owner, ct) ?? throw new CliError($"experiment '{exp}' has no webhook {id}");
            var a = await d.SendNowAsync(delivery, ct);
            var target = (await c.Tracker.Webhooks.DeliveriesAsync(deliveryId: delivery, ct: ct)).Single().UrlMasked;
            if (a is null) { Console.WriteLine($"test delivery {delivery} to {target} queued; a dispatcher took it first"); return 0; }
            Console.WriteLine(a.Status switch
            {
                DeliveryStatus.Delivered => $"test delivery {delivery} to {target}: delivered (HTTP {a.HttpStatus})",
                DeliveryStatus.Pending => $"test delivery {delivery} to {target}: {a.Error}; a dispatcher retries it at {a.RetryAt?.ToLocalTime():HH:mm:ss}",
                _ => $"test delivery {delivery} to {target}: failed: {a.Error}",
            });
            return a.Status == DeliveryStatus.Delivered ? 0 : 1;
        }));
        return cmd;
    }
}

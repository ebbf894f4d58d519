using System.Security.Claims;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using ReTok.Dashboard.Auth;
using ReTok.Tracking;

namespace ReTok.Dashboard;

public sealed record WebhookRequest(string? Url, List<string>? Events, string? Name);
public sealed record WebhookTestDto(long WebhookId, long DeliveryId);

/// <summary>
/// Webhooks of an experiment (issue 19.4): list (masked URLs) and recent deliveries for viewers; add, remove and test for
/// operators. A webhook URL is a secret: no response, page or log carries it in full (<see cref="WebhookUrl.Mask"/>).
/// </summary>
public static class WebhookApi
{
    public static void Map(RouteGroupBuilder api)
    {
        api.MapGet("/experiments/{name}/webhooks", async (Tracker t, string name, CancellationToken ct) =>
                await t.Webhooks.ListAsync(name, ct) is { } list ? Results.Ok(list) : Api.NotFound($"experiment '{name}'"))
            .WithSummary("the experiment's webhooks: id, name, masked url, events");
        api.MapGet("/experiments/{name}/webhooks/deliveries", async (Tracker t, string name, int? limit, CancellationToken ct) =>
                await t.Webhooks.ListAsync(name, ct) is null ? Api.NotFound($"experiment '{name}'")
                    : Results.Ok(await t.Webhooks.DeliveriesAsync(name, limit: limit ?? 50, ct: ct)))
            .WithSummary("the newest webhook deliveries of the experiment: event, run, status (Pending, Delivered, Dead), attempts, last HTTP status");
        api.MapPost("/experiments/{name}/webhooks", async (Tracker t, ClaimsPrincipal u, string name, WebhookRequest req, CancellationToken ct) =>
            {
                try
                {
                    var w = await t.Webhooks.AddAsync(name, req.Url ?? "", req.Events, req.Name, u.Identity?.Name, ct);
                    return Results.Created($"/api/experiments/{Uri.EscapeDataString(name)}/webhooks/{w.Id}", w);
                }
                catch (WebhookValidationException ex) { return Results.Problem(statusCode: 400, title: ex.Message); }
            })
            .RequireAuthorization(AuthSetup.OperatorPolicy).RequireCsrfForCookies()
            .WithSummary($"add a webhook: {{url (http/https), events (default all: {string.Join(", ", WebhookEvents.All)}), name}}; the answer shows the url masked");
        api.MapDelete("/experiments/{name}/webhooks/{id:long}", async (Tracker t, string name, long id, CancellationToken ct) =>
                await t.Webhooks.RemoveAsync(name, id, ct) ? Results.NoContent() : Api.NotFound($"webhook {id} of experiment '{name}'"))
            .RequireAuthorization(AuthSetup.OperatorPolicy).RequireCsrfForCookies().WithSummary("remove a webhook (and its delivery history)");
        api.MapPost("/experiments/{name}/webhooks/{id:long}/test", async (Tracker t, string name, long id, CancellationToken ct) =>
                await t.Webhooks.EnqueueTestAsync(name, id, ct: ct) is { } d ? Results.Accepted(value: new WebhookTestDto(id, d)) : Api.NotFound($"webhook {id} of experiment '{name}'"))
            .RequireAuthorization(AuthSetup.OperatorPolicy).RequireCsrfForCookies()
            .WithSummary("queue a test message (event webhook.test); its outcome is in the deliveries list");
    }
}

/// <summary>The experiment page's "Notifications" section: masked webhooks and their recent deliveries.</summary>
public static class WebhookSection
{
    public static async Task<string> HtmlAsync(Tracker t, string experiment, CancellationToken ct)
    {
        var hooks = await t.Webhooks.ListAsync(experiment, ct) ?? [];
        var deliveries = hooks.Count == 0 ? [] : await t.Webhooks.DeliveriesAsync(experiment, limit: 20, ct: ct);
        var hookTable = Html.Table(["id", "name", "url", "events"],
            hooks.Select(h => (IEnumerable<string>)[Html.E(h.Id), Html.E(h.Name), $"<code>{Html.E(h.UrlMasked)}</code>", Html.E(string.Join(", ", h.Events))]),
            "webhooks", "no webhooks: add one with `retok webhooks add` or POST /api/experiments/NAME/webhooks (operators)");
        var deliveryTable = hooks.Count == 0 ? "" : "<h3>Recent deliveries</h3>" + Html.Table(["id", "event", "run", "webhook", "status", "attempts", "last HTTP", "last error", "queued", "delivered"],
            deliveries.Select(d => (IEnumerable<string>)[
                Html.E(d.Id), Html.E(d.Event), d.RunId is { } r ? $"<a href=\"/runs/{r}\">{r}</a>" : "", Html.E(d.Webhook ?? $"#{d.SubscriptionId}"),
                $"<span class=\"delivery-{Html.E(d.Status.ToString().ToLowerInvariant())}\">{Html.E(d.Status)}</span>", Html.E(d.Attempts), Html.E(d.LastStatus),
                Html.E(d.LastError), Html.E(d.CreatedAt.ToString("yyyy-MM-dd HH:mm:ss")), Html.E(d.DeliveredAt?.ToString("HH:mm:ss"))]),
            "deliveries", "no deliveries yet");
        return $"<h2 id=\"notifications\">Notifications</h2>{hookTable}{deliveryTable}";
    }
}

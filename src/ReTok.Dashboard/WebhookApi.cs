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

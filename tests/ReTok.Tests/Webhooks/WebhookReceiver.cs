using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace ReTok.Tests.Webhooks;

/// <summary>A real HTTP receiver (Kestrel on 127.0.0.1, free port): records every POST and answers what <see cref="Answer"/> says per path and call number.</summary>
public sealed class WebhookReceiver : IAsyncDisposable
{
    public sealed record Hit(string Path, string Body, string? IdempotencyKey, string? Event, DateTimeOffset At)
    {
        public JsonElement Json => JsonDocument.Parse(Body).RootElement;
    }

    public const string SecretBody = "receiver-body-with-xoxb-secret";
    readonly WebApplication _app;
    readonly ConcurrentDictionary<string, int> _calls = new();
    public ConcurrentQueue<Hit> Hits { get; } = new();
    /// <summary>(path, n-th call to that path) -> (status, Retry-After header or null). Default 200.</summary>
    public Func<string, int, (int Status, string? RetryAfter)> Answer { get; set; } = (_, _) => (200, null);
    public string BaseUrl { get; }

    WebhookReceiver(WebApplication app, string url) { _app = app; BaseUrl = url.TrimEnd('/'); }

    public static async Task<WebhookReceiver> StartAsync()
    {
        var b = WebApplication.CreateSlimBuilder();
        b.WebHost.UseUrls("http://127.0.0.1:0");
        b.Logging.ClearProviders();
        var app = b.Build();
        WebhookReceiver? self = null;
        app.MapPost("/{**path}", async (HttpContext ctx, string path) =>
        {
            var body = await new StreamReader(ctx.Request.Body).ReadToEndAsync();
            var n = self!._calls.AddOrUpdate(path, 1, (_, v) => v + 1);
            self.Hits.Enqueue(new Hit(path, body, ctx.Request.Headers["Idempotency-Key"].FirstOrDefault(), ctx.Request.Headers["X-Retok-Event"].FirstOrDefault(), DateTimeOffset.UtcNow));
            var (status, retryAfter) = self.Answer(path, n);
            if (retryAfter is not null) ctx.Response.Headers.RetryAfter = retryAfter;
            ctx.Response.StatusCode = status;
            await ctx.Response.WriteAsync(SecretBody);
        });
        await app.StartAsync();
        self = new WebhookReceiver(app, app.Urls.First());
        return self;
    }

    /// <summary>A Slack-looking URL on this receiver: the token-like tail is what masking must hide.</summary>
    public string Url(string path) => $"{BaseUrl}/services/T0AAA/B0BBB/{path}";

    public List<Hit> For(string path) => Hits.Where(h => h.Path == $"services/T0AAA/B0BBB/{path}").ToList();

    public async ValueTask DisposeAsync() { await _app.StopAsync(); await _app.DisposeAsync(); }
}

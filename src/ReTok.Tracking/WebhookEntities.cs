using System.ComponentModel.DataAnnotations.Schema;

namespace ReTok.Tracking;

/// <summary>The events a webhook can subscribe to (stored by these names in <see cref="WebhookSubscription.Events"/>).</summary>
public static class WebhookEvents
{
    public const string RunSucceeded = "run.succeeded", RunFailed = "run.failed", RunCancelled = "run.cancelled", PipelineFinished = "pipeline.finished";
    public static readonly string[] All = [RunSucceeded, RunFailed, RunCancelled, PipelineFinished];

    /// <summary>The event of a run that reached <paramref name="s"/> (a terminal status).</summary>
    public static string ForRun(RunStatus s) => s switch
    {
        RunStatus.Succeeded => RunSucceeded,
        RunStatus.Failed => RunFailed,
        RunStatus.Cancelled => RunCancelled,
        _ => throw new ArgumentOutOfRangeException(nameof(s), s, "not a terminal status"),
    };
}

/// <summary>
/// A webhook of an experiment: where to POST (a secret: Slack/Teams URLs carry their token, so it is shown only masked,
/// <see cref="WebhookUrl.Mask"/>) and which <see cref="WebhookEvents"/> it wants.
/// </summary>
public class WebhookSubscription
{
    public long Id { get; set; }
    public long ExperimentId { get; set; }
    public string? Name { get; set; }
    public required string Url { get; set; }
    public List<string> Events { get; set; } = new();
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
    public string? CreatedBy { get; set; }
}

public enum DeliveryStatus { Pending, Delivered, Dead }

/// <summary>
/// The transactional outbox: one row per (subscription, event), inserted by the run store in the same transaction as
/// the status change it reports, so a committed change always has its notification and a rolled-back one never does.
/// Dispatchers claim due rows (FOR UPDATE SKIP LOCKED plus a lease), POST them, and record each attempt here.
/// </summary>
public class WebhookDelivery
{
    public long Id { get; set; }
    public long SubscriptionId { get; set; }
    public required string Event { get; set; }
    public long? RunId { get; set; }
    public Guid? PipelineId { get; set; }
    /// <summary>The facts of the event as captured in the transaction (run id, kind, name, experiment, status, error, times), jsonb.</summary>
    [Column(TypeName = "jsonb")] public string Facts { get; set; } = "{}";
    /// <summary>Sent as the Idempotency-Key header: receivers that see a retry of one delivery can drop it.</summary>
    public Guid IdempotencyKey { get; set; } = Guid.NewGuid();
    public DeliveryStatus Status { get; set; } = DeliveryStatus.Pending;
    public int Attempts { get; set; }
    public DateTimeOffset NextAttemptAt { get; set; } = DateTimeOffset.UtcNow;
    /// <summary>A claiming dispatcher's lease: others skip the row until it expires (a dispatcher killed mid-POST).</summary>
    public DateTimeOffset? LeaseUntil { get; set; }
    public string? LeaseOwner { get; set; }
    /// <summary>The last HTTP status (0: no response) and a short error (never the response body).</summary>
    public int? LastStatus { get; set; }
    public string? LastError { get; set; }
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
    public DateTimeOffset? DeliveredAt { get; set; }
}

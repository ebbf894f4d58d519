using System.Net.Sockets;
using Npgsql;
using Polly;
using Polly.Retry;
using ReTok.Tracking.Artifacts;

namespace ReTok.Tracking;

/// <summary>A write was attempted by an executor whose run lease (fencing generation) is no longer current.</summary>
public sealed class LeaseLostException(string message) : Exception(message);

/// <summary>An artifact name already holds different bytes and the save did not ask to overwrite.</summary>
public sealed class ArtifactConflictException(string message) : InvalidOperationException(message);

/// <summary>Transient vs deterministic faults: only the former are worth retrying.</summary>
public static class Faults
{
    public static bool IsTransient(Exception ex) => ex switch
    {
        LeaseLostException or ArtifactIntegrityException or ArtifactConflictException or DatabaseUnreachableException => false,
        OperationCanceledException => false,
        PostgresException pg => pg.SqlState is PostgresErrorCodes.SerializationFailure or PostgresErrorCodes.DeadlockDetected
            or PostgresErrorCodes.LockNotAvailable or PostgresErrorCodes.AdminShutdown or PostgresErrorCodes.CrashShutdown
            or PostgresErrorCodes.CannotConnectNow or PostgresErrorCodes.TooManyConnections or PostgresErrorCodes.InsufficientResources
            || pg.SqlState.StartsWith("08", StringComparison.Ordinal),
        NpgsqlException n => n.IsTransient,
        Azure.RequestFailedException r => r.Status is 0 or 408 or 429 or >= 500,
        HttpRequestException or SocketException or TimeoutException => true,
        _ => false,
    };

    /// <summary>Retry transient faults with exponential backoff and jitter (a few seconds in total); anything else surfaces at once.</summary>
    public static ResiliencePipeline CreateRetry(int attempts = 5, TimeSpan? firstDelay = null, Action<string>? log = null) =>
        new ResiliencePipelineBuilder().AddRetry(new RetryStrategyOptions
        {
            ShouldHandle = new PredicateBuilder().Handle<Exception>(IsTransient),
            MaxRetryAttempts = attempts,
            Delay = firstDelay ?? TimeSpan.FromMilliseconds(200),
            BackoffType = DelayBackoffType.Exponential,
            UseJitter = true,
            MaxDelay = TimeSpan.FromSeconds(10),
            OnRetry = a =>
            {
                log?.Invoke($"transient fault ({a.Outcome.Exception?.GetType().Name}: {a.Outcome.Exception?.Message}); retry {a.AttemptNumber + 1} in {a.RetryDelay.TotalMilliseconds:F0} ms");
                return ValueTask.CompletedTask;
            },
        }).Build();
}

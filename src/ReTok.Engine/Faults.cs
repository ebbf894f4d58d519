namespace ReTok.Engine;

/// <summary>
/// A deterministic failure: bad config, NaN loss, architecture/checkpoint mismatch. The run fails at once with
/// <see cref="Exception.Message"/> as its failure reason; it is never retried automatically.
/// </summary>
public class JobFailedException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A fault worth retrying (a flaky mount, a busy service): the run is re-queued with backoff, up to the kind's MaxAttempts.</summary>
public class TransientJobException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A job spec or its parameters do not validate; <see cref="Errors"/> name the key path and the expected type.</summary>
public sealed class SpecValidationException(IReadOnlyList<string> errors, string? source = null)
    : Exception((source is null ? "" : source + ": ") + (errors.Count == 1 ? errors[0] : $"{errors.Count} errors:\n  " + string.Join("\n  ", errors)))
{
    public IReadOnlyList<string> Errors { get; } = errors;
}

public static class FailureClassifier
{
    /// <summary>
    /// Retried: <see cref="TransientJobException"/>, transient database/blob/network faults, I/O errors and timeouts.
    /// Everything else (including <see cref="JobFailedException"/>, validation, integrity and programming errors, and
    /// malformed or truncated files) fails at once.
    /// </summary>
    public static bool IsTransient(Exception ex) => ex switch
    {
        TransientJobException => true,
        JobFailedException or SpecValidationException or Tracking.Artifacts.ArtifactIntegrityException or Tracking.ArtifactConflictException => false,
        FileNotFoundException or DirectoryNotFoundException => false,
        // Malformed or truncated input (a cut-off checkpoint, a corrupt npz/zip, a bad config): the same bytes fail the
        // same way on every retry. EndOfStreamException is an IOException, hence listed before the I/O rule below.
        EndOfStreamException or InvalidDataException or FormatException or System.Text.Json.JsonException
            or YamlDotNet.Core.YamlException or System.Text.DecoderFallbackException => false,
        AggregateException { InnerExceptions.Count: 1 } a => IsTransient(a.InnerExceptions[0]),
        _ => Tracking.Faults.IsTransient(ex) || ex is IOException or TimeoutException,
    };
}

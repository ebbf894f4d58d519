using System.CommandLine;
using ReTok.Engine;
using ReTok.Tracking;

namespace ReTok.Cli;

/// <summary>Options and error handling shared by the engine/tracking commands.</summary>
static class CliSupport
{
    public static readonly Option<string?> Artifacts = new("--artifacts") { Description = "artifact store: folder, file:PATH or blob:CONTAINER;CONNECTION (default: $RETOK_ARTIFACTS or .state/artifacts)" };

    public static Command WithStoreOptions(this Command c)
    {
        c.Options.Add(DbCommands.DbOption);
        c.Options.Add(Artifacts);
        return c;
    }

    public static EngineOptions Engine(ParseResult pr) => EngineOptions.FromEnvironment(pr.GetValue(DbCommands.DbOption), pr.GetValue(Artifacts));

    /// <summary>A client for commands that read/write tracking (checks the database is reachable, migrating if configured).</summary>
    public static async Task<JobClient> ClientAsync(ParseResult pr, CancellationToken ct)
    {
        var o = Engine(pr);
        // Redirected output (pipes, CI logs) has no width: don't wrap tables at Spectre's default 80 columns.
        if (Console.IsOutputRedirected) Spectre.Console.AnsiConsole.Profile.Width = 200;
        var c = new JobClient(o);
        await c.EnsureSchemaAsync(ct);
        return c;
    }

    /// <summary>Turns the errors a user can fix into one clear line and an exit code instead of a stack trace.</summary>
    public static async Task<int> Guard(Func<Task<int>> body)
    {
        try { return await body(); }
        catch (SpecValidationException ex) { PrintError($"invalid spec: {ex.Message}"); return 2; }
        catch (DatabaseUnreachableException ex) { PrintError(ex.Message); return 3; }
        catch (DatabaseAccessException ex) { PrintError(ex.Message); return 3; }
        catch (Tracking.Artifacts.ArtifactIntegrityException ex) { PrintError(ex.Message); return 4; }
        catch (CliError ex) { PrintError(ex.Message); return ex.ExitCode; }
        catch (UnauthorizedAccessException ex)
        {
            // e.g. a container whose RETOK_HOME volume is not writable for its user
            PrintError($"{ex.Message} The user running retok (uid {UnixUid()}) " +
                "needs write access to RETOK_HOME, RETOK_SCRATCH and RETOK_ARTIFACTS (when a folder).");
            return 5;
        }
    }

    /// <summary>The CLI's error printer: every error line goes through <see cref="Redact"/> (messages can carry connection strings).</summary>
    public static void PrintError(string message) => Console.Error.WriteLine(Redact.Secrets(message));

    /// <summary>Runs the parsed command; an exception nobody handled is printed in full (for bug reports) but with credentials blanked.</summary>
    public static async Task<int> InvokeAsync(ParseResult parsed, InvocationConfiguration config)
    {
        config.EnableDefaultExceptionHandler = false; // it prints ex.ToString() unredacted
        try { return await parsed.InvokeAsync(config); }
        catch (OperationCanceledException) { return 130; }
        catch (Exception ex)
        {
            PrintError($"unhandled error: {Redact.Exception(ex)}");
            return 1;
        }
    }

    /// <summary>The real uid from /proc (no libc call needed); "?" elsewhere.</summary>
    static string UnixUid() => File.Exists("/proc/self/status")
        ? File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("Uid:"))?.Split('\t', StringSplitOptions.RemoveEmptyEntries).ElementAtOrDefault(1) ?? "?" : "?";

    public static string Duration(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:00}m" : t.TotalMinutes >= 1 ? $"{t.Minutes}m{t.Seconds:00}s" : $"{t.TotalSeconds:F1}s";

    public static string Size(long b) => b >= 1 << 30 ? $"{b / (double)(1 << 30):F2} GiB" : b >= 1 << 20 ? $"{b / (double)(1 << 20):F1} MiB" : b >= 1 << 10 ? $"{b / 1024.0:F1} KiB" : $"{b} B";
}

sealed class CliError(string message, int exitCode = 1) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}

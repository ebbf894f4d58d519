using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;
using ReTok.Tracking;

namespace ReTok.Dashboard;

/// <summary>
/// The dashboard's console log format: "time level category[event] message", then the exception, both through
/// <see cref="Redact"/>. ASP.NET logs an unhandled request exception in full, and its message can hold a connection
/// string (AccountKey=, Password=); the built-in formatters would print it as is.
/// </summary>
public sealed class RedactingConsoleFormatter() : ConsoleFormatter(Name)
{
    public const string Name = "retok-redacting";

    public override void Write<TState>(in LogEntry<TState> entry, IExternalScopeProvider? scopeProvider, TextWriter w)
    {
        var message = entry.Formatter?.Invoke(entry.State, entry.Exception);
        if (message is null && entry.Exception is null) return;
        var level = entry.LogLevel switch
        {
            LogLevel.Trace => "trce", LogLevel.Debug => "dbug", LogLevel.Information => "info", LogLevel.Warning => "warn",
            LogLevel.Error => "fail", LogLevel.Critical => "crit", _ => "none",
        };
        w.WriteLine($"{DateTime.Now:HH:mm:ss} {level}: {entry.Category}[{entry.EventId.Id}] {Redact.Secrets(message ?? "")}");
        if (entry.Exception is { } ex) w.WriteLine(Redact.Exception(ex));
    }
}

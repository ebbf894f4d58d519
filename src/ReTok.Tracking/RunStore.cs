namespace ReTok.Tracking;

/// <summary>
/// Every statement that changes runs, pipelines and workers, as Hangfire keeps every SQL statement in its storage package
/// behind <c>IStorageConnection</c>: the engine keeps only the Hangfire side (enqueueing, job state) and the dashboard
/// and CLI act through this store. Status changes are checked against one table, <see cref="Transitions"/>, the role of
/// Hangfire's <c>StateMachine</c>.
/// </summary>
public sealed partial class RunStore
{
    readonly Tracker _t;

    internal RunStore(Tracker tracker) => _t = tracker;

    /// <summary>The allowed status changes. Every status-changing statement takes its guard from <see cref="Change"/>, which refuses a pair not listed here.</summary>
    public static readonly IReadOnlyDictionary<RunStatus, IReadOnlySet<RunStatus>> Transitions = new Dictionary<RunStatus, IReadOnlySet<RunStatus>>
    {
        // queued when the last need or shard succeeds; cancelled with an upstream run
        [RunStatus.Waiting] = new HashSet<RunStatus> { RunStatus.Queued, RunStatus.Cancelled },
        [RunStatus.Queued] = new HashSet<RunStatus> { RunStatus.Running, RunStatus.Cancelled },
        // Running -> Running is a takeover of an expired lease; -> Queued a graceful release, a transient-failure retry or
        // the reconciler's re-queue of a long-expired lease; cancelling a running run only sets CancelRequested.
        [RunStatus.Running] = new HashSet<RunStatus> { RunStatus.Running, RunStatus.Queued, RunStatus.Succeeded, RunStatus.Failed, RunStatus.Cancelled },
        [RunStatus.Succeeded] = new HashSet<RunStatus>(),
        // `retry`: Queued, or Waiting while pipeline needs or shards are incomplete
        [RunStatus.Failed] = new HashSet<RunStatus> { RunStatus.Queued, RunStatus.Waiting },
        [RunStatus.Cancelled] = new HashSet<RunStatus> { RunStatus.Queued, RunStatus.Waiting },
    };

    public static bool IsAllowed(RunStatus from, RunStatus to) => Transitions[from].Contains(to);

    /// <summary>A checked status change in SQL: <see cref="To"/> is the new status as a literal, <see cref="Where"/> the guard on the old one.</summary>
    readonly record struct StatusChange(string To, string Where);

    /// <summary>The change from any of <paramref name="from"/> to <paramref name="to"/>; throws if the table lacks one of those moves.</summary>
    static StatusChange Change(RunStatus[] from, RunStatus to, string column = "status")
    {
        foreach (var f in from)
            if (!IsAllowed(f, to)) throw new InvalidOperationException($"run status {f} -> {to} is not an allowed transition");
        return new StatusChange($"'{to}'", $"{column} IN ({string.Join(", ", from.Select(s => $"'{s}'"))})");
    }
}

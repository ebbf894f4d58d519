using System.ComponentModel.DataAnnotations.Schema;

namespace ReTok.Tracking;

public enum RunStatus { Waiting, Queued, Running, Succeeded, Failed, Cancelled }

/// <summary>
/// Run priorities as Hangfire queue names. Hangfire.PostgreSql fetches the oldest unfetched job ordered by queue name
/// (ORDER BY fetchedat NULLS FIRST, queue, jobid), so a digit prefix orders the variants of a queue: "0-gpu" (high)
/// before "1-gpu" (normal) before "2-gpu" (low), and high before normal across the queues one server serves.
/// </summary>
public static class RunPriority
{
    public const string High = "high", Normal = "normal", Low = "low";
    public static readonly string[] All = [High, Normal, Low];

    public static bool IsValid(string? p) => p is High or Normal or Low;

    public static string HangfireQueue(string queue, string priority) => priority switch
    {
        High => "0-" + queue,
        Low => "2-" + queue,
        _ => "1-" + queue,
    };

    /// <summary>The Hangfire queues a server of <paramref name="queue"/> listens to: the three variants, and the bare name
    /// that runs enqueued before priorities existed still sit in.</summary>
    public static IEnumerable<string> ServedQueues(string queue) => [HangfireQueue(queue, High), HangfireQueue(queue, Normal), HangfireQueue(queue, Low), queue];
}

public static class RunStatusExtensions
{
    public static bool IsTerminal(this RunStatus s) => s is RunStatus.Succeeded or RunStatus.Failed or RunStatus.Cancelled;
}

public class Experiment
{
    public long Id { get; set; }
    public required string Name { get; set; }
    public string? Description { get; set; }
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
    public List<Run> Runs { get; set; } = new();
}

/// <summary>A tracked unit of work. The row (kind + validated parameters) is the source of truth, not Hangfire's payload.</summary>
public class Run
{
    public long Id { get; set; }
    public long? ExperimentId { get; set; }
    public Experiment? Experiment { get; set; }
    public required string Kind { get; set; }
    public string? Name { get; set; }
    public RunStatus Status { get; set; } = RunStatus.Queued;
    /// <summary>Validated parameters as JSON (jsonb); immutable once the run exists.</summary>
    [Column(TypeName = "jsonb")] public string Parameters { get; set; } = "{}";
    public string ConfigHash { get; set; } = "";
    public long? Seed { get; set; }
    public string? CodeVersion { get; set; }
    public string Queue { get; set; } = "cpu";
    /// <summary>Devices the run leases at once on one worker (spec key `gpus`); <see cref="Device"/> lists those it held.</summary>
    public int Gpus { get; set; } = 1;
    /// <summary>Rank runs of a multi-node group (spec key `nodes`): the submitted run is rank 0 and spawns ranks 1..N-1 as its
    /// children (<see cref="NodeRank"/>); 1 on every other run.</summary>
    public int Nodes { get; set; } = 1;
    /// <summary>This run's rank in its node group (0 on the submitted run, whose id names the group).</summary>
    public int NodeRank { get; set; }
    /// <summary>high, normal or low: which Hangfire queue variant carries the run (<see cref="RunPriority"/>).</summary>
    public string Priority { get; set; } = RunPriority.Normal;
    public string? Host { get; set; }
    public string? Device { get; set; }
    public List<string> Tags { get; set; } = new();
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
    public DateTimeOffset? StartedAt { get; set; }
    public DateTimeOffset? FinishedAt { get; set; }
    public long? ParentRunId { get; set; }
    public Run? ParentRun { get; set; }
    public Guid? PipelineId { get; set; }
    public string? PipelineStep { get; set; }
    /// <summary>Pipeline steps (names) that must have succeeded before this run is queued.</summary>
    public List<string> DependsOn { get; set; } = new();
    /// <summary>Named inputs: role -> reference ("STEP/NAME" inside a pipeline, "run:ID/NAME" anywhere), jsonb.</summary>
    [Column(TypeName = "jsonb")] public string Inputs { get; set; } = "{}";
    public string? FailureReason { get; set; }

    // Live progress (dashboard/CLI watch).
    public double Progress { get; set; }
    public string? ProgressMessage { get; set; }
    public DateTimeOffset? ProgressAt { get; set; }
    public double? EtaSeconds { get; set; }

    // Execution bookkeeping.
    public string? HangfireJobId { get; set; }
    public int Attempt { get; set; }
    public bool CancelRequested { get; set; }
    /// <summary>Run lease: owner, generation (fencing token) and expiry; a second executor refuses while it is live.</summary>
    public string? LeaseOwner { get; set; }
    public long LeaseGeneration { get; set; }
    public DateTimeOffset? LeaseExpiresAt { get; set; }
    /// <summary>How often an expired lease of another executor was taken over or re-queued by the reconciler (a dead or stalled worker).</summary>
    public int LeaseTakeovers { get; set; }
    /// <summary>Fan-in counter, on an aggregator run: shards still to succeed before it is queued.</summary>
    public int PendingChildren { get; set; }
    /// <summary>On a shard: the aggregator run whose <see cref="PendingChildren"/> it decrements when it succeeds.</summary>
    public long? FanInRunId { get; set; }
    public int? ShardIndex { get; set; }
    /// <summary>
    /// On a shard or aggregator: the engine-owned state its parent handed it at fan-out (a row range, a search's history),
    /// jsonb. Kept out of <see cref="Parameters"/> so a spec cannot set it; null on every other run.
    /// </summary>
    [Column(TypeName = "jsonb")] public string? FanOutState { get; set; }
    /// <summary>On a run that spawned shards: the aggregator that finishes its work (and its pipeline step).</summary>
    public long? ContinuedByRunId { get; set; }
    public DateTimeOffset? QueuedAt { get; set; }

    public List<MetricPoint> Metrics { get; set; } = new();
    public List<Artifact> Artifacts { get; set; } = new();
}

/// <summary>One point of a metric series; the primary key (run, key, step) makes re-logging a step an update, never a duplicate.</summary>
public class MetricPoint
{
    public long RunId { get; set; }
    public required string Key { get; set; }
    public long Step { get; set; }
    public double Value { get; set; }
    public DateTimeOffset Time { get; set; } = DateTimeOffset.UtcNow;
}

public class Artifact
{
    public long Id { get; set; }
    public long RunId { get; set; }
    public Run? Run { get; set; }
    public required string Name { get; set; }
    /// <summary>checkpoint, npz, image, plot, npy, json, yaml, safetensors, other.</summary>
    public string Kind { get; set; } = "other";
    public required string StorageUri { get; set; }
    public long SizeBytes { get; set; }
    public required string Sha256 { get; set; }
    public string ContentType { get; set; } = "application/octet-stream";
    /// <summary>Free-form jsonb, e.g. {"step": 4000} on checkpoints.</summary>
    [Column(TypeName = "jsonb")] public string Metadata { get; set; } = "{}";
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
}

/// <summary>Lineage: run <see cref="RunId"/> consumed <see cref="ArtifactId"/> under the input name <see cref="Role"/>.</summary>
public class ArtifactUse
{
    public long Id { get; set; }
    public long RunId { get; set; }
    public long ArtifactId { get; set; }
    public Artifact? Artifact { get; set; }
    public string Role { get; set; } = "input";
    public DateTimeOffset Time { get; set; } = DateTimeOffset.UtcNow;
}

public class RunLog
{
    public long Id { get; set; }
    public long RunId { get; set; }
    public DateTimeOffset Time { get; set; } = DateTimeOffset.UtcNow;
    public string Level { get; set; } = "info";
    public required string Message { get; set; }
}

public class Pipeline
{
    public Guid Id { get; set; } = Guid.NewGuid();
    public required string Name { get; set; }
    public string SpecYaml { get; set; } = "";
    /// <summary>The --set overrides applied on top of <see cref="SpecYaml"/>.</summary>
    public List<string> Overrides { get; set; } = new();
    public long? ExperimentId { get; set; }
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
}

/// <summary>A worker process (one per machine) and what its device slots are doing.</summary>
public class WorkerInfo
{
    public required string Id { get; set; }
    public required string Host { get; set; }
    public string Queues { get; set; } = "";
    public string Devices { get; set; } = "";
    [Column(TypeName = "jsonb")] public string Slots { get; set; } = "{}";
    /// <summary>The latest sys/* readings of the worker (its GPUs, process CPU/RSS, host memory): key -> value.</summary>
    [Column(TypeName = "jsonb")] public string System { get; set; } = "{}";
    public DateTimeOffset StartedAt { get; set; } = DateTimeOffset.UtcNow;
    public DateTimeOffset LastHeartbeat { get; set; } = DateTimeOffset.UtcNow;
}

/// <summary>
/// How an evaluation metric of a run was measured (issue 18.3): one row per (run, metric key). <see cref="ProtocolHash"/>
/// is the sha256 of the fields that change the number (<see cref="EvalProvenance.ProtocolFields"/>); the full record is jsonb.
/// </summary>
public class MetricProvenance
{
    public long RunId { get; set; }
    public required string Key { get; set; }
    public required string ProtocolHash { get; set; }
    [Column(TypeName = "jsonb")] public string Provenance { get; set; } = "{}";
    public DateTimeOffset Time { get; set; } = DateTimeOffset.UtcNow;
}

/// <summary>
/// One entry of a node group's rendezvous (spec key `nodes`): rank 0 publishes an opaque string (the TCP address or the
/// NCCL unique id) under its lease generation; rank r records that it joined that generation, so a retried rank never
/// re-joins an id it already used (rank 0's next execution publishes a new generation).
/// </summary>
public class RendezvousEntry
{
    public long GroupRunId { get; set; }
    public long Generation { get; set; }
    public int Rank { get; set; }
    public string Value { get; set; } = "";
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
}

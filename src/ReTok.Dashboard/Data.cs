using System.Text.Json;
using Microsoft.EntityFrameworkCore;
using ReTok.Tracking;

namespace ReTok.Dashboard;

public sealed record RunDto(long Id, string? Name, string Kind, RunStatus Status, string? Experiment, IReadOnlyList<string> Tags,
    double Progress, string? ProgressMessage, double? EtaSeconds, DateTimeOffset CreatedAt, DateTimeOffset? StartedAt, DateTimeOffset? FinishedAt,
    string Queue, string? Host, string? Device, int Attempt, bool CancelRequested, string? FailureReason, string? HangfireJobId,
    Guid? PipelineId, string? PipelineStep, long? ParentRunId, int? ShardIndex, long? FanInRunId, long? ContinuedByRunId,
    string ConfigHash, long? Seed, string? CodeVersion, JsonElement Parameters, JsonElement Inputs)
{
    public static RunDto From(Run r) => new(r.Id, r.Name, r.Kind, r.Status, r.Experiment?.Name, r.Tags, r.Progress, r.ProgressMessage,
        r.EtaSeconds, r.CreatedAt, r.StartedAt, r.FinishedAt, r.Queue, r.Host, r.Device, r.Attempt, r.CancelRequested, r.FailureReason,
        r.HangfireJobId, r.PipelineId, r.PipelineStep, r.ParentRunId, r.ShardIndex, r.FanInRunId, r.ContinuedByRunId, r.ConfigHash, r.Seed,
        r.CodeVersion, Json(r.Parameters), Json(r.Inputs));

    static JsonElement Json(string s) { using var d = JsonDocument.Parse(string.IsNullOrWhiteSpace(s) ? "{}" : s); return d.RootElement.Clone(); }
}

/// <summary>The live part of a run, for the polling script and `GET /api/runs/live`.</summary>
public sealed record LiveDto(long Id, RunStatus Status, double Progress, string? ProgressMessage, double? EtaSeconds, bool Terminal, string ProgressHtml, string Eta);

public sealed record ArtifactDto(long Id, long RunId, string Name, string Kind, long SizeBytes, string Sha256, string ContentType,
    JsonElement Metadata, DateTimeOffset CreatedAt, string DownloadUrl)
{
    public static ArtifactDto From(Artifact a)
    {
        using var d = JsonDocument.Parse(string.IsNullOrWhiteSpace(a.Metadata) ? "{}" : a.Metadata);
        return new(a.Id, a.RunId, a.Name, a.Kind, a.SizeBytes, a.Sha256, a.ContentType, d.RootElement.Clone(), a.CreatedAt,
            $"/api/runs/{a.RunId}/artifacts/{a.Name}");
    }
}

public sealed record RunRef(long Id, string? Name, string Kind, RunStatus Status);
public sealed record LineageInput(string Role, long ArtifactId, string Artifact, string Sha256, RunRef Producer);
public sealed record LineageConsumer(string Role, RunRef Run);
public sealed record LineageOutput(long ArtifactId, string Artifact, IReadOnlyList<LineageConsumer> ConsumedBy);
public sealed record LineageDto(long RunId, IReadOnlyDictionary<string, string> DeclaredInputs, IReadOnlyList<LineageInput> Inputs,
    IReadOnlyList<LineageOutput> Outputs, RunRef? Parent, IReadOnlyList<RunRef> Children, RunRef? FanIn, RunRef? ContinuedBy,
    IReadOnlyList<RunRef> Pipeline);

public sealed record LogDto(long Id, DateTimeOffset Time, string Level, string Message);
public sealed record MetricPointDto(string Key, long Step, double Value, DateTimeOffset Time);
public sealed record ExperimentDto(long Id, string Name, string? Description, DateTimeOffset CreatedAt, int Runs, int Active);
public sealed record SlotDto(string Device, RunRef? Run, double? Progress);
public sealed record WorkerDto(string Id, string Host, string Queues, IReadOnlyList<SlotDto> Slots, DateTimeOffset StartedAt,
    DateTimeOffset LastHeartbeat, double SecondsSinceHeartbeat, bool Stale, IReadOnlyDictionary<string, double>? System = null);

/// <summary>Read side of the dashboard: runs and workers through the <see cref="RunStore"/>, metrics, artifacts and logs through the <see cref="Tracker"/>.</summary>
public sealed class DashboardData(Tracker tracker, DashboardOptions options)
{
    public Tracker Tracker => tracker;

    /// <summary>The runs list: blank filters are no filter, at most 2000 runs.</summary>
    public Task<List<Run>> ListRunsAsync(string? experiment, string? kind, RunStatus? status, string? tag, Guid? pipeline, int limit, CancellationToken ct)
    {
        static string? Given(string? s) => string.IsNullOrWhiteSpace(s) ? null : s;
        return tracker.Runs.ListAsync(new RunFilter(status, Given(kind), pipeline, Limit: Math.Clamp(limit, 1, 2000), Experiment: Given(experiment), Tag: Given(tag)), ct);
    }

    public async Task<Run?> GetRunAsync(long id, CancellationToken ct) => (await tracker.Runs.GetManyAsync([id], ct)).FirstOrDefault();

    public Task<List<Run>> GetRunsAsync(IReadOnlyCollection<long> ids, CancellationToken ct) => tracker.Runs.GetManyAsync(ids, ct);

    public static LiveDto Live(Run r) => new(r.Id, r.Status, r.Progress, r.ProgressMessage, r.EtaSeconds, r.Status.IsTerminal(), Html.Progress(r), Html.Eta(r));

    public async Task<(List<string> Kinds, List<string> Experiments, List<string> Tags)> FilterChoicesAsync(CancellationToken ct)
    {
        var (kinds, tags) = await tracker.Runs.ListKindsAndTagsAsync(ct);
        await using var db = tracker.CreateDb();
        var exps = await db.Experiments.Select(e => e.Name).OrderBy(n => n).ToListAsync(ct);
        return (kinds, exps, tags);
    }

    public async Task<LineageDto> LineageAsync(Run run, CancellationToken ct)
    {
        await using var db = tracker.CreateDb();
        var inputs = await tracker.GetInputsAsync(run.Id, ct);
        var producerIds = inputs.Select(e => e.Artifact.RunId).ToHashSet();
        var artifacts = await db.Artifacts.AsNoTracking().Where(a => a.RunId == run.Id).OrderBy(a => a.Name).ToListAsync(ct);
        var artIds = artifacts.Select(a => a.Id).ToList();
        var uses = await db.ArtifactUses.AsNoTracking().Where(u => artIds.Contains(u.ArtifactId)).OrderBy(u => u.RunId).ToListAsync(ct);
        var children = (await tracker.Runs.ListIdsAsync(new RunFilter(ParentRunId: run.Id, Limit: int.MaxValue), ct)).Order().ToList();
        var related = producerIds.Concat(uses.Select(u => u.RunId)).Concat(children)
            .Concat(new[] { run.ParentRunId, run.FanInRunId, run.ContinuedByRunId }.OfType<long>()).ToHashSet();
        var pipeline = run.PipelineId is { } pid
            ? (await tracker.Runs.ListAsync(new RunFilter(PipelineId: pid, Limit: int.MaxValue), ct)).OrderBy(r => r.Id).ToList() : new List<Run>();
        var refs = (await tracker.Runs.GetManyAsync(related, ct)).Concat(pipeline)
            .DistinctBy(r => r.Id).ToDictionary(r => r.Id, Ref);
        RunRef R(long id) => refs.TryGetValue(id, out var x) ? x : new RunRef(id, null, "?", RunStatus.Waiting);
        var declared = JsonSerializer.Deserialize<Dictionary<string, string>>(string.IsNullOrWhiteSpace(run.Inputs) ? "{}" : run.Inputs) ?? new();
        return new LineageDto(run.Id, declared,
            inputs.Select(e => new LineageInput(e.Use.Role, e.Artifact.Id, e.Artifact.Name, e.Artifact.Sha256, R(e.Artifact.RunId))).ToList(),
            artifacts.Select(a => new LineageOutput(a.Id, a.Name, uses.Where(u => u.ArtifactId == a.Id).Select(u => new LineageConsumer(u.Role, R(u.RunId))).ToList()))
                .Where(o => o.ConsumedBy.Count > 0).ToList(),
            run.ParentRunId is { } p ? R(p) : null, children.Select(R).ToList(),
            run.FanInRunId is { } f ? R(f) : null, run.ContinuedByRunId is { } c ? R(c) : null,
            pipeline.Select(Ref).ToList());
    }

    public static RunRef Ref(Run r) => new(r.Id, r.Name ?? r.PipelineStep, r.Kind, r.Status);

    /// <summary>The last <paramref name="tail"/> log lines (or those after <paramref name="afterId"/>), oldest first.</summary>
    public async Task<List<LogDto>> LogsAsync(long runId, long? afterId, int tail, CancellationToken ct)
    {
        tail = Math.Clamp(tail, 1, 5000);
        if (afterId is { } a)
            return (await tracker.GetLogsAsync(runId, a, tail, ct)).Select(l => new LogDto(l.Id, l.Time, l.Level, l.Message)).ToList();
        await using var db = tracker.CreateDb();
        var rows = await db.Logs.AsNoTracking().Where(l => l.RunId == runId).OrderByDescending(l => l.Id).Take(tail).ToListAsync(ct);
        rows.Reverse();
        return rows.Select(l => new LogDto(l.Id, l.Time, l.Level, l.Message)).ToList();
    }

    public async Task<List<ExperimentDto>> ExperimentsAsync(CancellationToken ct) =>
        (await tracker.Runs.ListExperimentRunCountsAsync(ct)).Select(e => new ExperimentDto(e.Id, e.Name, e.Description, e.CreatedAt, e.Runs, e.Active)).ToList();

    public async Task<List<WorkerDto>> WorkersAsync(CancellationToken ct)
    {
        var rows = await tracker.Runs.ListWorkersAsync(ct);
        var slots = rows.ToDictionary(w => w.Id, w => JsonSerializer.Deserialize<Dictionary<string, long?>>(string.IsNullOrWhiteSpace(w.Slots) ? "{}" : w.Slots) ?? new());
        var runIds = slots.Values.SelectMany(s => s.Values).OfType<long>().ToHashSet();
        var runs = (await tracker.Runs.GetManyAsync(runIds, ct)).ToDictionary(r => r.Id);
        var now = DateTimeOffset.UtcNow;
        return rows.Select(w =>
        {
            var age = (now - w.LastHeartbeat).TotalSeconds;
            var s = slots[w.Id].OrderBy(kv => kv.Key, StringComparer.Ordinal)
                .Select(kv => kv.Value is { } id && runs.TryGetValue(id, out var r) ? new SlotDto(kv.Key, Ref(r), r.Progress)
                    : new SlotDto(kv.Key, kv.Value is { } id2 ? new RunRef(id2, null, "?", RunStatus.Running) : null, null)).ToList();
            var sys = JsonSerializer.Deserialize<Dictionary<string, double>>(string.IsNullOrWhiteSpace(w.System) ? "{}" : w.System) ?? new();
            return new WorkerDto(w.Id, w.Host, w.Queues, s, w.StartedAt, w.LastHeartbeat, Math.Round(age, 1), age > options.WorkerStaleAfter.TotalSeconds, sys);
        }).ToList();
    }

    /// <summary>The last value of every metric key, for several runs at once (compare page).</summary>
    public async Task<Dictionary<long, Dictionary<string, MetricPoint>>> LatestAsync(IReadOnlyCollection<long> runIds, CancellationToken ct)
    {
        var byRun = (await tracker.GetLatestMetricsAsync(runIds, ct)).ToLookup(m => m.RunId);
        return runIds.Distinct().ToDictionary(id => id, id => byRun[id].ToDictionary(m => m.Key));
    }

    /// <summary>
    /// Chart series by key, at most about <paramref name="maxPointsPerKey"/> points each, downsampled in SQL with
    /// each bucket's min and max kept (<see cref="Tracker.GetMetricSeriesAsync"/>); a chart is 520 px wide, so 1000
    /// points (2 per pixel column) lose nothing visible.
    /// </summary>
    public Task<Dictionary<string, List<(long Step, double Value)>>> SeriesAsync(long runId, CancellationToken ct, int maxPointsPerKey = 1000) =>
        tracker.GetMetricSeriesAsync(runId, maxPointsPerKey, ct);

    public async Task<bool> DatabaseOkAsync(CancellationToken ct)
    {
        try
        {
            await using var cmd = tracker.DataSource.CreateCommand("SELECT 1");
            return await cmd.ExecuteScalarAsync(ct) is int;
        }
        catch (Exception) { return false; }
    }
}

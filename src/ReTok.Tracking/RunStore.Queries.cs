using Microsoft.EntityFrameworkCore;

namespace ReTok.Tracking;

/// <summary>Which runs to list, newest first: every given condition holds (<see cref="Experiment"/> is the experiment's name).</summary>
public sealed record RunFilter(RunStatus? Status = null, string? Kind = null, Guid? PipelineId = null, long? ExperimentId = null,
    long? ParentRunId = null, int Limit = 50, string? Experiment = null, string? Tag = null);

/// <summary>An experiment with its number of runs and of active (Running, Queued, Waiting) runs.</summary>
public sealed record ExperimentRunCounts(long Id, string Name, string? Description, DateTimeOffset CreatedAt, int Runs, int Active);

/// <summary>Reads of runs and workers: the engine's, the CLI's and the dashboard's.</summary>
public sealed partial class RunStore
{
    public Task<Run?> GetAsync(long id, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            return await db.Runs.AsNoTracking().FirstOrDefaultAsync(r => r.Id == id, t);
        }, ct);

    /// <summary>Runs with their experiment, in the order of <paramref name="ids"/>; ids without a run are left out.</summary>
    public Task<List<Run>> GetManyAsync(IReadOnlyCollection<long> ids, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            var rows = await db.Runs.AsNoTracking().Include(r => r.Experiment).Where(r => ids.Contains(r.Id)).ToDictionaryAsync(r => r.Id, t);
            return ids.Select(i => rows.GetValueOrDefault(i)).OfType<Run>().ToList();
        }, ct);

    /// <summary>The runs <paramref name="f"/> selects, with their experiment.</summary>
    public Task<List<Run>> ListAsync(RunFilter f, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            return await Filter(db, f).Include(r => r.Experiment).ToListAsync(t);
        }, ct);

    public Task<List<long>> ListIdsAsync(RunFilter f, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            return await Filter(db, f).Select(r => r.Id).ToListAsync(t);
        }, ct);

    static IQueryable<Run> Filter(TrackingDb db, RunFilter f)
    {
        var q = db.Runs.AsNoTracking();
        if (f.Status is { } s) q = q.Where(r => r.Status == s);
        if (f.Kind is { } k) q = q.Where(r => r.Kind == k);
        if (f.PipelineId is { } p) q = q.Where(r => r.PipelineId == p);
        if (f.ExperimentId is { } e) q = q.Where(r => r.ExperimentId == e);
        if (f.Experiment is { } name) q = q.Where(r => r.Experiment!.Name == name);
        if (f.Tag is { } tag) q = q.Where(r => r.Tags.Contains(tag));
        if (f.ParentRunId is { } pr) q = q.Where(r => r.ParentRunId == pr);
        return q.OrderByDescending(r => r.Id).Take(f.Limit);
    }

    /// <summary>The job kinds of all runs and up to 500 of their tags, sorted (the dashboard's filter choices).</summary>
    public Task<(List<string> Kinds, List<string> Tags)> ListKindsAndTagsAsync(CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            var kinds = await db.Runs.Select(r => r.Kind).Distinct().OrderBy(k => k).ToListAsync(t);
            var tags = await db.Database.SqlQueryRaw<string>("SELECT DISTINCT unnest(tags) AS \"Value\" FROM retok.runs ORDER BY 1 LIMIT 500").ToListAsync(t);
            return (kinds, tags);
        }, ct);

    /// <summary>Every experiment by name with its number of runs and of active (Running, Queued, Waiting) runs.</summary>
    public Task<List<ExperimentRunCounts>> ListExperimentRunCountsAsync(CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            return await db.Experiments.AsNoTracking().OrderBy(e => e.Name)
                .Select(e => new ExperimentRunCounts(e.Id, e.Name, e.Description, e.CreatedAt, e.Runs.Count,
                    e.Runs.Count(r => r.Status == RunStatus.Running || r.Status == RunStatus.Queued || r.Status == RunStatus.Waiting)))
                .ToListAsync(t);
        }, ct);

    /// <summary>Worker rows by host, then id.</summary>
    public Task<List<WorkerInfo>> ListWorkersAsync(CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            return await db.Workers.AsNoTracking().OrderBy(w => w.Host).ThenBy(w => w.Id).ToListAsync(t);
        }, ct);

    /// <summary>The newest succeeded final run (no shard, none continued by an aggregator) of a pipeline step; null if none.</summary>
    public Task<long?> FindStepRunAsync(Guid? pipelineId, string step, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            return await db.Runs.Where(x => x.PipelineId == pipelineId && x.PipelineStep == step && x.Status == RunStatus.Succeeded
                                            && x.FanInRunId == null && x.ContinuedByRunId == null)
                .OrderByDescending(x => x.Id).Select(x => (long?)x.Id).FirstOrDefaultAsync(t);
        }, ct);

    /// <summary>An aggregator's shard runs in shard order.</summary>
    public Task<List<Run>> GetShardsAsync(long aggregatorRunId, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            return await db.Runs.AsNoTracking().Where(r => r.FanInRunId == aggregatorRunId).OrderBy(r => r.ShardIndex).ToListAsync(t);
        }, ct);
}

using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace ReTok.Tracking;

/// <summary>A rank run of a node group and its status (the leader re-queues failed ones when it runs again).</summary>
public sealed record RankRun(long RunId, int Rank, RunStatus Status, string Queue);

/// <summary>What rank r &gt; 0 found when it joined: the generation rank 0 published and its opaque value.</summary>
public sealed record RendezvousJoin(long Generation, string Value);

/// <summary>
/// Multi-node groups (spec key <c>nodes: N</c>). The submitted run is rank 0; when it first executes it spawns ranks 1..N-1
/// as child runs of the same kind, parameters and (pinned) inputs. The ranks meet through <c>retok.rendezvous</c>:
/// rank 0 publishes one opaque string (a TCP address, an NCCL unique id) per execution under its lease generation, and
/// rank r joins the newest generation it has not joined before, so a retried rank never reuses a stale address or id.
/// </summary>
public sealed partial class RunStore
{
    /// <summary>
    /// Ranks 1..N-1 of the fenced rank-0 run, created once (Queued, <see cref="Run.NodeRank"/> = r, parent = rank 0, in its
    /// pipeline but in no step, so only rank 0 completes the step); later calls return the existing ones with Created false.
    /// </summary>
    public Task<(List<RankRun> Ranks, bool Created)> SpawnRanksAsync(Fence leaderFence, string inputs, CancellationToken ct = default) =>
        _t.InTransactionAsync(leaderFence, async (conn, tx, t) =>
        {
            await using var db = TrackingDb.Create(conn);
            await db.Database.UseTransactionAsync(tx, t);
            var leader = await db.Runs.FromSqlInterpolated($"SELECT * FROM retok.runs WHERE id = {leaderFence.RunId} FOR UPDATE").SingleAsync(t);
            if (leader.Nodes < 2 || leader.NodeRank != 0) throw new InvalidOperationException($"run {leader.Id} is not the rank 0 of a node group (nodes {leader.Nodes}, rank {leader.NodeRank})");
            var existing = await db.Runs.Where(r => r.ParentRunId == leader.Id && r.NodeRank > 0).OrderBy(r => r.NodeRank)
                .Select(r => new RankRun(r.Id, r.NodeRank, r.Status, r.Queue)).ToListAsync(t);
            if (existing.Count > 0) return (existing, false);
            var ranks = Enumerable.Range(1, leader.Nodes - 1).Select(rank => new Run
            {
                Kind = leader.Kind, Name = $"{leader.Name ?? $"run {leader.Id}"}/rank-{rank}", Parameters = leader.Parameters, ConfigHash = leader.ConfigHash,
                Seed = leader.Seed, CodeVersion = leader.CodeVersion, Queue = leader.Queue, Gpus = leader.Gpus, Priority = leader.Priority,
                Tags = leader.Tags.ToList(), ExperimentId = leader.ExperimentId, ParentRunId = leader.Id, PipelineId = leader.PipelineId,
                Inputs = inputs, Nodes = leader.Nodes, NodeRank = rank, Status = RunStatus.Queued, QueuedAt = DateTimeOffset.UtcNow,
            }).ToList();
            db.Runs.AddRange(ranks);
            await db.SaveChangesAsync(t);
            return (ranks.Select(r => new RankRun(r.Id, r.NodeRank, r.Status, r.Queue)).ToList(), true);
        }, ct);

    /// <summary>Rank 0 publishes <paramref name="value"/> for its current execution (generation = its lease generation); fenced.</summary>
    public Task<long> PublishRendezvousAsync(Fence rank0, string value, CancellationToken ct = default) =>
        _t.InTransactionAsync(rank0, async (c, tx, t) =>
        {
            await using var cmd = new NpgsqlCommand("""
                INSERT INTO retok.rendezvous (group_run_id, generation, rank, value, created_at) VALUES (@g, @gen, 0, @v, now())
                ON CONFLICT (group_run_id, generation, rank) DO UPDATE SET value = excluded.value, created_at = now()
                """, c, tx);
            cmd.Parameters.AddWithValue("g", rank0.RunId);
            cmd.Parameters.AddWithValue("gen", rank0.Generation);
            cmd.Parameters.AddWithValue("v", value);
            await cmd.ExecuteNonQueryAsync(t);
            return rank0.Generation;
        }, ct);

    /// <summary>
    /// Rank <paramref name="rank"/> (fenced by its own lease) joins rank 0's newest generation if it has not joined that one
    /// before, recording the join; null while there is none to join (rank 0 has not published yet, or is still in a
    /// generation this rank already used: its next execution publishes a new one).
    /// </summary>
    public Task<RendezvousJoin?> TryJoinRendezvousAsync(Fence self, long groupRunId, int rank, CancellationToken ct = default) =>
        _t.InTransactionAsync<RendezvousJoin?>(self, async (c, tx, t) =>
        {
            if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), "rank 0 publishes, ranks >= 1 join");
            await using var cmd = new NpgsqlCommand("""
                WITH latest AS (SELECT generation, value FROM retok.rendezvous WHERE group_run_id = @g AND rank = 0 ORDER BY generation DESC LIMIT 1)
                INSERT INTO retok.rendezvous (group_run_id, generation, rank, value, created_at)
                SELECT @g, latest.generation, @r, '', now() FROM latest
                ON CONFLICT (group_run_id, generation, rank) DO NOTHING
                RETURNING generation, (SELECT value FROM latest)
                """, c, tx);
            cmd.Parameters.AddWithValue("g", groupRunId);
            cmd.Parameters.AddWithValue("r", rank);
            await using var rd = await cmd.ExecuteReaderAsync(t);
            return await rd.ReadAsync(t) ? new RendezvousJoin(rd.GetInt64(0), rd.GetString(1)) : null;
        }, ct);

    /// <summary>
    /// <see cref="TryJoinRendezvousAsync"/> every <paramref name="poll"/> (default 200 ms) until a generation appears:
    /// a <see cref="TimeoutException"/> after <paramref name="timeout"/>, a <see cref="RendezvousAbandonedException"/> as
    /// soon as rank 0 has ended (nothing will be published for this execution).
    /// </summary>
    public async Task<RendezvousJoin> WaitRendezvousAsync(Fence self, long groupRunId, int rank, TimeSpan timeout, TimeSpan? poll = null, CancellationToken ct = default)
    {
        var deadline = DateTimeOffset.UtcNow + timeout;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            if (await TryJoinRendezvousAsync(self, groupRunId, rank, ct) is { } j) return j;
            var rank0 = await GetAsync(groupRunId, ct);
            if (rank0 is null || rank0.Status.IsTerminal())
                throw new RendezvousAbandonedException($"node group {groupRunId}: rank 0 is {rank0?.Status.ToString() ?? "gone"}" +
                                                       $"{(rank0?.FailureReason is { } f ? $" ({f})" : "")}; rank {rank} stops");
            if (DateTimeOffset.UtcNow >= deadline)
                throw new TimeoutException($"node group {groupRunId}: rank {rank} waited {timeout.TotalSeconds:F0} s for rank 0 (run {groupRunId}, {rank0.Status}) to publish a new rendezvous");
            await Task.Delay(poll ?? TimeSpan.FromMilliseconds(200), ct);
        }
    }

    /// <summary>The group's ranks (rank 0 first) with their status and failure reason, for failing a wait early and for `runs show`.</summary>
    public Task<List<(long RunId, int Rank, RunStatus Status, string? FailureReason)>> GetNodeGroupAsync(long groupRunId, CancellationToken ct = default) =>
        _t.RetryAsync(async t =>
        {
            await using var db = _t.CreateDb();
            var rows = await db.Runs.AsNoTracking().Where(r => r.Id == groupRunId || (r.ParentRunId == groupRunId && r.NodeRank > 0))
                .OrderBy(r => r.NodeRank).Select(r => new { r.Id, r.NodeRank, r.Status, r.FailureReason }).ToListAsync(t);
            return rows.Select(r => (r.Id, r.NodeRank, r.Status, r.FailureReason)).ToList();
        }, ct);
}

/// <summary>Rank 0 of a node group ended (failed, cancelled or done) while a rank waited to join it.</summary>
public sealed class RendezvousAbandonedException(string message) : Exception(message);

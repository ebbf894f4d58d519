using Npgsql;

namespace ReTok.Tracking;

/// <summary>
/// The webhook outbox side of the terminal transitions: each transition that ends a run (or brings a pipeline to rest)
/// inserts its webhook deliveries in its own transaction, so a committed status change always has its notification and
/// a rolled-back or lease-lost one never does. Delivery itself is <see cref="WebhookDispatcher"/>'s job.
/// <list type="bullet">
/// <item>run.succeeded / run.cancelled: not for shards, nor for a run whose aggregator continues its work (the aggregator reports);</item>
/// <item>run.failed: every run, shards included (a failed shard leaves its aggregator waiting: someone must look);</item>
/// <item>a cancel cascade reports the run that was asked to cancel, not each shard or downstream step it took with it;</item>
/// <item>pipeline.finished: when the last queued or running run of a pipeline ends (status succeeded, failed or
/// cancelled), once per coming to rest: a retried step that ends again makes it fire again.</item>
/// </list>
/// </summary>
public sealed partial class RunStore
{
    /// <summary>Those of <paramref name="ids"/> that are Queued now (before a cancel: which of them were active).</summary>
    static async Task<HashSet<long>> QueuedAmongAsync(NpgsqlConnection c, NpgsqlTransaction tx, long[] ids, CancellationToken t)
    {
        await using var cmd = new NpgsqlCommand("SELECT id FROM retok.runs WHERE id = ANY(@ids) AND status = 'Queued'", c, tx);
        cmd.Parameters.AddWithValue("ids", ids);
        await using var rd = await cmd.ExecuteReaderAsync(t);
        var set = new HashSet<long>();
        while (await rd.ReadAsync(t)) set.Add(rd.GetInt64(0));
        return set;
    }

    /// <summary>Queues the run.* deliveries of runs that have just reached their terminal status in this transaction.</summary>
    static async Task OutboxRunsAsync(NpgsqlConnection c, NpgsqlTransaction tx, long[] runIds, CancellationToken t)
    {
        if (runIds.Length == 0) return;
        await using var cmd = new NpgsqlCommand("""
            INSERT INTO retok.webhook_deliveries (subscription_id, event, run_id, pipeline_id, facts)
            SELECT w.id, ev.name, r.id, r.pipeline_id, jsonb_build_object(
                       'run_id', r.id, 'kind', r.kind, 'name', r.name, 'experiment', e.name, 'status', r.status,
                       'error', left(r.failure_reason, 1000), 'attempt', r.attempt, 'pipeline', p.name, 'pipeline_id', r.pipeline_id,
                       'step', r.pipeline_step, 'queued_at', r.queued_at, 'started_at', r.started_at, 'finished_at', r.finished_at)
            FROM retok.runs r
            JOIN retok.experiments e ON e.id = r.experiment_id
            JOIN retok.webhooks w ON w.experiment_id = r.experiment_id
            LEFT JOIN retok.pipelines p ON p.id = r.pipeline_id
            CROSS JOIN LATERAL (SELECT 'run.' || lower(r.status) AS name) ev
            WHERE r.id = ANY(@ids) AND r.status IN ('Succeeded', 'Failed', 'Cancelled') AND ev.name = ANY(w.events)
              AND (r.status = 'Failed' OR (r.fan_in_run_id IS NULL AND r.continued_by_run_id IS NULL))
            """, c, tx);
        cmd.Parameters.AddWithValue("ids", runIds);
        await cmd.ExecuteNonQueryAsync(t);
    }

    /// <summary>
    /// After a queued or running run of <paramref name="pipeline"/> ended in this transaction: if nothing of the pipeline
    /// is queued or running any more, it has come to rest, so queue its pipeline.finished deliveries. Only a transition
    /// out of Queued/Running calls this, so a pipeline comes to rest once per run that was active (cancelling a step left
    /// waiting behind a failure is no new finish, a retried step that ends again is). The pipeline row lock serialises two
    /// last runs ending together (taken after the runs' rows, in the order <see cref="SucceedAsync"/> uses): the second
    /// sees the first's outcome, the first saw the second still running, so exactly one queues the message.
    /// </summary>
    static async Task OutboxPipelineAsync(NpgsqlConnection c, NpgsqlTransaction tx, Guid pipeline, CancellationToken t)
    {
        // nobody listens: no lock, no count (the common case)
        await using (var any = new NpgsqlCommand("""
            SELECT EXISTS (SELECT 1 FROM retok.webhooks w WHERE 'pipeline.finished' = ANY(w.events) AND w.experiment_id IN (
                SELECT experiment_id FROM retok.pipelines WHERE id = @p UNION SELECT experiment_id FROM retok.runs WHERE pipeline_id = @p))
            """, c, tx))
        {
            any.Parameters.AddWithValue("p", pipeline);
            if (await any.ExecuteScalarAsync(t) is not true) return;
        }
        // A statement of its own: READ COMMITTED takes the next statement's snapshot after the lock is ours, so it sees
        // the run another transaction ended just before (one statement would count runs in its pre-lock snapshot).
        await using (var lk = new NpgsqlCommand("SELECT id FROM retok.pipelines WHERE id = @p FOR UPDATE", c, tx))
        {
            lk.Parameters.AddWithValue("p", pipeline);
            await lk.ExecuteNonQueryAsync(t);
        }
        await using var cmd = new NpgsqlCommand("""
            WITH st AS (SELECT count(*) FILTER (WHERE status IN ('Queued', 'Running')) AS active,
                               count(*) FILTER (WHERE status = 'Failed') AS failed,
                               count(*) FILTER (WHERE status = 'Succeeded') AS succeeded,
                               count(*) AS runs, min(coalesce(started_at, queued_at, created_at)) AS started, max(finished_at) AS finished,
                               min(experiment_id) AS run_experiment_id
                        FROM retok.runs WHERE pipeline_id = @p),
                 rest AS (SELECT pl.id, pl.name, coalesce(pl.experiment_id, st.run_experiment_id) AS experiment_id, st.*,
                                 CASE WHEN st.failed > 0 THEN 'Failed' WHEN st.succeeded < st.runs THEN 'Cancelled' ELSE 'Succeeded' END AS outcome
                          FROM retok.pipelines pl, st WHERE pl.id = @p AND st.active = 0)
            INSERT INTO retok.webhook_deliveries (subscription_id, event, pipeline_id, facts)
            SELECT w.id, 'pipeline.finished', rest.id, jsonb_build_object(
                       'pipeline_id', rest.id, 'pipeline', rest.name, 'experiment', e.name, 'status', rest.outcome,
                       'runs', rest.runs, 'succeeded', rest.succeeded, 'failed', rest.failed, 'started_at', rest.started, 'finished_at', rest.finished)
            FROM rest JOIN retok.webhooks w ON w.experiment_id = rest.experiment_id JOIN retok.experiments e ON e.id = w.experiment_id
            WHERE 'pipeline.finished' = ANY(w.events)
            """, c, tx);
        cmd.Parameters.AddWithValue("p", pipeline);
        await cmd.ExecuteNonQueryAsync(t);
    }

    /// <summary>The outbox rows of a transition: run.* for <paramref name="ended"/>, pipeline.finished for the pipelines of
    /// <paramref name="pipelineRuns"/> (default: the same runs; only runs that were Queued or Running) that came to rest.
    /// Returns <paramref name="result"/>.</summary>
    static async Task<T> OutboxAsync<T>(NpgsqlConnection c, NpgsqlTransaction tx, long[] ended, T result, CancellationToken t, long[]? pipelineRuns = null)
    {
        await OutboxRunsAsync(c, tx, ended, t);
        var pipelines = new List<Guid>();
        await using (var cmd = new NpgsqlCommand("SELECT DISTINCT pipeline_id FROM retok.runs WHERE id = ANY(@ids) AND pipeline_id IS NOT NULL ORDER BY 1", c, tx))
        {
            cmd.Parameters.AddWithValue("ids", pipelineRuns ?? ended);
            await using var rd = await cmd.ExecuteReaderAsync(t);
            while (await rd.ReadAsync(t)) pipelines.Add(rd.GetGuid(0));
        }
        foreach (var p in pipelines) await OutboxPipelineAsync(c, tx, p, t);
        return result;
    }
}

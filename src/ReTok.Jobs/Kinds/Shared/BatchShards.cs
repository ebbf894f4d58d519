namespace ReTok.Jobs.Kinds.Shared;

/// <summary>A shard's rows [Start, End) of its parent's data (engine-owned fan-out state of eval-reconstruction and extract-codes).</summary>
public sealed record RowRange
{
    public long Start { get; init; }
    public long End { get; init; }
}

/// <summary>The one batch-aligned split of the fan-out kinds that encode rows in batches.</summary>
public static class BatchShards
{
    /// <summary>
    /// Rows [0, count) as at most <paramref name="shards"/> ranges of whole batches: with B = ceil(count / batchSize)
    /// batches and S = min(shards, B), shard k gets batches [k*B/S, (k+1)*B/S), so every shard encodes exactly the
    /// batches a single run would and the results do not depend on the split.
    /// </summary>
    public static List<RowRange> Split(long count, int batchSize, int shards)
    {
        long batches = (count + batchSize - 1) / batchSize;
        int s = (int)Math.Min(shards, batches);
        return Enumerable.Range(0, s).Select(k => new RowRange
        {
            Start = k * batches / s * batchSize, End = Math.Min(count, (k + 1) * batches / s * batchSize),
        }).ToList();
    }
}

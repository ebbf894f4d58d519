using static TorchSharp.torch;

namespace ReTok.Models.Distributed;

/// <summary>
/// The collectives data-parallel training needs (torch.distributed's all_reduce/broadcast/barrier). One instance per
/// replica; every rank must issue the same collectives in the same order with tensors of the same shapes and dtypes.
/// </summary>
public interface ICommunicator : IDisposable
{
    int Rank { get; }
    int WorldSize { get; }
    string Backend { get; }

    /// <summary>In place: afterwards every rank's tensors[i] holds the sum over ranks of tensors[i].</summary>
    void AllReduceSum(IList<Tensor> tensors);

    /// <summary>In place: afterwards every rank's tensors[i] equals <paramref name="root"/>'s.</summary>
    void Broadcast(IList<Tensor> tensors, int root = 0);

    void Barrier();

    /// <summary>A replica failed: wake and fail every rank blocked in (or later entering) a collective, instead of hanging.</summary>
    void Abort();
}

/// <summary>`data_parallel` of a job: replica count and backend ("cpu": in-process threads; "nccl": one GPU per replica).</summary>
public sealed record DataParallelConfig(int Replicas = 1, string Backend = "cpu")
{
    public static readonly string[] Backends = { "cpu", "nccl" };

    public IEnumerable<string> Validate(long globalBatch, int gradAccumSteps)
    {
        if (Replicas < 1) yield return $"data_parallel.replicas: must be >= 1, got {Replicas}";
        else if (Replicas > 1 && gradAccumSteps >= 1 && globalBatch % ((long)Replicas * gradAccumSteps) != 0)
            yield return $"data_parallel.replicas: the global batch {globalBatch} does not split into {Replicas} replicas x {gradAccumSteps} micro-batches";
        if (!Backends.Contains(Backend)) yield return $"data_parallel.backend: '{Backend}' is not one of {string.Join(", ", Backends)}";
    }
}

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

/// <summary>`data_parallel` of a job: replica count and backend ("cpu": in-process threads; "tcp": ranks connected to rank 0
/// over TCP, across processes and machines; "nccl": one GPU per replica), and how long a rank waits for a peer.</summary>
public sealed record DataParallelConfig(int Replicas = 1, string Backend = "cpu")
{
    public static readonly string[] Backends = { "cpu", "tcp", "nccl" };

    /// <summary>Seconds a rank waits for a peer (the rendezvous, and each read or write of a collective on tcp) before it
    /// fails the step; a lost node then fails its group cleanly and the retry resumes from the checkpoint.</summary>
    public double TimeoutS { get; init; } = 600;

    public TimeSpan Timeout => TimeSpan.FromSeconds(TimeoutS);

    public IEnumerable<string> Validate(long globalBatch, int gradAccumSteps)
    {
        if (Replicas < 1) yield return $"data_parallel.replicas: must be >= 1, got {Replicas}";
        else if (Replicas > 1 && gradAccumSteps >= 1 && globalBatch % ((long)Replicas * gradAccumSteps) != 0)
            yield return $"data_parallel.replicas: the global batch {globalBatch} does not split into {Replicas} replicas x {gradAccumSteps} micro-batches";
        if (!Backends.Contains(Backend)) yield return $"data_parallel.backend: '{Backend}' is not one of {string.Join(", ", Backends)}";
        if (!(TimeoutS > 0)) yield return $"data_parallel.timeout_s: must be > 0, got {TimeoutS}";
    }

    /// <summary>What <c>nodes: N</c> adds: a backend that crosses processes, and a global batch that splits into N x replicas
    /// ranks x micro-batches.</summary>
    public IEnumerable<string> ValidateNodes(int nodes, long globalBatch, int gradAccumSteps)
    {
        if (nodes <= 1) yield break;
        foreach (var e in ValidateBackendForNodes(nodes)) yield return e;
        long split = (long)nodes * Math.Max(Replicas, 1) * Math.Max(gradAccumSteps, 1);
        if (globalBatch % split != 0)
            yield return $"data_parallel: the global batch {globalBatch} does not split into {nodes} nodes x {Math.Max(Replicas, 1)} replicas x {Math.Max(gradAccumSteps, 1)} micro-batches";
    }

    /// <summary>The backend's part of <see cref="ValidateNodes"/>, which the group's creation checks again.</summary>
    public IEnumerable<string> ValidateBackendForNodes(int nodes)
    {
        if (nodes <= 1) yield break;
        if (Backend == "cpu") yield return $"data_parallel.backend: nodes: {nodes} needs tcp or nccl (cpu replicas are threads of one process)";
        // ncclCommInitRank binds to the calling thread's current CUDA device: one process per GPU
        if (Backend == "nccl" && Replicas != 1)
            yield return $"data_parallel.replicas: backend nccl on several nodes runs one replica per rank run (replicas: 1, one rank run per GPU: nodes = total GPUs), got {Replicas}";
    }
}

/// <summary>
/// This process's place in a multi-node group (N processes, each with the config's replicas) and the out-of-band channel
/// its ranks meet through: node 0 publishes one string (the tcp address, the NCCL unique id), the others wait for it.
/// The job system provides the channel (a rendezvous through its database); nothing here knows where it comes from.
/// </summary>
public sealed record NodeGroup(int Node, int Nodes, Func<string, Task> Publish, Func<Task<string>> WaitPublished, CancellationToken Cancel = default);

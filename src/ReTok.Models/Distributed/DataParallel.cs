using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ReTok.Models.Distributed;

/// <summary>
/// DDP's pieces as plain functions. Rank r of N takes the contiguous rows [r*B/N, (r+1)*B/N) of the global batch B;
/// each rank's loss is its local mean, so the mean over ranks of the local gradients (<see cref="AverageGradients"/>) is
/// the global-batch gradient and clip + optimizer step run identically on every rank.
/// Gradients are all-reduced after the whole backward, not overlapped with it: TorchSharp exposes no per-parameter
/// post-accumulate grad hooks to launch a bucket as soon as its last gradient is ready (DDP's Reducer), and the
/// replicas here are threads or GPUs of one process where the reduction is a small part of a step.
/// </summary>
public static class DataParallel
{
    /// <summary>DDP's default bucket_cap_mb.</summary>
    public const long DefaultBucketBytes = 25L << 20;

    /// <summary>Rank <paramref name="rank"/>'s rows of a global batch (dim 0 divisible by the world size).</summary>
    public static Tensor Slice(Tensor globalBatch, int rank, int worldSize)
    {
        long b = globalBatch.shape[0];
        if (b % worldSize != 0) throw new ArgumentException($"data parallel: a global batch of {b} does not split into {worldSize} replicas");
        return worldSize == 1 ? globalBatch : globalBatch.narrow(0, rank * (b / worldSize), b / worldSize);
    }

    /// <summary>
    /// grad := mean over ranks of grad, for every parameter that has a gradient on some rank. A parameter with a gradient on
    /// some ranks only (a K-dependent token under nested dropout) gets zeros elsewhere first, as the single-replica run
    /// sees it used; one with no gradient anywhere stays null (NamedAdamW then skips it, as before). Gradients are packed
    /// into flat buckets of at most <paramref name="bucketBytes"/> per dtype and device, all-reduced in one call, unpacked.
    /// </summary>
    /// <param name="evenAlone">issue the collectives with one rank too (a no-op numerically; `retok bench allreduce` times
    /// NCCL's cost that way on a single GPU).</param>
    public static void AverageGradients(IReadOnlyList<Parameter> parameters, ICommunicator comm, long bucketBytes = DefaultBucketBytes, bool evenAlone = false)
    {
        if ((comm.WorldSize == 1 && !evenAlone) || parameters.Count == 0) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var ps = parameters.Where(p => p.requires_grad).ToList();
        var present = tensor(ps.Select(p => p.grad is null ? 0f : 1f).ToArray()).to(ps[0].device);
        comm.AllReduceSum(new[] { present });
        var anywhere = present.cpu().data<float>().ToArray();
        var grads = new List<Tensor>();
        for (int i = 0; i < ps.Count; i++)
        {
            if (anywhere[i] == 0) continue;
            if (ps[i].grad is null) ps[i].grad = zeros_like(ps[i]).DetachFromDisposeScope();
            grads.Add(ps[i].grad!);
        }
        var buckets = Buckets(grads, bucketBytes);
        var flats = buckets.Select(bk => cat(bk.Select(g => g.reshape(-1)).ToArray())).ToList();
        comm.AllReduceSum(flats);
        for (int i = 0; i < buckets.Count; i++)
        {
            flats[i].div_(comm.WorldSize);
            long off = 0;
            foreach (var g in buckets[i])
            {
                g.copy_(flats[i].narrow(0, off, g.numel()).view_as(g));
                off += g.numel();
            }
        }
    }

    /// <summary>Consecutive tensors of one dtype and device, each group closed once it reaches the cap (a larger tensor gets its own).</summary>
    public static List<List<Tensor>> Buckets(IEnumerable<Tensor> tensors, long bucketBytes = DefaultBucketBytes)
    {
        var result = new List<List<Tensor>>();
        foreach (var group in tensors.GroupBy(t => (t.dtype, t.device.ToString())))
        {
            List<Tensor>? cur = null;
            long bytes = 0;
            foreach (var t in group)
            {
                if (cur is null || bytes >= bucketBytes) { cur = new(); result.Add(cur); bytes = 0; }
                cur.Add(t);
                bytes += t.numel() * t.ElementSize;
            }
        }
        return result;
    }

    /// <summary>Every rank starts from rank 0's parameters and buffers (DDP's construction-time broadcast).</summary>
    public static void BroadcastState(nn.Module module, ICommunicator comm)
    {
        if (comm.WorldSize == 1) return;
        comm.Broadcast(module.state_dict().Values.ToList());
    }

    /// <summary>Mean over ranks of per-rank scalars (the logged losses), reduced in float64 on <paramref name="device"/>.</summary>
    public static double[] Mean(ICommunicator comm, Device device, params double[] values)
    {
        if (comm.WorldSize == 1) return values;
        using var t = tensor(values, float64).to(device);
        comm.AllReduceSum(new[] { t });
        return t.cpu().data<double>().Select(v => v / comm.WorldSize).ToArray();
    }

    /// <summary>
    /// Run <paramref name="body"/>(rank) on one dedicated thread per rank and return the results by rank. A rank that throws
    /// aborts its communicator so the others fail out of their collectives instead of waiting forever; the first real
    /// error (not an abort) is rethrown. Each rank's thread computes with the caller's intra-op thread count (a fresh
    /// thread would otherwise take libtorch's process-wide default, which another run may have changed; see
    /// <see cref="TorchThreads"/>).
    /// </summary>
    public static T[] Run<T>(IReadOnlyList<ICommunicator> comms, Func<int, T> body)
    {
        if (comms.Count == 1) return new[] { body(0) };
        var results = new T[comms.Count];
        var errors = new Exception?[comms.Count];
        int intraOp = get_num_threads();
        var threads = Enumerable.Range(0, comms.Count).Select(r => new Thread(() =>
        {
            TorchThreads.SetOnFreshThread(intraOp);   // not the process-wide default a fresh thread would start from
            try { results[r] = body(r); }
            catch (Exception e) { errors[r] = e; comms[r].Abort(); }
        }, maxStackSize: 64 << 20) { IsBackground = true, Name = $"replica-{r}" }).ToList();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        var first = errors.FirstOrDefault(e => e is not null and not OperationCanceledException) ?? errors.FirstOrDefault(e => e is not null);
        if (first is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(first).Throw();
        return results;
    }

    /// <summary>One communicator per rank for <paramref name="config"/>: CPU rendezvous, tcp over loopback, or NCCL over cuda:0..N-1.</summary>
    public static IReadOnlyList<ICommunicator> CreateGroup(DataParallelConfig config) => config.Backend switch
    {
        "cpu" => CpuCommunicator.CreateGroup(config.Replicas),
        "tcp" => TcpGroupAsync(config.Replicas, 0, config.Replicas, config.Timeout, "127.0.0.1", null).GetAwaiter().GetResult(),   // nothing to await: no publish
        "nccl" => NcclCommunicator.CreateInProcessGroup(Enumerable.Range(0, config.Replicas).ToArray()),
        _ => throw new ArgumentException($"data_parallel.backend: '{config.Backend}' is not one of {string.Join(", ", DataParallelConfig.Backends)}"),
    };

    /// <summary>
    /// Every rank of every node meets here once more: rank 0 calls it after registering the outputs, the others before
    /// they return, so no rank run succeeds while rank 0 may still fail (its retry would wait for a rank that is done).
    /// </summary>
    public static void FinalBarrier(IReadOnlyList<ICommunicator> comms) => Run(comms, k => { comms[k].Barrier(); return 0; });

    /// <summary>
    /// This node's communicators in a multi-node group: global ranks node·R .. node·R + R - 1 of N·R (R = replicas), so
    /// <see cref="Slice"/> by the communicator's rank and world size gives every rank its rows of the global batch. Node 0
    /// publishes the tcp address or the NCCL unique id (base64) through <paramref name="node"/>'s channel; the others wait
    /// for it; a missing peer fails within the config's timeout.
    /// </summary>
    public static async Task<IReadOnlyList<ICommunicator>> CreateGroupAsync(DataParallelConfig config, NodeGroup node, IReadOnlyList<Device> devices)
    {
        if (config.ValidateBackendForNodes(node.Nodes).FirstOrDefault() is { } bad) throw new ArgumentException(bad);
        int r = config.Replicas, world = node.Nodes * r, first = node.Node * r;
        switch (config.Backend)
        {
            case "tcp":
                if (node.Node == 0) return await TcpGroupAsync(r, 0, world, config.Timeout, null, node.Publish, ct: node.Cancel);
                var address = await node.WaitPublished();
                return await TcpGroupAsync(r, first, world, config.Timeout, null, null, address, node.Cancel);
            case "nccl":
                string id;
                if (node.Node == 0) await node.Publish(id = Convert.ToBase64String(NcclCommunicator.GetUniqueId()));
                else id = await node.WaitPublished();
                return new ICommunicator[] { NcclCommunicator.InitRank(Convert.FromBase64String(id), first, world, devices[0]) };
            default:
                throw new ArgumentException($"data_parallel.backend: '{config.Backend}' is not a multi-node backend");
        }
    }

    /// <summary>Local ranks first..first+count-1 of a tcp group; rank 0 (when first is 0) listens and publishes, all connect
    /// concurrently. Awaited, never blocked on: a job may run on a thread its awaits return to (TorchThreads.RunAsync).</summary>
    static async Task<IReadOnlyList<ICommunicator>> TcpGroupAsync(int count, int first, int world, TimeSpan timeout, string? advertise, Func<string, Task>? publish, string? address = null,
        CancellationToken ct = default)
    {
        TcpCommunicator.Host? host = null;
        try
        {
            if (first == 0)
            {
                host = TcpCommunicator.Listen(world, timeout, advertise);
                address = host.Address;
                if (publish is not null) await publish(address).ConfigureAwait(false);
            }
            var joins = Enumerable.Range(first, count).Select(g => g == 0
                ? Task.Factory.StartNew(() => (ICommunicator)host!.Accept(ct), TaskCreationOptions.LongRunning)
                : Task.Factory.StartNew(() => (ICommunicator)TcpCommunicator.Connect(address!, g, world, timeout), TaskCreationOptions.LongRunning)).ToArray();
            try { await Task.WhenAll(joins).ConfigureAwait(false); }   // no context: CreateGroup blocks on this
            catch
            {
                foreach (var j in joins.Where(j => j.IsCompletedSuccessfully)) j.Result.Dispose();
                throw;
            }
            return joins.Select(j => j.Result).ToList();
        }
        finally { host?.Dispose(); }
    }
}

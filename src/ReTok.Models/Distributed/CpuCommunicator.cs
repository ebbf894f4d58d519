using static TorchSharp.torch;

namespace ReTok.Models.Distributed;

/// <summary>
/// N in-process replicas (one thread each) meeting at a shared rendezvous. The reduction runs once, on the last rank to
/// arrive, and always sums in rank order 0..N-1, so the result is bit-identical whatever the thread timing. Tensors may
/// live on any device (the sum runs on rank 0's); this is the CPU test bed of the NCCL path, not a fast backend.
/// </summary>
public sealed class CpuCommunicator : ICommunicator
{
    private readonly Rendezvous rv;
    public int Rank { get; }
    public int WorldSize => rv.Size;
    public string Backend => "cpu";

    private CpuCommunicator(Rendezvous rv, int rank) => (this.rv, Rank) = (rv, rank);

    /// <summary>The communicators of one group, index = rank; hand one to each replica thread.</summary>
    public static IReadOnlyList<CpuCommunicator> CreateGroup(int worldSize)
    {
        if (worldSize < 1) throw new ArgumentException($"world size must be >= 1, got {worldSize}");
        var rv = new Rendezvous(worldSize);
        return Enumerable.Range(0, worldSize).Select(r => new CpuCommunicator(rv, r)).ToList();
    }

    public void AllReduceSum(IList<Tensor> tensors)
    {
        if (WorldSize == 1) return;
        var sums = (Tensor[])rv.Exchange(Rank, tensors, all =>
        {
            using var _ = no_grad();
            var lists = all.Cast<IList<Tensor>>().ToArray();
            return Enumerable.Range(0, lists[0].Count).Select(i =>
            {
                var acc = lists[0][i].detach().clone();
                for (int r = 1; r < lists.Length; r++) acc.add_(lists[r][i].to(acc.device)); // rank order: deterministic
                return acc.DetachFromDisposeScope();
            }).ToArray();
        });
        using (no_grad())
            for (int i = 0; i < tensors.Count; i++) tensors[i].copy_(sums[i]);
        rv.Exchange(Rank, null, _ => null); // every rank has copied: the sums can go
        if (Rank == 0) foreach (var s in sums) s.Dispose();
    }

    public void Broadcast(IList<Tensor> tensors, int root = 0)
    {
        if (WorldSize == 1) return;
        var src = (IList<Tensor>)rv.Exchange(Rank, tensors, all => all[root])!;
        if (Rank != root)
            using (no_grad())
                for (int i = 0; i < tensors.Count; i++) tensors[i].copy_(src[i]);
        rv.Exchange(Rank, null, _ => null); // root's tensors are not modified before everyone has read them
    }

    public void Barrier()
    {
        if (WorldSize > 1) rv.Exchange(Rank, null, _ => null);
    }

    public void Abort() => rv.Abort();

    public void Dispose() { }

    /// <summary>Generation-counted meeting point: the last of N arrivals combines the N payloads and releases the rest.</summary>
    private sealed class Rendezvous(int size)
    {
        public int Size { get; } = size;
        private readonly object gate = new();
        private readonly object?[] slots = new object?[size];
        private int arrived;
        private long generation;
        private object? result;
        private Exception? failure;
        private bool aborted;

        public object? Exchange(int rank, object? payload, Func<object?[], object?> combine)
        {
            lock (gate)
            {
                if (aborted) throw Aborted();
                long gen = generation;
                slots[rank] = payload;
                if (++arrived == Size)
                {
                    // the waiters cannot start the next collective before reading this result: it needs this rank too
                    try { result = combine(slots); failure = null; }
                    catch (Exception e) { result = null; failure = e; }
                    Array.Clear(slots);
                    arrived = 0;
                    generation++;
                    Monitor.PulseAll(gate);
                }
                else
                    while (generation == gen)
                    {
                        if (aborted) throw Aborted();
                        Monitor.Wait(gate);
                    }
                if (failure is not null) throw new InvalidOperationException($"collective failed on rank {rank}: {failure.Message}", failure);
                return result;
            }
        }

        public void Abort()
        {
            lock (gate) { aborted = true; Monitor.PulseAll(gate); }
        }

        private static OperationCanceledException Aborted() => new("data parallel: another replica failed, this collective was aborted");
    }
}

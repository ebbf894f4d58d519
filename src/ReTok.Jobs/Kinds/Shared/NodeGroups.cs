using ReTok.Engine;
using ReTok.Models.Distributed;
using static TorchSharp.torch;

namespace ReTok.Jobs.Kinds.Shared;

/// <summary>
/// The data-parallel communicators of a training run: the in-process group of <c>data_parallel.replicas</c>, or, for a run
/// with spec key <c>nodes: N</c>, this rank run's part of the N-node group, meeting its peers through the engine's
/// rendezvous (rank 0 publishes the tcp address or NCCL unique id on the run; the others wait for it).
/// </summary>
public static class NodeGroups
{
    /// <summary>Null for a single replica on a single node (the plain code path).</summary>
    public static async Task<IReadOnlyList<ICommunicator>?> CommunicatorsAsync(JobContext ctx, DataParallelConfig dp, IReadOnlyList<Device> devices)
    {
        if (ctx.Nodes == 1) return dp.Replicas > 1 ? DataParallel.CreateGroup(dp) : null;
        // a spec's nodes were checked at submit (IMultiNodeParams); this guards runs made some other way
        if (dp.ValidateBackendForNodes(ctx.Nodes).FirstOrDefault() is { } bad) throw new JobFailedException(bad);
        var group = new NodeGroup(ctx.NodeRank, ctx.Nodes, ctx.PublishRendezvousAsync, () => ctx.WaitRendezvousAsync(dp.Timeout), ctx.CancellationToken);
        var comms = await DataParallel.CreateGroupAsync(dp, group, devices);
        ctx.Log($"node {ctx.NodeRank} of {ctx.Nodes}: global ranks {comms[0].Rank}..{comms[^1].Rank} of {comms[0].WorldSize} ({dp.Backend})");
        return comms;
    }

    /// <summary>A multi-node run's last collective (<see cref="DataParallel.FinalBarrier"/>): rank 0 after its outputs are
    /// registered, the other ranks before they return; nothing on a single node.</summary>
    public static void Finish(JobContext ctx, IReadOnlyList<ICommunicator>? comms)
    {
        if (ctx.Nodes > 1 && comms is not null) DataParallel.FinalBarrier(comms);
    }
}

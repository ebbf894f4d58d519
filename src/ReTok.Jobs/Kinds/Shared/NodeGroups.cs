using ReTok.Engine;
using ReTok.Models;
using ReTok.Models.Distributed;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Jobs.Kinds.Shared;

/// <summary>
/// The data-parallel communicators of a training run: the in-process group of <c>data_parallel.replicas</c>, or, for a run
/// with spec key <c>nodes: N</c>, this rank run's part of the N-node group, meeting its peers through the engine's
/// rendezvous (rank 0 publishes the tcp address or NCCL unique id on the run; the others wait for it).
/// </summary>
public static class NodeGroups
{
    /// <summary>
    /// The device of each of this run's <c>data_parallel.replicas</c>: with nccl in use (several replicas or several nodes)
    /// replica r takes the run's r-th leased GPU, otherwise every replica runs on the job's device (threads of this process).
    /// </summary>
    public static Device[] ReplicaDevices(JobContext ctx, DataParallelConfig dp, Device device)
    {
        int n = dp.Replicas;
        bool nccl = dp.Backend == "nccl" && (n > 1 || ctx.Nodes > 1);
        if (nccl && device.type != DeviceType.CUDA)
            throw new JobFailedException($"data_parallel.backend nccl needs a CUDA device, the job runs on {device}");
        if (nccl && ctx.Devices.Count < n)
            throw new JobFailedException($"data_parallel: {n} nccl replicas need {n} devices, the run leased {ctx.Devices.Count} ({string.Join(", ", ctx.Devices)}): add gpus: {n} to the spec");
        return Enumerable.Range(0, n).Select(r => nccl ? Devices.Resolve(ctx.Devices[r]) : device).ToArray();
    }

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

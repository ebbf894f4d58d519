using ReTok.Models.Distributed;
using static TorchSharp.torch;

namespace ReTok.Tests.Distributed;

public class CommunicatorTests
{
    [Fact]
    public void CpuAllReduceSumsInRankOrderAndBroadcastCopiesRoot()
    {
        var comms = CpuCommunicator.CreateGroup(3);
        // values whose float32 sum depends on the order: rank order 0,1,2 gives (1e8 + 1) - 1e8 = 0 in fp32 (8 is not representable)
        var vals = new[] { 1e8f, 1f, -1e8f };
        for (int trial = 0; trial < 5; trial++)
        {
            var outs = DataParallel.Run(comms, r =>
            {
                Thread.Sleep((2 - r) * trial); // later ranks arrive first: timing must not matter
                var t = full(new long[] { 4 }, vals[r]);
                var u = full(new long[] { 2, 2 }, (double)r, dtype: float64);
                comms[r].AllReduceSum(new[] { t, u });
                var b = full(new long[] { 3 }, (float)(10 * r));
                comms[r].Broadcast(new[] { b }, root: 1);
                comms[r].Barrier();
                return (t[0].item<float>(), u.sum().item<double>(), b.sum().item<float>());
            });
            foreach (var o in outs) Assert.Equal((((1e8f + 1f) + -1e8f), 12.0, 30f), o);
        }
    }

    [Fact]
    public void AFailingReplicaAbortsTheOthersInsteadOfHanging()
    {
        var comms = CpuCommunicator.CreateGroup(2);
        var e = Assert.Throws<InvalidOperationException>(() => DataParallel.Run(comms, r =>
        {
            if (r == 1) throw new InvalidOperationException("replica 1 broke");
            comms[r].Barrier(); // would wait forever for rank 1
            return 0;
        }));
        Assert.Equal("replica 1 broke", e.Message);
    }

    [Fact]
    public void AverageGradientsIsTheMeanOverRanksAndFillsGradsMissingOnSomeRanks()
    {
        var comms = CpuCommunicator.CreateGroup(2);
        var grads = DataParallel.Run(comms, r =>
        {
            var ps = new[] { new TorchSharp.Modules.Parameter(zeros(3, 2)), new TorchSharp.Modules.Parameter(zeros(5)), new TorchSharp.Modules.Parameter(zeros(2)), new TorchSharp.Modules.Parameter(zeros(7)) };
            ps[0].grad = full(new long[] { 3, 2 }, r + 1.0f);
            ps[1].grad = arange(5, dtype: float32) * (r + 1);
            if (r == 0) ps[2].grad = ones(2);   // used on rank 0 only (a K-dependent token)
            // ps[3]: no gradient on any rank stays null
            DataParallel.AverageGradients(ps, comms[r], bucketBytes: 16); // tiny buckets: several per call
            return ps.Select(p => p.grad?.clone()).ToArray();
        });
        foreach (var g in grads)
        {
            Assert.Equal(1.5f, g[0]!.mean().item<float>());
            Assert.Equal(new[] { 0f, 1.5f, 3f, 4.5f, 6f }, g[1]!.data<float>().ToArray());
            Assert.Equal(new[] { 0.5f, 0.5f }, g[2]!.data<float>().ToArray());
            Assert.Null(g[3]);
        }
    }

    [Fact]
    public void BucketsGroupByDtypeAndCloseAtTheCap()
    {
        var ts = new[] { zeros(4), zeros(4), zeros(4, dtype: float64), zeros(100), zeros(2) };
        var b = DataParallel.Buckets(ts, bucketBytes: 32);
        // float32: [4,4] reaches 32 bytes, then [100] alone (over the cap), then [2]; float64 its own
        Assert.Equal(new[] { 2, 1, 1, 1 }, b.Select(x => x.Count).ToArray());
        Assert.Throws<ArgumentException>(() => DataParallel.Slice(zeros(5, 2), 0, 2));
        Assert.Equal(new long[] { 2, 3 }, DataParallel.Slice(arange(12).view(4, 3), 1, 2).shape);
        Assert.Equal(6L, DataParallel.Slice(arange(12).view(4, 3), 1, 2)[0, 0].item<long>());
    }

    [Fact]
    public void MissingNcclNamesTheLibraryAndHowToGetIt()
    {
        var e = Assert.Throws<DllNotFoundException>(() => NcclNative.Load(new[] { "/nonexistent/libnccl.so.2", "libnccl-does-not-exist.so.2" }));
        Assert.Contains("libnccl.so.2", e.Message);
        Assert.Contains("/nonexistent/libnccl.so.2", e.Message);
        Assert.Contains("pip install nvidia-nccl-cu12", e.Message);
        Assert.Contains("NCCL_LIBRARY", e.Message);
        Assert.Contains("nvidia/nccl/lib", e.Message);
        var errors = new DataParallelConfig(3, "gloo").Validate(globalBatch: 8, gradAccumSteps: 2).ToList();
        Assert.Equal(2, errors.Count);
        Assert.Empty(new DataParallelConfig(2, "nccl").Validate(8, 2));
    }
}

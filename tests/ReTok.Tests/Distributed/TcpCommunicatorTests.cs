using System.Diagnostics;
using ReTok.Models.Distributed;
using static TorchSharp.torch;

namespace ReTok.Tests.Distributed;

/// <summary>The cross-process tcp backend over loopback: the same bits as the in-process cpu backend, and a lost peer is
/// an error within the timeout, never a hang.</summary>
public class TcpCommunicatorTests
{
    static IReadOnlyList<ICommunicator> Tcp(int n, double timeoutS = 20) => DataParallel.CreateGroup(new DataParallelConfig(n, "tcp") { TimeoutS = timeoutS });

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void SumsBroadcastAndBarrierMatchTheCpuBackendBitForBit(int n)
    {
        // per rank: fp32 values over many magnitudes (their sum depends on the order), fp64 and int64
        Tensor[] Inputs(int r)
        {
            var g = new Generator((ulong)(100 + r));
            return [randn(new long[] { 257 }, generator: g) * pow(10f, randint(-6, 7, new long[] { 257 }, generator: g).to(float32)),
                randn(new long[] { 3, 5 }, dtype: float64, generator: g), randint(-1000, 1000, new long[] { 7 }, int64, generator: g)];
        }
        Tensor[][] Run(IReadOnlyList<ICommunicator> comms) => DataParallel.Run(comms, r =>
        {
            var ts = Inputs(r);
            comms[r].AllReduceSum(ts);
            var b = full(new long[] { 4 }, 10f * r);
            comms[r].Broadcast(new[] { b }, root: n - 1);   // root != 0 is relayed through rank 0
            comms[r].Barrier();
            var ps = new[] { new TorchSharp.Modules.Parameter(zeros(6)), new TorchSharp.Modules.Parameter(zeros(2, 3)) };
            ps[0].grad = Inputs(r)[0].narrow(0, 0, 6);
            if (r == 0) ps[1].grad = ones(2, 3);   // a gradient on rank 0 only
            DataParallel.AverageGradients(ps, comms[r], bucketBytes: 16);
            return ts.Append(b).Append(ps[0].grad!).Append(ps[1].grad!).ToArray();
        });
        var cpu = Run(CpuCommunicator.CreateGroup(n));
        var comms = Tcp(n);
        try
        {
            Assert.Equal(Enumerable.Range(0, n), comms.Select(c => c.Rank));
            Assert.All(comms, c => Assert.Equal("tcp", c.Backend));
            var tcp = Run(comms);
            for (int r = 0; r < n; r++)
                for (int i = 0; i < cpu[r].Length; i++)
                    Assert.True(cpu[r][i].dtype == tcp[r][i].dtype && cpu[r][i].eq(tcp[r][i]).all().item<bool>(), $"rank {r} tensor {i}: tcp differs from cpu");
            Assert.Equal(10f * (n - 1), tcp[0][3][0].item<float>());
        }
        finally { foreach (var c in comms) c.Dispose(); }
    }

    [Fact]
    public void APeerThatDiesFailsTheOthersWithinTheTimeout()
    {
        var comms = Tcp(3, timeoutS: 30);
        var sw = Stopwatch.StartNew();
        var errors = new Exception?[3];
        var threads = Enumerable.Range(0, 3).Select(r => new Thread(() =>
        {
            try
            {
                if (r == 2) { comms[r].Dispose(); return; }   // its process ended: the connection closes
                comms[r].AllReduceSum(new[] { ones(4) });
            }
            catch (Exception e) { errors[r] = e; comms[r].Dispose(); }   // as a failing job disposes its communicators
        })).ToList();
        threads.ForEach(t => t.Start());
        Assert.All(threads, t => Assert.True(t.Join(TimeSpan.FromSeconds(20)), "a rank hung"));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"took {sw.Elapsed}: a closed connection must fail at once, not after the timeout");
        var e0 = Assert.IsType<IOException>(errors[0]);
        Assert.Contains("tcp rank 0", e0.Message);
        Assert.Contains("rank 2 closed the connection", e0.Message);
        Assert.Contains("rank 0 closed the connection", Assert.IsType<IOException>(errors[1]).Message);
    }

    [Fact]
    public void ASilentPeerIsATimeoutNamingIt()
    {
        var comms = Tcp(2, timeoutS: 1.5);
        try
        {
            var sw = Stopwatch.StartNew();
            // rank 1 is alive but never enters the collective (a hung process)
            var e = Assert.Throws<TimeoutException>(() => comms[0].AllReduceSum(new[] { ones(3) }));
            Assert.InRange(sw.Elapsed.TotalSeconds, 1.0, 10);
            Assert.Contains("tcp rank 0: no progress from rank 1", e.Message);
            Assert.Contains("data_parallel.timeout_s", e.Message);
        }
        finally { foreach (var c in comms) c.Dispose(); }
    }

    [Fact]
    public void AStaleAddressIsRefusedAndRankZeroNamesTheMissingRank()
    {
        using var host = TcpCommunicator.Listen(2, TimeSpan.FromSeconds(2), "127.0.0.1");
        var stale = host.Address[..(host.Address.LastIndexOf('/') + 1)] + new string('0', 32);   // an older generation's token
        var accept = Task.Run(() => host.Accept());
        var join = Assert.Throws<IOException>(() => TcpCommunicator.Connect(stale, 1, 2, TimeSpan.FromSeconds(5)));
        Assert.Contains("closed the connection", join.Message);
        var e = Assert.Throws<AggregateException>(() => accept.Wait(TimeSpan.FromSeconds(10))).InnerException;
        Assert.Contains("tcp rank 0: ranks 1 did not connect", Assert.IsType<TimeoutException>(e).Message);
        Assert.Throws<ArgumentException>(() => TcpCommunicator.Connect("no-port/abc", 1, 2, TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public void RankZeroStopsWaitingForRanksWhenTheRunIsCancelled()
    {
        using var host = TcpCommunicator.Listen(3, TimeSpan.FromSeconds(60), "127.0.0.1");
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var sw = Stopwatch.StartNew();
        Assert.ThrowsAny<OperationCanceledException>(() => host.Accept(cts.Token));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"took {sw.Elapsed}");
    }

    [Fact]
    public void TimeoutAndBackendAreValidated()
    {
        Assert.Empty(new DataParallelConfig(2, "tcp").Validate(4, 1));
        Assert.Contains(new DataParallelConfig(2, "tcp") { TimeoutS = 0 }.Validate(4, 1), e => e.StartsWith("data_parallel.timeout_s: must be > 0"));
    }
}

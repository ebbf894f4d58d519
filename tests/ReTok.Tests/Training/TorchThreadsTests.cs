using System.Collections.Concurrent;
using ReTok.Models;
using ReTok.Models.Distributed;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace ReTok.Tests.Training;

/// <summary>
/// libtorch's intra-op thread count (OpenMP build): per OS thread, plus a process-wide default that a thread copies on
/// its first parallel op. <see cref="TorchThreads.RunAsync(int?, Func{Task})"/> makes it a setting of one run, and
/// <see cref="DataParallel.Run"/>'s replica threads follow their caller. Runs alone: it moves the process-wide default
/// while it runs.
/// </summary>
[Collection("GlobalCpuGenerator")]
public sealed class TorchThreadsTests(ITestOutputHelper log)
{
    static int OnFreshThread(Func<int> f)
    {
        int v = 0;
        var t = new Thread(() => v = f());
        t.Start();
        t.Join();
        return v;
    }

    /// <summary>A long-lived thread that initialised its count before the test changed anything (like a worker's pool thread).</summary>
    sealed class OtherThread : IDisposable
    {
        readonly BlockingCollection<(Func<int> F, TaskCompletionSource<int> Done)> _work = new();
        readonly Thread _t;

        public OtherThread()
        {
            _t = new Thread(() =>
            {
                foreach (var (f, done) in _work.GetConsumingEnumerable()) done.SetResult(f());
            }) { IsBackground = true };
            _t.Start();
        }

        public int Run(Func<int> f)
        {
            var done = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            _work.Add((f, done));
            return done.Task.GetAwaiter().GetResult();
        }

        public void Dispose()
        {
            _work.CompleteAdding();
            _t.Join();
        }
    }

    [Fact]
    public async Task CountIsTheRunsAndRestoredAfterwards()
    {
        using var other = new OtherThread();
        int otherBefore = other.Run(get_num_threads);
        int defaultBefore = OnFreshThread(get_num_threads);
        int n = defaultBefore + 1;
        log.WriteLine($"before: other thread {otherBefore}, fresh thread {defaultBefore}; the run asks for {n}");

        int inside = 0, afterAwait = 0, otherDuring = 0, freshDuring = 0, thread0 = 0, thread1 = 0;
        int[] replicas = Array.Empty<int>();
        await TorchThreads.RunAsync(n, async () =>
        {
            thread0 = Environment.CurrentManagedThreadId;
            inside = get_num_threads();
            await Task.Delay(20);   // the continuation comes back to the run's thread
            thread1 = Environment.CurrentManagedThreadId;
            afterAwait = get_num_threads();
            otherDuring = other.Run(get_num_threads);
            freshDuring = OnFreshThread(get_num_threads);
            var comms = CpuCommunicator.CreateGroup(2);
            replicas = DataParallel.Run(comms, _ => get_num_threads());
            foreach (var c in comms) c.Dispose();
        });
        log.WriteLine($"run thread {thread0} -> {thread1} after an await: {inside} -> {afterAwait}; other thread {otherDuring}, fresh thread {freshDuring}, replicas {string.Join(", ", replicas)}");
        Assert.Equal(thread0, thread1);
        Assert.Equal(n, inside);
        Assert.Equal(n, afterAwait);
        Assert.Equal(otherBefore, otherDuring);   // per thread: a thread that already computed keeps its count
        Assert.Equal(new[] { n, n }, replicas);
        Assert.Equal(defaultBefore, freshDuring);  // the process-wide default is not the run's: other runs' new threads keep theirs

        int otherAfter = other.Run(get_num_threads), defaultAfter = OnFreshThread(get_num_threads);
        log.WriteLine($"after: other thread {otherAfter}, fresh thread {defaultAfter}");
        Assert.Equal(otherBefore, otherAfter);
        Assert.Equal(defaultBefore, defaultAfter);
    }

    [Fact]
    public async Task ConcurrentRunsEachGetTheirCount_AndLeaveTheDefaultAsItWas()
    {
        // each run sets its count and puts the default back; a run that read the default inside another's window put back
        // the wrong one (two tokenizer runs with torch_threads 1 in one worker process once left the default at 1)
        int defaultBefore = OnFreshThread(get_num_threads);
        var asked = Enumerable.Range(0, 64).Select(i => defaultBefore + 1 + i % 2).ToArray();
        var seen = await Task.WhenAll(asked.Select(n => TorchThreads.RunAsync(n, async () => { await Task.Yield(); return get_num_threads(); })));
        Assert.Equal(asked, seen);
        Assert.Equal(defaultBefore, OnFreshThread(get_num_threads));
    }

    [Fact]
    public async Task RunReturnsTheBodysResultAndException()
    {
        Assert.Equal(42, await TorchThreads.RunAsync(1, async () => { await Task.Yield(); return 42; }));
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => TorchThreads.RunAsync(1, async () =>
        {
            await Task.Delay(5);
            throw new InvalidOperationException("from the body");
        }));
        Assert.Equal("from the body", e.Message);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => TorchThreads.RunAsync(1, () => Task.Delay(1000, cts.Token)));
    }

    [Fact]
    public void ReplicaThreadsFollowTheCallerNotTheProcessDefault()
    {
        using var caller = new OtherThread();
        int callerCount = caller.Run(get_num_threads);
        int moved = callerCount + 1;
        OnFreshThread(() => { set_num_threads(moved); return 0; });   // another run moved the process default
        try
        {
            Assert.Equal(moved, OnFreshThread(get_num_threads));
            var replicas = caller.Run(() =>
            {
                var comms = CpuCommunicator.CreateGroup(2);
                var r = DataParallel.Run(comms, _ => get_num_threads());
                foreach (var c in comms) c.Dispose();
                return r[0] * 1000 + r[1];
            });
            Assert.Equal(callerCount * 1000 + callerCount, replicas);
            Assert.Equal(moved, OnFreshThread(get_num_threads));   // Run put the default back to what it found
        }
        finally { OnFreshThread(() => { set_num_threads(callerCount); return 0; }); }
    }
}

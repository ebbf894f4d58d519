using System.Collections.Concurrent;
using TorchSharp;

namespace ReTok.Models;

/// <summary>
/// libtorch's intra-op thread count as a setting of one piece of work instead of the process. With OpenMP (the
/// libtorch-cpu build) <c>torch.set_num_threads</c> sets the calling OS thread's OpenMP thread count (and MKL's
/// thread-local one) and a process-wide default that every thread not yet initialised copies on its first parallel op;
/// threads already initialised keep theirs. Called from async code it therefore lands on whichever pool thread ran that
/// part, and leaks into whatever runs there (or starts a thread) later: the same job then reduces in an order that
/// depends on what ran before it in the process.
/// </summary>
public static class TorchThreads
{
    /// <summary>
    /// Runs <paramref name="body"/> on a dedicated thread whose intra-op thread count is <paramref name="threads"/>; its
    /// continuations come back to that thread (a single-thread synchronization context), so every synchronous part of
    /// the body computes with that count. The process-wide default is put back as soon as the count is set, so no other
    /// thread's count changes, fresh ones included; threads the body starts itself get the default, except the
    /// data-parallel replicas, which copy their caller's count explicitly. Null: runs <paramref name="body"/> as it is,
    /// with the caller's count.
    /// </summary>
    public static Task RunAsync(int? threads, Func<Task> body) => RunAsync<object?>(threads, async () => { await body(); return null; });

    /// <inheritdoc cref="RunAsync(int?, Func{Task})"/>
    public static Task<T> RunAsync<T>(int? threads, Func<Task<T>> body)
    {
        if (threads is not int n) return body();
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(threads), threads, "the intra-op thread count must be >= 1");
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            var context = new SingleThreadContext();
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                // the default put back at once: a train-generator resume came out different from its uninterrupted run
                // while a tokenizer job with torch_threads 1 ran beside it; this thread keeps n, replicas copy it explicitly
                SetOnFreshThread(n);
                Task<T> task;
                try { task = body(); }
                catch (Exception e) { task = Task.FromException<T>(e); }
                task.ContinueWith(_ => context.Complete(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                context.RunUntilComplete();
                try { done.TrySetResult(task.GetAwaiter().GetResult()); }
                catch (OperationCanceledException e) { done.TrySetCanceled(e.CancellationToken); }
                catch (Exception e) { done.TrySetException(e); }
            }
            catch (Exception e) { done.TrySetException(e); }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(null);
            }
        }, maxStackSize: 64 << 20) { IsBackground = true, Name = $"torch-{n}-threads" };
        thread.Start();
        return done.Task;
    }

    static readonly object DefaultGate = new();

    /// <summary>
    /// Gives the calling thread, which has not computed yet (its count is still the process-wide default),
    /// <paramref name="n"/> intra-op threads and leaves the default as it was. Serialised: setting a count sets the default
    /// too until it is put back, and a thread that read the default inside another's window put back the wrong one (two
    /// tokenizer runs with torch_threads 1 in one worker process once left the default at 1).
    /// </summary>
    public static void SetOnFreshThread(int n)
    {
        lock (DefaultGate)
        {
            int before = torch.get_num_threads();
            torch.set_num_threads(n);
            RestoreDefault(before);
        }
    }

    /// <summary>Sets the process-wide default from a throwaway thread (setting a count sets the caller's and the default).</summary>
    static void RestoreDefault(int count)
    {
        var t = new Thread(() => torch.set_num_threads(count)) { IsBackground = true };
        t.Start();
        t.Join();
    }

    /// <summary>Runs posted continuations on the thread that calls <see cref="RunUntilComplete"/>, in order.</summary>
    sealed class SingleThreadContext : SynchronizationContext
    {
        readonly BlockingCollection<(SendOrPostCallback Callback, object? State)> _queue = new();
        readonly object _gate = new();

        public override void Post(SendOrPostCallback d, object? state)
        {
            lock (_gate)
            {
                if (!_queue.IsAddingCompleted) { _queue.Add((d, state)); return; }
            }
            ThreadPool.QueueUserWorkItem(_ => d(state));   // a straggler after the body finished
        }

        public override void Send(SendOrPostCallback d, object? state) => throw new NotSupportedException("synchronous Send to the torch thread");

        public override SynchronizationContext CreateCopy() => this;

        public void Complete()
        {
            lock (_gate) _queue.CompleteAdding();
        }

        public void RunUntilComplete()
        {
            foreach (var (callback, state) in _queue.GetConsumingEnumerable()) callback(state);
        }
    }
}

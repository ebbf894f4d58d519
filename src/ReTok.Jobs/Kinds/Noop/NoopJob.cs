using ReTok.Engine;

namespace ReTok.Jobs.Kinds.Noop;

public sealed record NoopParams;

/// <summary>Does nothing: measures the engine's own overhead (`retok bench engine`).</summary>
[JobKind("noop", Queue = "cpu", Description = "does nothing (engine benchmark)")]
public sealed class NoopJob : IJobHandler<NoopParams>
{
    public Task RunAsync(JobContext ctx, NoopParams p) => Task.CompletedTask;
}

using ReTok.Engine;

namespace ReTok.Tests.Engine;

/// <summary>Engine settings for in-process worker tests: a fresh artifact/scratch folder and intervals short enough
/// that a queued run starts within a poll and a dead lease expires within seconds.</summary>
public static class TestEngine
{
    public static EngineOptions Options(string db, string prefix)
    {
        var root = Directory.CreateTempSubdirectory(prefix).FullName;
        return new EngineOptions
        {
            Db = db, Artifacts = Path.Combine(root, "artifacts"), Scratch = Path.Combine(root, "scratch"),
            QueuePollInterval = TimeSpan.FromMilliseconds(150), Heartbeat = TimeSpan.FromMilliseconds(300), LeaseTtl = TimeSpan.FromSeconds(3),
            ReconcileInterval = TimeSpan.FromSeconds(1), SchedulePollInterval = TimeSpan.FromMilliseconds(250), InvisibilityTimeout = TimeSpan.FromSeconds(30),
        };
    }

    /// <summary><see cref="Options"/> for jobs that train: a 30 s lease and 60 s invisibility, since a training step can
    /// hold both cores for seconds under a loaded suite. The run's scratch root is the artifacts folder's parent.</summary>
    public static EngineOptions Training(string db, string prefix) =>
        Options(db, prefix) with { LeaseTtl = TimeSpan.FromSeconds(30), InvisibilityTimeout = TimeSpan.FromSeconds(60) };
}

using System.Runtime.CompilerServices;

namespace ReTok.Tests;

static class TestDataRoots
{
    /// <summary>
    /// Job path parameters must lie inside RETOK_DATA_ROOTS. The tests keep their data in fresh temp folders and read
    /// fixtures from the output folder, so those are the roots of every in-process engine and (inherited through the
    /// environment) of every worker process the tests start. /etc, /usr and /proc stay outside.
    /// </summary>
    [ModuleInitializer]
    internal static void Init()
    {
        if (Environment.GetEnvironmentVariable("RETOK_DATA_ROOTS") is null)
            Environment.SetEnvironmentVariable("RETOK_DATA_ROOTS", $"{Path.GetTempPath().TrimEnd('/')}:{AppContext.BaseDirectory.TrimEnd('/')}");
        // what `retok` does at startup: the engine serves the kinds of ReTok.Jobs
        ReTok.Engine.JobKindRegistry.Default = ReTok.Jobs.JobKinds.All;
    }
}

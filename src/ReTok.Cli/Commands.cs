using System.CommandLine;

namespace ReTok.Cli;

/// <summary>Each command group lives in its own file and contributes here.</summary>
public static partial class Commands
{
    public static IEnumerable<Command> All()
    {
        yield return DbCommands.Build();
        yield return QuickstartCommands.Build();
        foreach (var c in EngineCommands.Build()) yield return c;
        yield return RunCommands.Build();
        yield return WebhookCommands.Build();
        yield return ArtifactCommands.Build();
        yield return BenchCommands.Build();
        yield return TokenizerCommands.Build();
        foreach (var c in EvalCommands.Build()) yield return c;
        yield return GeneratorCommands.Build();
        yield return TrainCommands.Build();
        foreach (var c in DashboardCommands.Build()) yield return c;
        yield return DatasetCommands.Build();
        yield return DoctorCommands.Build();
    }
}

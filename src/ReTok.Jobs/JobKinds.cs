using ReTok.Engine;

namespace ReTok.Jobs;

/// <summary>The job kinds of this assembly (Kinds/&lt;kind&gt;/), for hosts to hand to the engine.</summary>
public static class JobKinds
{
    public static JobKindRegistry All { get; } = new JobKindRegistry().Scan(typeof(JobKinds).Assembly);
}

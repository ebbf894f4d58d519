using ReTok.Tracking.Artifacts;

namespace ReTok.Tracking;

/// <summary>
/// Where tracking lives. Environment first (RETOK_DB, RETOK_ARTIFACTS, RETOK_HOME), then the embedded default:
/// the local cluster started by infra/stack.sh and a filesystem store under $RETOK_HOME (default ./.state).
/// RETOK_ARTIFACTS is a folder path, "file:PATH", or "blob:CONTAINER;CONNECTION-STRING".
/// </summary>
public sealed record RetokSettings(string Db, string Artifacts, string Home)
{
    public const string DefaultDb = "Host=127.0.0.1;Port=55432;Username=postgres;Database=retok";

    public static RetokSettings FromEnvironment(string? db = null, string? artifacts = null)
    {
        var home = Path.GetFullPath(Environment.GetEnvironmentVariable("RETOK_HOME") ?? ".state");
        return new RetokSettings(
            db ?? Environment.GetEnvironmentVariable("RETOK_DB") ?? DefaultDb,
            artifacts ?? Environment.GetEnvironmentVariable("RETOK_ARTIFACTS") ?? Path.Combine(home, "artifacts"),
            home);
    }

    public IArtifactStore CreateStore() => CreateStore(Artifacts);

    public static IArtifactStore CreateStore(string spec)
    {
        if (spec.StartsWith("blob:"))
        {
            var rest = spec["blob:".Length..];
            var semi = rest.IndexOf(';');
            if (semi <= 0) throw new ArgumentException($"artifact store '{spec}': expected blob:CONTAINER;CONNECTION-STRING");
            return new BlobArtifactStore(rest[(semi + 1)..], rest[..semi]);
        }
        return new FileSystemArtifactStore(spec.StartsWith("file:") ? spec["file:".Length..] : spec);
    }
}

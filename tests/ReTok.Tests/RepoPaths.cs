namespace ReTok.Tests;

/// <summary>The repository checkout the tests run from (the folder above the test output that holds ReTok.Jobs.sln).</summary>
public static class RepoPaths
{
    public static string Root { get; } = FindRoot();

    /// <summary>A path relative to the repository root, e.g. <c>File("jobs", "gen-tiny.yaml")</c>.</summary>
    public static string File(params string[] parts) => Path.Combine([Root, .. parts]);

    static string FindRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d != null && !System.IO.File.Exists(Path.Combine(d.FullName, "ReTok.Jobs.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }
}

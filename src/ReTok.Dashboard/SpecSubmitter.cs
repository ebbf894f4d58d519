using ReTok.Engine;
using YamlDotNet.RepresentationModel;

namespace ReTok.Dashboard;

/// <summary>
/// Submits specs from the dashboard: a file picked from jobs/ (by name from the listing, never a client path) or
/// uploaded/pasted YAML. Everything is validated by <see cref="JobSpecs"/> (strict keys and parameter binding) before
/// anything is queued; params_from must stay inside the spec root so an upload cannot read arbitrary server files.
/// </summary>
public sealed class SpecSubmitter(JobClient client, DashboardOptions options)
{
    public IReadOnlyList<string> JobFiles()
    {
        if (!Directory.Exists(options.JobsDir)) return [];
        return Directory.EnumerateFiles(options.JobsDir).Select(Path.GetFileName).OfType<string>()
            .Where(n => n.EndsWith(".yaml", StringComparison.OrdinalIgnoreCase) || n.EndsWith(".yml", StringComparison.OrdinalIgnoreCase))
            .Order(StringComparer.Ordinal).ToList();
    }

    /// <summary>The text of a jobs/ spec, looked up by its name in the listing (so "../x" can never match).</summary>
    public string? ReadJobFile(string name) =>
        JobFiles().Contains(name, StringComparer.Ordinal) ? File.ReadAllText(Path.Combine(options.JobsDir, name)) : null;

    /// <summary>Parses and validates; throws <see cref="SpecValidationException"/> with key paths (e.g. "params.n: …").</summary>
    public SubmitPlan Validate(string yaml, IReadOnlyList<string> overrides)
    {
        if (string.IsNullOrWhiteSpace(yaml)) throw new SpecValidationException(["spec: empty; paste YAML, upload a file or pick one from jobs/"]);
        CheckParamsFrom(yaml);
        var plan = JobSpecs.Parse(yaml, overrides, client.Kinds, options.JobsDir);
        client.CheckDataPaths(plan); // also for a validate-only request
        return plan;
    }

    public Task<SubmitResult> SubmitAsync(SubmitPlan plan, CancellationToken ct) => client.SubmitAsync(plan, ct);

    void CheckParamsFrom(string yaml)
    {
        // Limits (depth, size, aliases) throw here; a syntax error is left to JobSpecs, which reports it with its position.
        if (SpecYaml.Load(yaml, "spec", syntaxErrorIsNull: true) is not { } stream) return;
        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode root) return;
        var errors = new List<string>();
        void Check(YamlMappingNode m, string prefix)
        {
            if (!m.Children.TryGetValue(new YamlScalarNode("params_from"), out var v) || v is not YamlScalarNode { Value: { } path }) return;
            if (ParamsFromError(path) is { } e) errors.Add($"{prefix}params_from: '{ReTok.Tracking.SafeText.Clean(path)}' {e}");
        }
        Check(root, "");
        if (root.Children.TryGetValue(new YamlScalarNode("steps"), out var steps) && steps is YamlMappingNode sm)
            foreach (var (k, v) in sm.Children)
                if (v is YamlMappingNode step) Check(step, $"steps.{(k as YamlScalarNode)?.Value}.");
        if (errors.Count > 0) throw new SpecValidationException(errors);
    }

    /// <summary>
    /// Why a params_from path is refused, or null. It must be a relative .yaml/.yml path whose real path (links
    /// resolved) lies inside the spec root, with no hidden folder on the way (.state, .git) and outside $RETOK_HOME and
    /// the dashboard's key folder: the spec root is usually the checkout, which holds the quickstart password and keys.
    /// </summary>
    string? ParamsFromError(string path)
    {
        var root = DataRoots.RealPath(options.ResolvedSpecRoot);
        if (Path.IsPathRooted(path)) return $"must be a relative path inside the spec root ({Path.GetFileName(root)}/)";
        if (!path.EndsWith(".yaml", StringComparison.OrdinalIgnoreCase) && !path.EndsWith(".yml", StringComparison.OrdinalIgnoreCase))
            return "must name a .yaml or .yml file";
        string real;
        try { real = DataRoots.RealPath(Path.Combine(options.JobsDir, path)); }
        catch (IOException) { return "cannot be resolved"; }
        if (!real.StartsWith(root + "/", StringComparison.Ordinal)) return $"must be a relative path inside the spec root ({Path.GetFileName(root)}/)";
        if (Path.GetRelativePath(root, real).Split('/').Any(c => c.StartsWith('.')))
            return "must not reach into hidden folders (.state, .git, ...)";
        foreach (var secret in new[] { ReTok.Tracking.RetokSettings.FromEnvironment().Home, options.KeysDir })
            if (secret is not null && (real + "/").StartsWith(DataRoots.RealPath(secret) + "/", StringComparison.Ordinal))
                return "must not reach into the state folder ($RETOK_HOME) or the dashboard's keys";
        return null;
    }

    /// <summary>"a.b=1" lines (blank lines and # comments ignored).</summary>
    public static List<string> ParseOverrides(string? text) =>
        (text ?? "").Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
}

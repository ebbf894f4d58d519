using ReTok.Jobs.Engine;
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
        return JobSpecs.Parse(yaml, overrides, client.Kinds, options.JobsDir);
    }

    public Task<SubmitResult> SubmitAsync(SubmitPlan plan, CancellationToken ct) => client.SubmitAsync(plan, ct);

    void CheckParamsFrom(string yaml)
    {
        // Limits (depth, size, aliases) throw here; a syntax error is left to JobSpecs, which reports it with its position.
        if (SpecYaml.Load(yaml, "spec", syntaxErrorIsNull: true) is not { } stream) return;
        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode root) return;
        var errors = new List<string>();
        var root2 = options.ResolvedSpecRoot;
        void Check(YamlMappingNode m, string prefix)
        {
            if (!m.Children.TryGetValue(new YamlScalarNode("params_from"), out var v) || v is not YamlScalarNode { Value: { } path }) return;
            var full = Path.GetFullPath(Path.Combine(options.JobsDir, path));
            if (Path.IsPathRooted(path) || !full.StartsWith(root2 + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                errors.Add($"{prefix}params_from: '{path}' must be a relative path inside the spec root ({Path.GetFileName(root2)}/)");
        }
        Check(root, "");
        if (root.Children.TryGetValue(new YamlScalarNode("steps"), out var steps) && steps is YamlMappingNode sm)
            foreach (var (k, v) in sm.Children)
                if (v is YamlMappingNode step) Check(step, $"steps.{(k as YamlScalarNode)?.Value}.");
        if (errors.Count > 0) throw new SpecValidationException(errors);
    }

    /// <summary>"a.b=1" lines (blank lines and # comments ignored).</summary>
    public static List<string> ParseOverrides(string? text) =>
        (text ?? "").Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
}

using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using ReTok.Tracking;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace ReTok.Engine;

/// <summary>One run to create: a single job, or one step of a pipeline.</summary>
public sealed record StepPlan(string Step, JobKindInfo Kind, object Params, string ParamsJson, string Queue,
    IReadOnlyList<string> Needs, IReadOnlyDictionary<string, string> Inputs, string? RunName, int Gpus = 1, string Priority = RunPriority.Normal, int Nodes = 1)
{
    public string ConfigHash => ConfigHashOf(Kind.Name, ParamsJson);

    /// <summary>The config hash of a run of <paramref name="kind"/> with these parameters (steps and spawned shards alike).</summary>
    public static string ConfigHashOf(string kind, string paramsJson) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(kind + "\n" + paramsJson)))[..16];

    /// <summary>A top-level "seed" or "global_seed" (or one nested a level down, e.g. trainer.global_seed) in the parameters.</summary>
    public long? Seed
    {
        get
        {
            var root = JsonNode.Parse(ParamsJson) as JsonObject;
            foreach (var obj in new[] { root }.Concat(root?.Select(kv => kv.Value as JsonObject) ?? []))
                foreach (var key in new[] { "seed", "global_seed" })
                    if (obj?[key] is JsonValue v && v.TryGetValue<long>(out var s)) return s;
            return null;
        }
    }
}

/// <summary>What a spec file asks for; <see cref="PipelineName"/> is null for a single job.</summary>
public sealed record SubmitPlan(string? PipelineName, string? Experiment, IReadOnlyList<string> Tags, IReadOnlyList<StepPlan> Steps,
    string SpecYaml, IReadOnlyList<string> Overrides)
{
    public bool IsPipeline => PipelineName is not null;
}

/// <summary>
/// YAML job specs (jobs/*.yaml). A single job:
/// <code>
/// kind: selftest            # required
/// name: count-to-40         # optional run name
/// experiment: engine-demo   # optional
/// queue: cpu                # optional, default from the kind
/// gpus: 2                   # optional, default 1: device slots leased together on one worker of the queue
/// nodes: 2                  # optional, default 1: rank runs of one multi-node group (rank 0 spawns the others)
/// priority: high            # optional: high, normal (default) or low; changeable while queued
/// inputs: {data: run:12/result.json}
/// params_from: ../configs/x.yaml   # optional base parameters (reference-style config), merged under params
/// params: {n: 40}
/// </code>
/// A pipeline has <c>pipeline: NAME</c> and <c>steps:</c>, a mapping from step name to the keys above plus
/// <c>needs: [step, ...]</c>; an input <c>STEP/ARTIFACT</c> implies a need on STEP. Overrides <c>--set a.b=v</c> address
/// the parameters (for a pipeline: <c>--set STEP.a.b=v</c>); v is parsed as YAML (2e-4, true, [1, 2]). The step keys
/// <c>queue</c>, <c>gpus</c>, <c>nodes</c>, <c>priority</c> and <c>inputs.ROLE</c> are overridden the same way (<c>--set gpt.gpus=1</c>,
/// <c>--set gfid.inputs.reference=run:7/VIRTUAL_imagenet256_labeled.npz</c>).
/// </summary>
public static class JobSpecs
{
    static readonly string[] JobKeys = ["kind", "name", "experiment", "queue", "gpus", "nodes", "priority", "tags", "inputs", "params", "params_from"];
    static readonly string[] StepKeys = ["kind", "name", "queue", "gpus", "nodes", "priority", "needs", "inputs", "params", "params_from"];
    static readonly string[] PipelineKeys = ["pipeline", "experiment", "tags", "steps"];
    /// <summary>Step keys that `--set [STEP.]KEY=VALUE` sets on the step itself; `--set [STEP.]inputs.ROLE=REF` sets one input.</summary>
    static readonly HashSet<string> OverridableStepKeys = ["queue", "gpus", "nodes", "priority"];

    public static SubmitPlan Load(string path, IEnumerable<string>? overrides = null, JobKindRegistry? kinds = null)
    {
        if (!File.Exists(path)) throw new SpecValidationException(new[] { $"spec file {path} does not exist" });
        var full = Path.GetFullPath(path);
        try { return Parse(SpecYaml.ReadFile(full, "spec"), overrides, kinds, Path.GetDirectoryName(full)); }
        catch (SpecValidationException ex) { throw new SpecValidationException(ex.Errors, path); }
    }

    public static SubmitPlan Parse(string yaml, IEnumerable<string>? overrides = null, JobKindRegistry? kinds = null, string? baseDir = null)
    {
        kinds ??= JobKindRegistry.Default;
        var sets = overrides?.ToList() ?? new List<string>();
        var root = LoadMapping(yaml, "spec");
        var errors = new List<string>();
        var isPipeline = Has(root, "pipeline") || Has(root, "steps");

        var stepNodes = new List<(string Name, YamlMappingNode Node)>();
        if (isPipeline)
        {
            CheckKeys(root, PipelineKeys, "", errors);
            if (Get(root, "steps") is not YamlMappingNode steps || steps.Children.Count == 0)
                errors.Add("steps: a pipeline needs a mapping of step name -> step");
            else
                foreach (var (k, v) in steps.Children)
                {
                    var name = ((YamlScalarNode)k).Value ?? "";
                    if (!System.Text.RegularExpressions.Regex.IsMatch(name, "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"))
                        errors.Add($"steps.{name}: step names are letters, digits, '_', '-', '.'");
                    if (v is YamlMappingNode m) { CheckKeys(m, StepKeys, $"steps.{name}.", errors); stepNodes.Add((name, m)); }
                    else errors.Add($"steps.{name}: expected a mapping with kind/params/needs/inputs");
                }
        }
        else
        {
            CheckKeys(root, JobKeys, "", errors);
            stepNodes.Add((Str(root, "kind") ?? "job", root));
        }

        // --set overrides: into params (pipeline: STEP.path).
        foreach (var set in sets)
        {
            var eq = set.IndexOf('=');
            if (eq <= 0) { errors.Add($"--set {set}: expected KEY=VALUE"); continue; }
            var keyPath = set[..eq].Trim().Split('.');
            YamlNode value;
            try { value = ParseValue(set[(eq + 1)..], $"--set {set[..eq].Trim()}"); }
            catch (SpecValidationException ex) { errors.AddRange(ex.Errors); continue; }
            YamlMappingNode stepNode = root;
            string stepWhere = "";
            if (isPipeline)
            {
                var step = stepNodes.FirstOrDefault(s => s.Name == keyPath[0]).Node;
                if (step is null || keyPath.Length < 2) { errors.Add($"--set {set}: a pipeline override is STEP.KEY=VALUE with STEP one of: {string.Join(", ", stepNodes.Select(s => s.Name))}"); continue; }
                (stepNode, stepWhere) = (step, $"steps.{keyPath[0]}.");
                keyPath = keyPath[1..];
            }
            // where the step runs and what it reads are step keys, not parameters (no kind has a parameter of these names)
            if (keyPath is [var key] && OverridableStepKeys.Contains(key) || keyPath is ["inputs", _])
                SetPath(stepNode, keyPath, value, $"--set {set}", stepWhere.Length > 0 ? stepWhere.TrimEnd('.') : "spec", errors);
            else
                SetPath(ParamsNode(stepNode), keyPath, value, $"--set {set}", $"{stepWhere}params", errors);
        }

        var plans = new List<StepPlan>();
        var stepNames = stepNodes.Select(s => s.Name).ToHashSet();
        foreach (var (name, node) in stepNodes)
        {
            var prefix = isPipeline ? $"steps.{name}." : "";
            var kindName = Str(node, "kind");
            if (kindName is null) { errors.Add($"{prefix}kind: required (known kinds: {string.Join(", ", kinds.All.Select(k => k.Name))})"); continue; }
            if (!kinds.TryGet(kindName, out var kind)) { errors.Add($"{prefix}kind: unknown job kind '{kindName}' (known: {string.Join(", ", kinds.All.Select(k => k.Name))})"); continue; }

            var paramsNode = Get(node, "params") as YamlMappingNode ?? new YamlMappingNode();
            if (Get(node, "params") is { } pn && pn is not YamlMappingNode && !IsNullNode(pn)) errors.Add($"{prefix}params: expected a mapping");
            if (Str(node, "params_from") is { } from)
            {
                var file = Path.IsPathRooted(from) ? from : Path.Combine(baseDir ?? Directory.GetCurrentDirectory(), from);
                if (!File.Exists(file)) errors.Add($"{prefix}params_from: {file} does not exist");
                else
                    try { paramsNode = Merge(LoadMapping(SpecYaml.ReadFile(file, $"{prefix}params_from {from}"), $"{prefix}params_from {from}"), paramsNode); }
                    catch (SpecValidationException ex) { errors.AddRange(ex.Errors); }
            }
            object? p = null;
            try { p = ParamBinder.Bind(kind.ParamsType, paramsNode, $"{prefix}params"); }
            catch (SpecValidationException ex) { errors.AddRange(ex.Errors); }

            var queue = Str(node, "queue") ?? kind.Queue;
            if (!System.Text.RegularExpressions.Regex.IsMatch(queue, "^[a-z0-9_-]+$")) errors.Add($"{prefix}queue: '{queue}' must be lowercase letters, digits, '_' or '-'");

            var priority = Str(node, "priority") ?? RunPriority.Normal;
            if (!RunPriority.IsValid(priority)) errors.Add($"{prefix}priority: '{priority}' is not high, normal or low");
            int Count(string key, int max)
            {
                if (Str(node, key) is not { } text) return 1;
                if (int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var v) && v >= 1 && v <= max) return v;
                errors.Add($"{prefix}{key}: '{text}' is not a whole number from 1 to {max}");
                return 1;
            }
            int gpus = Count("gpus", 64), nodes = Count("nodes", 1024);
            if (nodes > 1 && !kind.MultiNode)
                errors.Add($"{prefix}nodes: job kind '{kind.Name}' does not run on several nodes (multi-node kinds: {string.Join(", ", kinds.All.Where(k => k.MultiNode).Select(k => k.Name))})");
            else if (nodes > 1 && p is IMultiNodeParams multi) errors.AddRange(multi.ValidateNodes(nodes).Select(e => $"{prefix}params.{e}"));

            var needs = new List<string>();
            if (Get(node, "needs") is { } needsNode)
            {
                if (!isPipeline) errors.Add("needs: only pipeline steps have needs");
                else if (needsNode is YamlSequenceNode seq) needs.AddRange(seq.Children.OfType<YamlScalarNode>().Select(s => s.Value ?? ""));
                else if (needsNode is YamlScalarNode one && !IsNullNode(one)) needs.Add(one.Value ?? "");
            }
            var inputs = new Dictionary<string, string>();
            if (Get(node, "inputs") is YamlMappingNode inMap)
                foreach (var (k, v) in inMap.Children)
                {
                    var role = ((YamlScalarNode)k).Value ?? "";
                    var reference = (v as YamlScalarNode)?.Value ?? "";
                    if (!InputRef.TryParse(reference, out var r)) { errors.Add($"{prefix}inputs.{role}: '{reference}' is not STEP/ARTIFACT or run:ID/ARTIFACT"); continue; }
                    if (r.Step is not null)
                    {
                        if (!isPipeline) errors.Add($"{prefix}inputs.{role}: '{reference}' names a pipeline step, but this is a single job; use run:ID/{r.Artifact}");
                        else if (!stepNames.Contains(r.Step)) errors.Add($"{prefix}inputs.{role}: step '{r.Step}' does not exist (steps: {string.Join(", ", stepNames)})");
                        else if (!needs.Contains(r.Step)) needs.Add(r.Step);
                    }
                    inputs[role] = reference;
                }
            else if (Get(node, "inputs") is { } bad && !IsNullNode(bad)) errors.Add($"{prefix}inputs: expected a mapping role -> STEP/ARTIFACT");
            foreach (var n in needs)
                if (!stepNames.Contains(n)) errors.Add($"{prefix}needs: step '{n}' does not exist (steps: {string.Join(", ", stepNames)})");
                else if (n == name) errors.Add($"{prefix}needs: a step cannot need itself");
            if (p is not null)
                plans.Add(new StepPlan(name, kind, p, ParamBinder.ToJson(p), queue, needs.Distinct().ToList(), inputs, Str(node, "name"), gpus, priority, nodes));
        }
        if (errors.Count == 0 && isPipeline && FindCycle(plans) is { } cycle) errors.Add($"steps: the needs form a cycle: {cycle}");
        if (errors.Count > 0) throw new SpecValidationException(errors);

        var tags = Get(root, "tags") is YamlSequenceNode tseq ? tseq.Children.OfType<YamlScalarNode>().Select(s => s.Value ?? "").ToList() : new List<string>();
        return new SubmitPlan(isPipeline ? Str(root, "pipeline") ?? "pipeline" : null, Str(root, "experiment"), tags, TopoSort(plans), yaml, sets);
    }

    static YamlMappingNode LoadMapping(string yaml, string what)
    {
        var stream = SpecYaml.Load(yaml, what)!;
        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode m)
            throw new SpecValidationException(new[] { $"{what}: expected a YAML mapping at the top" });
        return m;
    }

    static YamlNode ParseValue(string text, string what)
    {
        // Not YAML: taken as a string. Over a limit: that error is thrown (the value is not silently made a string).
        if (SpecYaml.Load(text, what, syntaxErrorIsNull: true) is not { } s) return new YamlScalarNode(text) { Style = ScalarStyle.DoubleQuoted };
        return s.Documents.Count == 0 ? new YamlScalarNode("null") : s.Documents[0].RootNode;
    }

    static YamlMappingNode ParamsNode(YamlMappingNode owner)
    {
        if (Get(owner, "params") is YamlMappingNode m) return m;
        var created = new YamlMappingNode();
        owner.Children[new YamlScalarNode("params")] = created;
        return created;
    }

    static void SetPath(YamlMappingNode target, string[] path, YamlNode value, string what, string where, List<string> errors)
    {
        var node = target;
        for (var i = 0; i < path.Length - 1; i++)
        {
            var child = Get(node, path[i]);
            if (child is null || IsNullNode(child)) { child = new YamlMappingNode(); node.Children[new YamlScalarNode(path[i])] = child; }
            if (child is not YamlMappingNode m) { errors.Add($"{what}: {where}.{string.Join('.', path[..(i + 1)])} is not a mapping"); return; }
            node = m;
        }
        node.Children[new YamlScalarNode(path[^1])] = value;
    }

    /// <summary>Deep merge: values of <paramref name="over"/> win; nested mappings merge.</summary>
    static YamlMappingNode Merge(YamlMappingNode baseMap, YamlMappingNode over)
    {
        var result = new YamlMappingNode();
        foreach (var (k, v) in baseMap.Children) result.Children[k] = v;
        foreach (var (k, v) in over.Children)
            result.Children[k] = result.Children.TryGetValue(k, out var b) && b is YamlMappingNode bm && v is YamlMappingNode vm ? Merge(bm, vm) : v;
        return result;
    }

    static void CheckKeys(YamlMappingNode m, string[] allowed, string prefix, List<string> errors)
    {
        foreach (var k in m.Children.Keys.OfType<YamlScalarNode>())
            if (!allowed.Contains(k.Value))
                errors.Add($"{prefix}{k.Value}: unknown key (allowed here: {string.Join(", ", allowed)}; job parameters go under params:)");
    }

    static bool Has(YamlMappingNode m, string key) => m.Children.ContainsKey(new YamlScalarNode(key));
    static YamlNode? Get(YamlMappingNode m, string key) => m.Children.TryGetValue(new YamlScalarNode(key), out var v) ? v : null;
    static string? Str(YamlMappingNode m, string key) => Get(m, key) is YamlScalarNode s && !IsNullNode(s) ? s.Value : null;
    static bool IsNullNode(YamlNode n) => n is YamlScalarNode { Style: ScalarStyle.Plain } s && (s.Value is null or "" or "~" or "null");

    static string? FindCycle(List<StepPlan> steps)
    {
        var byName = steps.ToDictionary(s => s.Step);
        var state = new Dictionary<string, int>();
        var stack = new List<string>();
        string? Visit(string n)
        {
            if (state.GetValueOrDefault(n) == 1) return string.Join(" -> ", stack.SkipWhile(s => s != n).Append(n));
            if (state.GetValueOrDefault(n) == 2) return null;
            state[n] = 1; stack.Add(n);
            foreach (var d in byName[n].Needs) if (Visit(d) is { } c) return c;
            state[n] = 2; stack.RemoveAt(stack.Count - 1);
            return null;
        }
        foreach (var s in steps) if (Visit(s.Step) is { } c) return c;
        return null;
    }

    static List<StepPlan> TopoSort(List<StepPlan> steps)
    {
        var done = new HashSet<string>();
        var result = new List<StepPlan>();
        while (result.Count < steps.Count)
            foreach (var s in steps.Where(s => !done.Contains(s.Step) && s.Needs.All(done.Contains)).ToList())
            { result.Add(s); done.Add(s.Step); }
        return result;
    }
}

/// <summary>An input reference: "STEP/ARTIFACT" (same pipeline) or "run:ID/ARTIFACT".</summary>
public sealed record InputRef(string? Step, long? RunId, string Artifact)
{
    public static bool TryParse(string s, out InputRef r)
    {
        r = null!;
        var slash = s.IndexOf('/');
        if (slash <= 0 || slash == s.Length - 1) return false;
        var head = s[..slash];
        var name = s[(slash + 1)..];
        try { Tracking.Artifacts.ArtifactNames.Validate(name); } catch (ArgumentException) { return false; }
        if (head.StartsWith("run:"))
        {
            if (!long.TryParse(head[4..], out var id)) return false;
            r = new InputRef(null, id, name);
        }
        else r = new InputRef(head, null, name);
        return true;
    }

    public override string ToString() => RunId is { } id ? $"run:{id}/{Artifact}" : $"{Step}/{Artifact}";
}

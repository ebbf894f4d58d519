using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;

namespace ReTok.Engine;

/// <summary>
/// The one way spec YAML (specs, params_from files, --set values; from the CLI, the API and the submit page) becomes a
/// node tree. YamlDotNet builds and compares nodes recursively, so a 200 KB document nested 100k levels deep
/// overflows the stack and kills the process (a StackOverflowException cannot be caught). The parser is therefore
/// wrapped so that the event stream is cut off at <see cref="MaxDepth"/> before any node is built, and the built tree
/// is walked once more to bound what aliases can expand to (depth and node count, "billion laughs") and to reject
/// non-scalar mapping keys, which every consumer reads as strings.
/// </summary>
public static class SpecYaml
{
    /// <summary>Nesting limit of mappings/sequences; real specs and reference configs stay under 10.</summary>
    public const int MaxDepth = 64;
    /// <summary>Size limit of one YAML text in characters (the dashboard's upload limit is 1 MiB too).</summary>
    public const int MaxChars = 1 << 20;
    /// <summary>Limit on the nodes of a document with every alias expanded (what parameter binding will visit).</summary>
    public const int MaxExpandedNodes = 100_000;

    /// <summary>
    /// Parses <paramref name="yaml"/>; throws <see cref="SpecValidationException"/> naming <paramref name="what"/> and the
    /// limit or syntax error (with <paramref name="syntaxErrorIsNull"/>, a syntax error returns null instead).
    /// </summary>
    public static YamlStream? Load(string yaml, string what, bool syntaxErrorIsNull = false)
    {
        if (yaml.Length > MaxChars)
            throw new SpecValidationException([$"{what}: {yaml.Length} characters is over the limit of {MaxChars} for a spec"]);
        var stream = new YamlStream();
        try { stream.Load(new DepthLimitedParser(new Parser(new StringReader(yaml)), what)); }
        catch (YamlException) when (syntaxErrorIsNull) { return null; }
        catch (YamlException ex) { throw new SpecValidationException([$"{what}: invalid YAML at line {ex.Start.Line}, column {ex.Start.Column}: {ex.Message}"]); }
        foreach (var doc in stream.Documents) Check(doc.RootNode, what);
        return stream;
    }

    /// <summary>Reads a spec file, refusing files over <see cref="MaxChars"/> bytes before reading them.</summary>
    public static string ReadFile(string path, string what)
    {
        var len = new FileInfo(path).Length;
        if (len > MaxChars) throw new SpecValidationException([$"{what}: {len} bytes is over the limit of {MaxChars} for a spec"]);
        return File.ReadAllText(path);
    }

    static void Check(YamlNode root, string what)
    {
        // Memoised per node object: an alias is the same object as its anchor, so this is linear in the document
        // while computing the expanded size. Recursion depth is bounded by MaxDepth (checked before descending).
        var done = new Dictionary<YamlNode, (long Nodes, int Height)>(ReferenceEqualityComparer.Instance);
        var active = new HashSet<YamlNode>(ReferenceEqualityComparer.Instance);
        (long, int) Visit(YamlNode n, int depth)
        {
            if (done.TryGetValue(n, out var r)) return r;
            if (!active.Add(n)) throw Limit(what, n, "an alias refers to a node that contains it (recursive structure)");
            long nodes = 1;
            var height = 0;
            IEnumerable<YamlNode> children = n switch
            {
                YamlMappingNode m => m.Children.SelectMany(kv => new[] { kv.Key, kv.Value }),
                YamlSequenceNode s => s.Children,
                _ => [],
            };
            if (n is YamlMappingNode map)
                foreach (var k in map.Children.Keys)
                    if (k is not YamlScalarNode)
                        throw Limit(what, k, $"a mapping key must be a plain value, not a {(k is YamlSequenceNode ? "list" : "mapping")}");
            foreach (var c in children)
            {
                if (depth + 1 > MaxDepth) throw Limit(what, c, $"nested deeper than the limit of {MaxDepth} levels (aliases included)");
                var (cn, ch) = Visit(c, depth + 1);
                nodes += cn;
                height = Math.Max(height, ch + 1);
                if (nodes > MaxExpandedNodes) throw Limit(what, n, $"expands to more than the limit of {MaxExpandedNodes} nodes (aliases included)");
            }
            active.Remove(n);
            return done[n] = (nodes, height);
        }
        Visit(root, 0);
    }

    static SpecValidationException Limit(string what, YamlNode at, string message) =>
        new([$"{what}: line {at.Start.Line}, column {at.Start.Column}: {message}"]);

    /// <summary>Passes events through, failing as soon as collections nest deeper than <see cref="MaxDepth"/>.</summary>
    sealed class DepthLimitedParser(IParser inner, string what) : IParser
    {
        int _depth;

        public ParsingEvent? Current => inner.Current;

        public bool MoveNext()
        {
            if (!inner.MoveNext()) return false;
            switch (inner.Current)
            {
                case MappingStart or SequenceStart:
                    if (++_depth > MaxDepth)
                        throw new SpecValidationException([$"{what}: line {inner.Current.Start.Line}, column {inner.Current.Start.Column}: nested deeper than the limit of {MaxDepth} levels"]);
                    break;
                case MappingEnd or SequenceEnd:
                    _depth--;
                    break;
            }
            return true;
        }
    }
}

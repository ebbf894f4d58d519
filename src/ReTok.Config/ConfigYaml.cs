using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;

namespace ReTok.Config;

/// <summary>
/// The one place YAML and JSON meet: YAML text to a YamlDotNet node tree, node trees to and from JsonNode, and JsonNode
/// back to YAML text. The binder works on YAML nodes because a YAML scalar keeps its text and style (plain or quoted),
/// which JSON cannot hold; JSON input is lifted into that form losslessly (<see cref="FromJson"/>).
/// </summary>
public static class ConfigYaml
{
    /// <summary>Parses one YAML document; null for an empty one. Syntax errors name <paramref name="what"/>, line and column.</summary>
    public static YamlNode? Parse(string yaml, string what)
    {
        var stream = new YamlStream();
        try { stream.Load(new StringReader(yaml)); }
        catch (YamlException ex) { throw new ConfigException([$"{what}: invalid YAML at line {ex.Start.Line}, column {ex.Start.Column}: {ex.Message}"]); }
        return stream.Documents.Count == 0 ? null : stream.Documents[0].RootNode;
    }

    /// <summary>YAML without a target type: plain scalars become numbers/booleans/null when they look like one.</summary>
    public static JsonNode? ToJson(YamlNode? node) => node switch
    {
        null => null,
        YamlMappingNode m => new JsonObject(m.Children.Select(kv => KeyValuePair.Create(((YamlScalarNode)kv.Key).Value ?? "", ToJson(kv.Value)))),
        YamlSequenceNode s => new JsonArray(s.Children.Select(ToJson).ToArray()),
        YamlScalarNode sc when sc.Style != ScalarStyle.Plain => JsonValue.Create(sc.Value),
        YamlScalarNode sc when IsNull(sc) => null,
        YamlScalarNode sc when long.TryParse(sc.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l) => JsonValue.Create(l),
        YamlScalarNode sc when double.TryParse(sc.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && double.IsFinite(d) => JsonValue.Create(d),
        YamlScalarNode sc when sc.Value!.Equals("true", StringComparison.OrdinalIgnoreCase) => JsonValue.Create(true),
        YamlScalarNode sc when sc.Value!.Equals("false", StringComparison.OrdinalIgnoreCase) => JsonValue.Create(false),
        YamlScalarNode sc => JsonValue.Create(sc.Value),
        _ => null,
    };

    /// <summary>
    /// JSON as YAML nodes: strings become quoted scalars (so "null" or "5" stay strings), numbers and booleans plain
    /// scalars with their JSON text, null a plain null.
    /// </summary>
    public static YamlNode FromJson(JsonNode? node) => node switch
    {
        null => new YamlScalarNode("null") { Style = ScalarStyle.Plain },
        JsonObject o => new YamlMappingNode(o.Select(kv => KeyValuePair.Create<YamlNode, YamlNode>(new YamlScalarNode(kv.Key), FromJson(kv.Value)))),
        JsonArray a => new YamlSequenceNode(a.Select(FromJson)),
        JsonValue v when v.GetValueKind() == JsonValueKind.String => new YamlScalarNode(v.GetValue<string>()) { Style = ScalarStyle.DoubleQuoted },
        JsonValue v => new YamlScalarNode(v.ToJsonString()) { Style = ScalarStyle.Plain },
    };

    /// <summary>JSON text or a JsonElement, as <see cref="FromJson(JsonNode?)"/>.</summary>
    public static YamlNode FromJson(JsonElement element) => FromJson(JsonNode.Parse(element.GetRawText()));

    /// <summary>
    /// YAML text of a JSON tree, by YamlDotNet's emitter (block style). Strings are quoted only where plain text would
    /// read back as something else (null, a boolean, a number) or could not be written plain.
    /// </summary>
    public static string Write(JsonNode? node)
    {
        var writer = new StringWriter { NewLine = "\n" };
        new YamlStream(new YamlDocument(Block(node))).Save(writer, assignAnchors: false);
        var text = writer.ToString();
        // YamlStream.Save ends every document with an explicit "..." marker, which no reader needs
        return text.EndsWith("...\n", StringComparison.Ordinal) ? text[..^4] : text;
    }

    static YamlNode Block(JsonNode? node) => node switch
    {
        JsonObject o => new YamlMappingNode(o.Select(kv => KeyValuePair.Create<YamlNode, YamlNode>(new YamlScalarNode(kv.Key), Block(kv.Value)))),
        JsonArray a when a.All(x => x is null or JsonValue) => new YamlSequenceNode(a.Select(Block)) { Style = SequenceStyle.Flow },
        JsonArray a => new YamlSequenceNode(a.Select(Block)),
        JsonValue v when v.GetValueKind() == JsonValueKind.String && v.GetValue<string>() is var s =>
            new YamlScalarNode(s) { Style = ToJson(new YamlScalarNode(s) { Style = ScalarStyle.Plain }) is JsonValue back && back.GetValueKind() == JsonValueKind.String ? ScalarStyle.Any : ScalarStyle.DoubleQuoted },
        _ => FromJson(node),
    };

    /// <summary>A plain null: empty, ~ or null (any case); a quoted "null" is a string.</summary>
    public static bool IsNull(YamlNode n) => n is YamlScalarNode s && s.Style == ScalarStyle.Plain
                                             && (s.Value is null or "" or "~" || s.Value.Equals("null", StringComparison.OrdinalIgnoreCase));
}

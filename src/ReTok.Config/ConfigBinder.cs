using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using YamlDotNet.RepresentationModel;

namespace ReTok.Config;

/// <summary>
/// Binds a config tree to a record, strictly: every key must exist on the record (snake_case of the property name, or
/// its [JsonPropertyName]) and every value must have the property's type. All errors are collected, each naming the key
/// path and the expected type ("params.trainer.lr: expected a number (double), got 'fast'"), unknown keys with a
/// "did you mean". YAML, JSON text, JsonNode and JsonElement all go through the same walk (over YAML nodes, see
/// <see cref="ConfigYaml"/>); the checked tree is then deserialised with <see cref="Json"/>, so defaults are the record's.
/// </summary>
public static class ConfigBinder
{
    /// <summary>The serializer for config JSON: snake_case names, enums as snake_case strings, unknown keys rejected.</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>Not thread-safe (its caches are plain dictionaries): every use holds <see cref="NullabilityLock"/>, since
    /// a worker process runs several jobs at once (two extract-codes shards loading their tokenizer.yaml together threw
    /// "An item with the same key has already been added").</summary>
    static readonly NullabilityInfoContext Nullability = new();
    static readonly Lock NullabilityLock = new();

    /// <summary>Binds a YAML node (null: an empty mapping); throws <see cref="ConfigException"/> listing every error.</summary>
    public static object Bind(Type type, YamlNode? node, string path)
    {
        var errors = new List<string>();
        var json = Convert(node ?? new YamlMappingNode(), type, path, nullable: false, errors);
        if (errors.Count > 0) throw new ConfigException(errors);
        try { return json.Deserialize(type, Json)!; }
        catch (JsonException ex) { throw new ConfigException([$"{At(path)}{ex.Message}"]); }
    }

    public static T Bind<T>(YamlNode? node, string path) => (T)Bind(typeof(T), node, path);

    /// <summary>Binds a JSON tree (null: an empty mapping) with the same checks and messages as YAML.</summary>
    public static object Bind(Type type, JsonNode? node, string path) => Bind(type, node is null ? null : ConfigYaml.FromJson(node), path);
    public static T Bind<T>(JsonNode? node, string path) => (T)Bind(typeof(T), node, path);
    public static T Bind<T>(JsonElement element, string path) => (T)Bind(typeof(T), ConfigYaml.FromJson(element), path);

    /// <summary>Binds JSON text; syntax errors name <paramref name="path"/>.</summary>
    public static T BindJson<T>(string json, string path)
    {
        JsonNode? node;
        try { node = JsonNode.Parse(json); }
        catch (JsonException ex) { throw new ConfigException([$"{At(path)}invalid JSON: {ex.Message}"]); }
        return Bind<T>(node, path);
    }

    /// <summary>Binds YAML text; syntax errors name <paramref name="path"/>, line and column.</summary>
    public static T BindYaml<T>(string yaml, string path) => Bind<T>(ConfigYaml.Parse(yaml, path == "" ? "config" : path), path);

    public static string ToJson(object value) => JsonSerializer.Serialize(value, value.GetType(), Json);

    /// <summary>A record as a JSON tree under the binder's names (for writers: <see cref="ConfigYaml.Write"/>).</summary>
    public static JsonObject ToJsonNode(object value) => JsonSerializer.SerializeToNode(value, value.GetType(), Json) as JsonObject
        ?? throw new ArgumentException($"{value.GetType().Name} does not serialise to a JSON object");

    /// <summary>Reads back JSON this binder wrote (trusted: no per-key checks beyond the serializer's).</summary>
    public static object FromJson(string json, Type type) => JsonSerializer.Deserialize(json, type, Json)
        ?? throw new JsonException($"config JSON for {type.Name} is null");

    /// <summary>The key of a property: [JsonPropertyName] or snake_case of its name.</summary>
    public static string KeyOf(PropertyInfo p) =>
        p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name ?? JsonNamingPolicy.SnakeCaseLower.ConvertName(p.Name);

    static string At(string path) => path == "" ? "" : path + ": ";
    static string Key(string path, string key) => path == "" ? key : $"{path}.{key}";

    static JsonNode? Convert(YamlNode node, Type type, string path, bool nullable, List<string> errors)
    {
        var under = Nullable.GetUnderlyingType(type);
        if (under is not null) { type = under; nullable = true; }
        var expected = Describe(type) + (nullable ? " or null" : "");
        if (ConfigYaml.IsNull(node))
        {
            if (!nullable) errors.Add($"{At(path)}expected {expected}, got null");
            return null;
        }
        if (type == typeof(object) || typeof(JsonNode).IsAssignableFrom(type) || type == typeof(JsonElement)) return ConfigYaml.ToJson(node);
        if (type == typeof(string)) return Scalar(node, path, expected, errors) is { } s ? JsonValue.Create(s) : null;
        if (type == typeof(bool))
        {
            var s = Scalar(node, path, expected, errors);
            if (s is null) return null;
            if (s.Equals("true", StringComparison.OrdinalIgnoreCase)) return JsonValue.Create(true);
            if (s.Equals("false", StringComparison.OrdinalIgnoreCase)) return JsonValue.Create(false);
            errors.Add($"{At(path)}expected {expected}, got '{s}'");
            return null;
        }
        if (IsInteger(type))
        {
            var s = Scalar(node, path, expected, errors);
            if (s is null) return null;
            if (!long.TryParse(s.Replace("_", ""), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l))
            {
                // 1e4 written for an integer is common in ML configs: accept it when it is integral.
                if (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && d == Math.Floor(d) && Math.Abs(d) < 9e15) l = (long)d;
                else { errors.Add($"{At(path)}expected {expected}, got '{s}'"); return null; }
            }
            var (min, max) = IntegerRange(type);
            if (l < min || l > max) { errors.Add($"{At(path)}{l} is out of range for {Describe(type)}"); return null; }
            return JsonValue.Create(l);
        }
        if (type == typeof(double) || type == typeof(float) || type == typeof(decimal))
        {
            var s = Scalar(node, path, expected, errors);
            if (s is null) return null;
            // NaN and ±Inf (".nan", ".inf", "1e999") are refused at submit: no parameter means them, and a NaN learning
            // rate or scale would only surface hours later as a diverged run.
            var word = s.ToLowerInvariant().TrimStart('+', '-').TrimStart('.');
            var parsed = double.TryParse(s.Replace("_", ""), NumberStyles.Float, CultureInfo.InvariantCulture, out var d);
            if (word is "inf" or "infinity" or "nan" || (parsed && (!double.IsFinite(d) || (type == typeof(float) && !float.IsFinite((float)d)))))
            {
                errors.Add($"{At(path)}must be a finite number, got '{s}'");
                return null;
            }
            if (parsed) return JsonValue.Create(d);
            errors.Add($"{At(path)}expected {expected}, got '{s}'");
            return null;
        }
        if (type.IsEnum)
        {
            var s = Scalar(node, path, expected, errors);
            if (s is null) return null;
            var names = Enum.GetNames(type);
            var hit = names.FirstOrDefault(n => n.Equals(s, StringComparison.OrdinalIgnoreCase)
                                                || JsonNamingPolicy.SnakeCaseLower.ConvertName(n).Equals(s, StringComparison.OrdinalIgnoreCase));
            if (hit is null) { errors.Add($"{At(path)}expected {expected}, got '{s}'"); return null; }
            return JsonValue.Create(JsonNamingPolicy.SnakeCaseLower.ConvertName(hit));
        }
        if (DictionaryValueType(type) is { } valueType)
        {
            if (node is not YamlMappingNode map) { errors.Add($"{At(path)}expected {expected}, got {What(node)}"); return null; }
            var obj = new JsonObject();
            foreach (var (k, v) in map.Children)
            {
                var key = ((YamlScalarNode)k).Value ?? "";
                obj[key] = Convert(v, valueType, Key(path, key), NullableElement(valueType), errors);
            }
            return obj;
        }
        if (ElementType(type) is { } elementType)
        {
            if (node is not YamlSequenceNode seq) { errors.Add($"{At(path)}expected {expected}, got {What(node)}"); return null; }
            var arr = new JsonArray();
            var i = 0;
            foreach (var item in seq.Children) arr.Add(Convert(item, elementType, $"{path}[{i++}]", NullableElement(elementType), errors));
            return arr;
        }
        if (type.IsClass || (type.IsValueType && !type.IsPrimitive))
        {
            if (node is not YamlMappingNode map) { errors.Add($"{At(path)}expected {expected}, got {What(node)}"); return null; }
            var props = Properties(type);
            var obj = new JsonObject();
            foreach (var (k, v) in map.Children)
            {
                var key = ((YamlScalarNode)k).Value ?? "";
                if (!props.TryGetValue(key, out var p))
                {
                    var hint = Closest(key, props.Keys);
                    errors.Add($"{Key(path, key)}: unknown key{(hint is null ? "" : $" (did you mean '{hint}'?)")}; known keys of {type.Name}: {string.Join(", ", props.Keys.Order())}");
                    continue;
                }
                obj[key] = Convert(v, p.Type, Key(path, key), p.Nullable, errors);
            }
            foreach (var (key, p) in props)
                if (p.Required && !obj.ContainsKey(key)) errors.Add($"{Key(path, key)}: required key is missing (expected {Describe(p.Type)})");
            return obj;
        }
        errors.Add($"{At(path)}unsupported parameter type {type.Name}");
        return null;
    }

    sealed record Prop(Type Type, bool Nullable, bool Required);

    static Dictionary<string, Prop> Properties(Type type)
    {
        var ctorParams = type.GetConstructors().OrderByDescending(c => c.GetParameters().Length).FirstOrDefault()?.GetParameters() ?? [];
        var result = new Dictionary<string, Prop>(StringComparer.Ordinal);
        foreach (var p in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (p.GetIndexParameters().Length > 0 || p.GetCustomAttribute<JsonIgnoreAttribute>() is not null) continue;
            var ctor = ctorParams.FirstOrDefault(c => string.Equals(c.Name, p.Name, StringComparison.OrdinalIgnoreCase));
            if (p.SetMethod is not { IsPublic: true } && ctor is null) continue;
            var required = p.CustomAttributes.Any(a => a.AttributeType.FullName == "System.Runtime.CompilerServices.RequiredMemberAttribute")
                           || (ctor is not null && !ctor.HasDefaultValue);
            bool nullable;
            lock (NullabilityLock) nullable = !p.PropertyType.IsValueType && Nullability.Create(p).ReadState == NullabilityState.Nullable;
            result[KeyOf(p)] = new Prop(p.PropertyType, nullable, required);
        }
        return result;
    }

    static bool NullableElement(Type t) => !t.IsValueType || Nullable.GetUnderlyingType(t) is not null;

    static Type? ElementType(Type t)
    {
        if (t.IsArray) return t.GetElementType();
        if (!t.IsGenericType) return null;
        var g = t.GetGenericTypeDefinition();
        return g == typeof(List<>) || g == typeof(IList<>) || g == typeof(IReadOnlyList<>) || g == typeof(IEnumerable<>)
               || g == typeof(IReadOnlyCollection<>) || g == typeof(ICollection<>) ? t.GetGenericArguments()[0] : null;
    }

    static Type? DictionaryValueType(Type t)
    {
        if (!t.IsGenericType) return null;
        var g = t.GetGenericTypeDefinition();
        if ((g == typeof(Dictionary<,>) || g == typeof(IDictionary<,>) || g == typeof(IReadOnlyDictionary<,>)) && t.GetGenericArguments()[0] == typeof(string))
            return t.GetGenericArguments()[1];
        return null;
    }

    static bool IsInteger(Type t) => t == typeof(int) || t == typeof(long) || t == typeof(short) || t == typeof(byte) || t == typeof(uint) || t == typeof(ulong);

    static (long, long) IntegerRange(Type t) =>
        t == typeof(int) ? (int.MinValue, int.MaxValue) : t == typeof(short) ? (short.MinValue, short.MaxValue)
        : t == typeof(byte) ? (0, 255) : t == typeof(uint) ? (0, uint.MaxValue) : t == typeof(ulong) ? (0, long.MaxValue) : (long.MinValue, long.MaxValue);

    static string? Scalar(YamlNode node, string path, string expected, List<string> errors)
    {
        if (node is YamlScalarNode s) return s.Value ?? "";
        errors.Add($"{At(path)}expected {expected}, got {What(node)}");
        return null;
    }

    static string What(YamlNode n) => n switch { YamlMappingNode => "a mapping", YamlSequenceNode => "a list", YamlScalarNode s => $"'{s.Value}'", _ => n.NodeType.ToString() };

    /// <summary>Human description of an expected type, used in error messages.</summary>
    public static string Describe(Type t)
    {
        if (Nullable.GetUnderlyingType(t) is { } u) return Describe(u) + " or null";
        if (t == typeof(string)) return "a string";
        if (t == typeof(bool)) return "a boolean (true/false)";
        if (IsInteger(t)) return $"an integer ({Alias(t)})";
        if (t == typeof(double) || t == typeof(float) || t == typeof(decimal)) return $"a number ({Alias(t)})";
        if (t.IsEnum) return "one of: " + string.Join(", ", Enum.GetNames(t).Select(JsonNamingPolicy.SnakeCaseLower.ConvertName));
        if (DictionaryValueType(t) is { } v) return $"a mapping of string to {Describe(v)}";
        if (ElementType(t) is { } e) return $"a list of {Describe(e)}";
        return $"a mapping ({t.Name})";
    }

    static string Alias(Type t) => t == typeof(int) ? "int" : t == typeof(long) ? "long" : t == typeof(double) ? "double" : t == typeof(float) ? "float"
        : t == typeof(short) ? "short" : t == typeof(byte) ? "byte" : t == typeof(decimal) ? "decimal" : t.Name;

    static string? Closest(string key, IEnumerable<string> candidates)
    {
        string? best = null;
        var bestD = int.MaxValue;
        foreach (var c in candidates)
        {
            var d = Levenshtein(key, c);
            if (d < bestD) (best, bestD) = (c, d);
        }
        return bestD <= Math.Max(2, key.Length / 3) ? best : null;
    }

    static int Levenshtein(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (var j = 0; j <= b.Length; j++) d[0, j] = j;
        for (var i = 1; i <= a.Length; i++)
        for (var j = 1; j <= b.Length; j++)
            d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}

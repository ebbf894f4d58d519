using System.Reflection;
using System.Text.Json;
using ReTok.Config;
using YamlDotNet.RepresentationModel;

namespace ReTok.Engine;

/// <summary>
/// Job parameters binding: <see cref="ConfigBinder"/> (the one strict binder, shared with the models' configs) plus the
/// engine's parts: errors as <see cref="SpecValidationException"/>, and <see cref="IValidatableParams"/> checks.
/// The result is stored as canonical JSON (defaults filled in), and read back with <see cref="Json"/>.
/// </summary>
public static class ParamBinder
{
    /// <inheritdoc cref="ConfigBinder.Json"/>
    public static JsonSerializerOptions Json => ConfigBinder.Json;

    /// <summary>Binds and validates; throws <see cref="SpecValidationException"/> listing every error.</summary>
    public static object Bind(Type type, YamlMappingNode? node, string path = "params")
    {
        object value;
        try { value = ConfigBinder.Bind(type, node, path); }
        catch (ConfigException ex) { throw new SpecValidationException(ex.Errors); }
        Validate(value, path);
        return value;
    }

    /// <summary>Runs <see cref="IValidatableParams.Validate"/> if the record implements it.</summary>
    public static void Validate(object value, string path = "params")
    {
        if (value is IValidatableParams v && v.Validate().ToList() is { Count: > 0 } errs)
            throw new SpecValidationException(errs.Select(e => $"{path}.{e}").ToList());
    }

    public static string ToJson(object value) => ConfigBinder.ToJson(value);
    public static object FromJson(string json, Type type) => ConfigBinder.FromJson(json, type);
    public static string KeyOf(PropertyInfo p) => ConfigBinder.KeyOf(p);
    public static string Describe(Type t) => ConfigBinder.Describe(t);
}

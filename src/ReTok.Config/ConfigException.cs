namespace ReTok.Config;

/// <summary>
/// A config does not bind: <see cref="Errors"/> each name the key path and what was expected. An ArgumentException so
/// that the models' existing "bad config" handling (ArgumentException -> InvalidDataException naming the file) holds.
/// </summary>
public sealed class ConfigException(IReadOnlyList<string> errors)
    : ArgumentException(errors.Count == 1 ? errors[0] : $"{errors.Count} errors:\n  " + string.Join("\n  ", errors))
{
    public IReadOnlyList<string> Errors { get; } = errors;
}

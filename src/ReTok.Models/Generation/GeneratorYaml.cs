using ReTok.Config;

namespace ReTok.Models.Generation;

/// <summary>
/// generator.yaml: a <see cref="GptConfig"/> under ModelArgs names (gpt_1d.py), written by train-generator next to the
/// weights and read back by the sampling jobs; both ways go through <see cref="ConfigBinder"/>'s names.
/// </summary>
public static class GeneratorYaml
{
    public static string Write(GptConfig c) => "# GPT config (ModelArgs names of gpt_1d.py)\n" + ConfigYaml.Write(ConfigBinder.ToJsonNode(c));

    /// <summary>Reads and validates; every error names <paramref name="path"/>.</summary>
    public static GptConfig Read(string path)
    {
        try { return GptConfig.FromYaml(File.ReadAllText(path), path); }
        catch (ArgumentException e) { throw new InvalidDataException(e.Message, e); }
    }
}

using System.CommandLine;
using System.Text.RegularExpressions;
using ReTok.Cli;
using ReTok.Engine;
using ReTok.Tests.Infra;

namespace ReTok.Tests.Foundation;

/// <summary>
/// Issue 18.3: every `retok …` command shown in README.md and docs/*.md (inside code fences) names commands and options
/// that exist, and every `retok submit SPEC --set K=V` validates (keys, types) as the submit would. A renamed option
/// or a wrong override key (`training.global_batch_size`) fails here instead of in a lab's terminal.
/// </summary>
public sealed partial class DocsCommandsTests
{
    /// <summary>Spec names the docs use as placeholders, not files.</summary>
    static readonly HashSet<string> PlaceholderSpecs = ["spec.yaml", "SPEC", "<spec>", "my-spec.yaml"];

    [GeneratedRegex(@"\s+#\s.*$")]
    private static partial Regex TrailingComment();

    /// <summary>(file:line, argv after "retok") for each command line in a code fence; "a | b" and "a &amp;&amp; b" are two.</summary>
    public static List<(string Where, string[] Args)> DocCommands()
    {
        var root = Proc.Root;
        var files = new[] { Path.Combine(root, "README.md") }.Concat(Directory.GetFiles(Path.Combine(root, "docs"), "*.md")).Order(StringComparer.Ordinal);
        var result = new List<(string, string[])>();
        foreach (var file in files)
        {
            bool fence = false;
            var lines = File.ReadAllLines(file);
            for (int i = 0; i < lines.Length; i++)
            {
                var line = lines[i].Trim();
                if (line.StartsWith("```")) { fence = !fence; continue; }
                if (!fence) continue;
                line = TrailingComment().Replace(line, "").TrimEnd('\\').Trim();
                foreach (var part in line.Split([" | ", " && "], StringSplitOptions.TrimEntries))
                {
                    var p = part.StartsWith("$ ") ? part[2..] : part;
                    if (!p.StartsWith("retok ") && !p.StartsWith("./retok ")) continue;
                    var args = p[(p.IndexOf("retok ", StringComparison.Ordinal) + 6)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    if (args.Length == 0 || !Regex.IsMatch(args[0], "^[a-z][a-z-]*$")) continue;   // prose such as "retok CLI"
                    result.Add(($"{Path.GetRelativePath(root, file)}:{i + 1}", args));
                }
            }
        }
        return result;
    }

    [Fact]
    public void The_docs_show_retok_commands_at_all()
    {
        var cmds = DocCommands();
        Assert.True(cmds.Count >= 30, $"only {cmds.Count} commands found: the extraction is broken");
        Assert.Contains(cmds, c => c.Args[0] == "submit");
    }

    static RootCommand Cli()
    {
        var root = new RootCommand();
        foreach (var c in Commands.All()) root.Subcommands.Add(c);
        return root;
    }

    /// <summary>What is wrong with one documented command line: unknown command, missing subcommand, unknown option.</summary>
    static List<string> Problems(RootCommand root, string where, string[] args)
    {
        var errors = new List<string>();
        Command cmd = root;
        int i = 0;
        for (; i < args.Length && cmd.Subcommands.FirstOrDefault(s => s.Name == args[i] || s.Aliases.Contains(args[i])) is { } sub; i++) cmd = sub;
        if (cmd == root) return [$"{where}: 'retok {args[0]}' is not a command"];
        if (cmd.Subcommands.Count > 0 && cmd.Action is null)
            errors.Add($"{where}: 'retok {string.Join(' ', args.Take(i))}' needs a subcommand ({string.Join(", ", cmd.Subcommands.Select(s => s.Name))}), got '{args.ElementAtOrDefault(i)}'");
        var names = cmd.Options.SelectMany(o => o.Aliases.Append(o.Name)).ToHashSet();
        for (; i < args.Length; i++)
        {
            var m = Regex.Match(args[i], @"^\[?(--[a-z0-9][a-z0-9-]*)");
            if (m.Success && m.Groups[1].Value is var opt && opt != "--help" && !names.Contains(opt))
                errors.Add($"{where}: 'retok {cmd.Name}' has no option {opt}");
        }
        return errors;
    }

    [Fact]
    public void Every_command_and_option_in_the_docs_exists()
    {
        var root = Cli();
        var errors = DocCommands().SelectMany(c => Problems(root, c.Where, c.Args)).ToList();
        Assert.True(errors.Count == 0, string.Join("\n", errors));
    }

    [Fact]
    public void The_check_catches_a_renamed_command_or_option()
    {
        var root = Cli();
        Assert.Contains("has no option --sett", Assert.Single(Problems(root, "x", ["submit", "a.yaml", "--sett", "k=v"])));
        Assert.Contains("needs a subcommand", Assert.Single(Problems(root, "x", ["runs", "wacth", "12"])));
        Assert.Contains("is not a command", Assert.Single(Problems(root, "x", ["submitt", "a.yaml"])));
        Assert.Empty(Problems(root, "x", ["worker", "--queues", "gpu,cpu", "[--gpus", "0,1]"]));
    }

    [Fact]
    public void Every_submit_in_the_docs_validates_with_its_overrides()
    {
        var root = Proc.Root;
        var errors = new List<string>();
        int checkedSpecs = 0;
        foreach (var (where, args) in DocCommands().Where(c => c.Args[0] == "submit" && c.Args.Length > 1))
        {
            if (PlaceholderSpecs.Contains(args[1])) continue;
            var overrides = new List<string>();
            for (int i = 2; i + 1 < args.Length; i++)
                if (args[i] == "--set") overrides.Add(args[++i]);
            try
            {
                JobSpecs.Load(Path.Combine(root, args[1]), overrides, JobKindRegistry.Default);
                checkedSpecs++;
            }
            catch (Exception e) { errors.Add($"{where}: retok {string.Join(' ', args)}: {e.Message}"); }
        }
        Assert.True(errors.Count == 0, string.Join("\n", errors));
        Assert.True(checkedSpecs >= 3, $"only {checkedSpecs} submit lines checked");
    }
}

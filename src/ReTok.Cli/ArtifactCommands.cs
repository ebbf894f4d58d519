using System.CommandLine;
using ReTok.Engine;
using ReTok.Tracking;
using Spectre.Console;

namespace ReTok.Cli;

/// <summary>
/// `retok artifacts list RUN`, `retok artifacts get RUN NAME [--out PATH]` (sha256-verified download) and
/// `retok artifacts import [NAME=]FILE... [--name RUN_NAME] [--experiment E]` (files made elsewhere become a run's artifacts).
/// </summary>
public static class ArtifactCommands
{
    static readonly Argument<long> RunId = new("run") { Description = "run id" };

    public static Command Build()
    {
        var cmd = new Command("artifacts", "artifacts of a run");
        var list = new Command("list", "list a run's artifacts") { RunId };
        list.WithStoreOptions();
        list.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var id = pr.GetValue(RunId);
            _ = await c.Tracker.Runs.GetAsync(id, ct) ?? throw new CliError($"run {id} does not exist");
            var arts = await c.Tracker.ListArtifactsAsync(id, ct);
            if (arts.Count == 0) Console.WriteLine($"run {id} has no artifacts");
            else AnsiConsole.Write(Table(arts));
            return 0;
        }));

        var name = new Argument<string>("name") { Description = "artifact name, e.g. result.json or checkpoints/latest" };
        var output = new Option<string?>("--out", "-o") { Description = "destination file (default: ./<last part of NAME>)" };
        var get = new Command("get", "download an artifact; its sha256 is verified before the file appears") { RunId, name, output };
        get.WithStoreOptions();
        get.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            await using var c = await CliSupport.ClientAsync(pr, ct);
            var id = pr.GetValue(RunId);
            var n = pr.GetValue(name)!;
            var a = await c.Tracker.GetArtifactAsync(id, n, ct);
            if (a is null)
            {
                var names = (await c.Tracker.ListArtifactsAsync(id, ct)).Select(x => x.Name).ToList();
                throw new CliError($"run {id} has no artifact '{n}' (it has: {(names.Count == 0 ? "none" : string.Join(", ", names))})");
            }
            var dest = pr.GetValue(output) ?? Path.GetFileName(a.Name);
            if (Directory.Exists(dest)) dest = Path.Combine(dest, Path.GetFileName(a.Name));
            await c.Tracker.DownloadArtifactAsync(a, dest, ct);
            Console.WriteLine($"{Path.GetFullPath(dest)}  {CliSupport.Size(a.SizeBytes)}  sha256 {a.Sha256} (verified)");
            return 0;
        }));
        var files = new Argument<string[]>("files") { Description = "FILE or NAME=FILE (NAME: the artifact name, default the file's name)", Arity = ArgumentArity.OneOrMore };
        var runName = new Option<string?>("--name") { Description = "name of the import run, e.g. released-vq-sb256" };
        var experiment = new Option<string?>("--experiment") { Description = "experiment the import run belongs to" };
        var import = new Command("import", "register files made elsewhere (released checkpoints, reference batches) as the artifacts of a new run, for specs to take as run:ID/NAME")
            { files, runName, experiment };
        import.WithStoreOptions();
        import.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            var pairs = pr.GetValue(files)!.Select(a => a.IndexOf('=') is var i and > 0 ? (Name: a[..i], Path: a[(i + 1)..]) : (Name: Path.GetFileName(a), Path: a)).ToList();
            await using var c = await CliSupport.ClientAsync(pr, ct);
            long id;
            try { id = await c.ImportAsync(pairs, pr.GetValue(runName), pr.GetValue(experiment), ct); }
            catch (ArgumentException e) { throw new CliError(e.Message); }
            AnsiConsole.Write(Table(await c.Tracker.ListArtifactsAsync(id, ct)));
            Console.WriteLine($"run {id} (kind {JobClient.ImportKind}): use its files as inputs, e.g. {{tokenizer: run:{id}/{pairs[0].Name}}}");
            return 0;
        }));
        cmd.Subcommands.Add(list);
        cmd.Subcommands.Add(get);
        cmd.Subcommands.Add(import);
        return cmd;
    }

    public static Table Table(IEnumerable<Artifact> arts)
    {
        var t = new Table().Border(TableBorder.Simple).AddColumns("name", "kind", "size", "sha256", "created", "metadata");
        foreach (var a in arts)
            t.AddRow(Markup.Escape(a.Name), Markup.Escape(a.Kind), CliSupport.Size(a.SizeBytes), a.Sha256[..12],
                a.CreatedAt.ToLocalTime().ToString("MM-dd HH:mm:ss"), Markup.Escape(a.Metadata == "{}" ? "" : a.Metadata));
        return t;
    }
}

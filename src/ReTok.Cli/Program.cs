using System.CommandLine;
using ReTok.Cli;
using ReTok.Engine;
using ReTok.Jobs;

JobKindRegistry.Default = JobKinds.All;
var root = new RootCommand("retok — ReTok tokenizer research pipeline as tracked batch jobs");
foreach (var c in Commands.All()) root.Subcommands.Add(c);
// ProcessTerminationTimeout = null: System.CommandLine would otherwise exit 2 s after SIGTERM/SIGINT (code 143/130),
// cutting short `retok worker`'s graceful shutdown (checkpoint + re-queue); the worker handles those signals itself.
return await CliSupport.InvokeAsync(root.Parse(args), new InvocationConfiguration { ProcessTerminationTimeout = null });

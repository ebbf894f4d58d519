using System.CommandLine;
using ReTok.Cli;

var root = new RootCommand("retok — ReTok tokenizer research pipeline as tracked batch jobs");
foreach (var c in Commands.All()) root.Subcommands.Add(c);
return await root.Parse(args).InvokeAsync();

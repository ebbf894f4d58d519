using System.CommandLine;
using Microsoft.EntityFrameworkCore;
using ReTok.Tracking;

namespace ReTok.Cli;

public static class DbCommands
{
    public static readonly Option<string?> DbOption = new("--db") { Description = "PostgreSQL connection string (default: $RETOK_DB or the local cluster)" };

    public static Command Build()
    {
        var db = new Command("db", "tracking database");
        var migrate = new Command("migrate", "apply EF Core migrations to the tracking database");
        migrate.Options.Add(DbOption);
        migrate.SetAction(async (pr, ct) =>
        {
            var s = RetokSettings.FromEnvironment(pr.GetValue(DbOption));
            await TrackingDb.CheckReachableAsync(s.Db, ct);
            await using var ctx = TrackingDb.Create(s.Db);
            var pending = (await ctx.Database.GetPendingMigrationsAsync(ct)).ToList();
            await ctx.Database.MigrateAsync(ct);
            Console.WriteLine(pending.Count == 0 ? "database is up to date" : $"applied {pending.Count} migration(s): {string.Join(", ", pending)}");
            return 0;
        });
        db.Subcommands.Add(migrate);
        return db;
    }
}

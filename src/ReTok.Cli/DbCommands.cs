using System.CommandLine;
using ReTok.Tracking;

namespace ReTok.Cli;

public static class DbCommands
{
    public static readonly Option<string?> DbOption = new("--db") { Description = "PostgreSQL connection string (default: $RETOK_DB or the local cluster)" };

    public static Command Build()
    {
        var db = new Command("db", "tracking database");
        var migrate = new Command("migrate", "create the tracking database if missing and apply EF Core migrations (under the migration lock)");
        migrate.Options.Add(DbOption);
        migrate.SetAction((pr, ct) => CliSupport.Guard(async () =>
        {
            var s = RetokSettings.FromEnvironment(pr.GetValue(DbOption));
            // The same path as workers' auto-migration: one advisory lock, so a Job and starting workers never race.
            var applied = await TrackingSchema.EnsureAsync(s.Db, ct);
            Console.WriteLine(applied.Count == 0 ? "database is up to date" : $"applied {applied.Count} migration(s): {string.Join(", ", applied)}");
            return 0;
        }));
        db.Subcommands.Add(migrate);
        return db;
    }
}

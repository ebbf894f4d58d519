using System.CommandLine;
using ReTok.Dashboard;
using ReTok.Dashboard.Auth;
using ReTok.Engine;
using ReTok.Tracking;

namespace ReTok.Cli;

/// <summary>`retok dashboard` (the web UI + API host), `retok users` and `retok tokens` (who may use it).</summary>
public static class DashboardCommands
{
    static readonly Option<string?> Artifacts = new("--artifacts") { Description = "artifact store: folder, file:PATH or blob:CONTAINER;CONNECTION (default: $RETOK_ARTIFACTS or .state/artifacts)" };

    public static IEnumerable<Command> Build()
    {
        yield return Dashboard();
        yield return Users();
        yield return Tokens();
    }

    static Command Dashboard()
    {
        var urls = new Option<string[]>("--urls") { Description = "listen URLs (default http://127.0.0.1:5080); a non-loopback address needs an admin user", AllowMultipleArgumentsPerToken = true };
        var jobs = new Option<string>("--jobs") { Description = "folder of spec files offered on the submit page", DefaultValueFactory = _ => "jobs" };
        var maxUpload = new Option<long>("--max-upload") { Description = "largest accepted request body in bytes", DefaultValueFactory = _ => 1 << 20 };
        var trustForwarded = new Option<bool>("--trust-forwarded-headers") { Description = "behind a TLS-terminating reverse proxy: honour X-Forwarded-For/-Proto from loopback and --known-proxy, and mark cookies Secure" };
        var knownProxy = new Option<string[]>("--known-proxy") { Description = "IP or CIDR network of a reverse proxy whose forwarded headers count (with --trust-forwarded-headers)", AllowMultipleArgumentsPerToken = true };
        var cmd = new Command("dashboard", "serve the admin dashboard, the JSON API (/openapi/v1.json) and Hangfire's dashboard (/hangfire)");
        cmd.Options.Add(urls);
        cmd.Options.Add(jobs);
        cmd.Options.Add(maxUpload);
        cmd.Options.Add(trustForwarded);
        cmd.Options.Add(knownProxy);
        cmd.Options.Add(DbCommands.DbOption);
        cmd.Options.Add(Artifacts);
        cmd.SetAction((pr, ct) => Guard(async () =>
        {
            var engine = EngineOptions.FromEnvironment(pr.GetValue(DbCommands.DbOption), pr.GetValue(Artifacts));
            var settings = RetokSettings.FromEnvironment(engine.Db, engine.Artifacts);
            var list = (pr.GetValue(urls) ?? []).SelectMany(u => u.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();
            var o = new DashboardOptions
            {
                Engine = engine,
                Urls = list.Count > 0 ? list : ["http://127.0.0.1:5080"],
                JobsDir = Path.GetFullPath(pr.GetValue(jobs)!),
                MaxUploadBytes = pr.GetValue(maxUpload),
                KeysDir = Path.Combine(settings.Home, "dashboard-keys"),
                LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
                TrustForwardedHeaders = pr.GetValue(trustForwarded),
                KnownProxies = pr.GetValue(knownProxy) ?? [],
            };
            await using var server = await DashboardServer.StartAsync(o, ct: ct);
            Console.WriteLine($"dashboard listening on {string.Join(", ", server.Addresses)} (Ctrl+C stops it)");
            if (!await new UserStore(engine.Db).AnyUserAsync(ct))
                Console.WriteLine("no users yet: create one with `retok users add NAME --role admin`");
            try { await server.WaitForShutdownAsync(ct); } catch (OperationCanceledException) { }
            return 0;
        }));
        return cmd;
    }

    static Command Users()
    {
        var users = new Command("users", "dashboard/API users (roles: viewer, operator, admin)");

        var name = new Argument<string>("name") { Description = "user name" };
        var role = new Option<string>("--role") { Description = "viewer (read), operator (also submit/cancel/retry) or admin", DefaultValueFactory = _ => "viewer" };
        var stdin = new Option<bool>("--password-stdin") { Description = "read the password from the first line of stdin (else prompt, or $RETOK_PASSWORD)" };
        var update = new Option<bool>("--update") { Description = "change the password/role of an existing user" };
        var add = new Command("add", "create a user (password hashed with PBKDF2)") { name, role, stdin, update, DbCommands.DbOption };
        add.SetAction((pr, ct) => Guard(async () =>
        {
            if (!Enum.TryParse<UserRole>(pr.GetValue(role), true, out var r) || !Enum.IsDefined(r))
                throw new ArgumentException($"--role: '{pr.GetValue(role)}' is not one of viewer, operator, admin");
            var password = ReadPassword(pr.GetValue(stdin));
            var store = await StoreAsync(pr, ct);
            var u = await store.AddAsync(pr.GetValue(name)!, password, r, pr.GetValue(update), ct);
            Console.WriteLine($"user {u.Name} ({u.Role}) saved");
            return 0;
        }));

        var list = new Command("list", "list users") { DbCommands.DbOption };
        list.SetAction((pr, ct) => Guard(async () =>
        {
            foreach (var u in await (await StoreAsync(pr, ct)).ListAsync(ct))
                Console.WriteLine($"{u.Name,-24} {u.Role,-9} created {u.CreatedAt:yyyy-MM-dd}{(u.DisabledAt is { } d ? $"  DISABLED {d:yyyy-MM-dd}" : "")}");
            return 0;
        }));

        var disableName = new Argument<string>("name") { Description = "user name" };
        var disable = new Command("disable", "disable a user and revoke their tokens") { disableName, DbCommands.DbOption };
        disable.SetAction((pr, ct) => Guard(async () =>
        {
            var ok = await (await StoreAsync(pr, ct)).DisableAsync(pr.GetValue(disableName)!, ct);
            Console.WriteLine(ok ? $"user {pr.GetValue(disableName)} disabled; their tokens are revoked" : $"no user '{pr.GetValue(disableName)}'");
            return ok ? 0 : 1;
        }));
        users.Subcommands.Add(add);
        users.Subcommands.Add(list);
        users.Subcommands.Add(disable);
        return users;
    }

    static Command Tokens()
    {
        var tokens = new Command("tokens", "API tokens (Authorization: Bearer …) for the CLI and automation");

        var user = new Option<string>("--user") { Description = "owner of the token (its role applies)", Required = true };
        var label = new Option<string>("--name") { Description = "what the token is for", DefaultValueFactory = _ => "cli" };
        var days = new Option<int?>("--expires-days") { Description = "lifetime in days (default: until revoked)" };
        var create = new Command("create", "create a token; it is printed once and stored only as a hash") { user, label, days, DbCommands.DbOption };
        create.SetAction((pr, ct) => Guard(async () =>
        {
            var t = await (await StoreAsync(pr, ct)).CreateTokenAsync(pr.GetValue(user)!, pr.GetValue(label)!,
                pr.GetValue(days) is { } d ? TimeSpan.FromDays(d) : null, ct);
            Console.Error.WriteLine($"token {t.Id} '{t.Name}' for {t.UserName}{(t.ExpiresAt is { } e ? $", expires {e:yyyy-MM-dd}" : "")}; it is shown only now:");
            Console.WriteLine(t.Token);
            return 0;
        }));

        var listUser = new Option<string?>("--user") { Description = "only this user's tokens" };
        var list = new Command("list", "list tokens (prefix, owner, last use, revoked)") { listUser, DbCommands.DbOption };
        list.SetAction((pr, ct) => Guard(async () =>
        {
            foreach (var t in await (await StoreAsync(pr, ct)).ListTokensAsync(pr.GetValue(listUser), ct))
                Console.WriteLine($"{t.Id,5} {t.Prefix}…  {t.User,-16} {t.Name,-16} created {t.CreatedAt:yyyy-MM-dd HH:mm}" +
                    $"{(t.LastUsedAt is { } u ? $"  used {u:yyyy-MM-dd HH:mm}" : "")}{(t.RevokedAt is { } r ? $"  REVOKED {r:yyyy-MM-dd HH:mm}" : "")}" +
                    $"{(t.ExpiresAt is { } e ? $"  expires {e:yyyy-MM-dd}" : "")}");
            return 0;
        }));

        var which = new Argument<string>("token") { Description = "token id (from `retok tokens list`) or the token itself" };
        var revoke = new Command("revoke", "revoke a token (takes effect on the next request)") { which, DbCommands.DbOption };
        revoke.SetAction((pr, ct) => Guard(async () =>
        {
            var ok = await (await StoreAsync(pr, ct)).RevokeTokenAsync(pr.GetValue(which)!, ct);
            Console.WriteLine(ok ? "token revoked" : "no live token matched");
            return ok ? 0 : 1;
        }));
        tokens.Subcommands.Add(create);
        tokens.Subcommands.Add(list);
        tokens.Subcommands.Add(revoke);
        return tokens;
    }

    static async Task<UserStore> StoreAsync(ParseResult pr, CancellationToken ct)
    {
        var o = EngineOptions.FromEnvironment(pr.GetValue(DbCommands.DbOption));
        if (o.AutoMigrate) await TrackingSchema.EnsureAsync(o.Db, ct);
        else await TrackingDb.CheckReachableAsync(o.Db, ct);
        return new UserStore(o.Db);
    }

    static string ReadPassword(bool fromStdin)
    {
        if (fromStdin) return Console.In.ReadLine() ?? throw new ArgumentException("--password-stdin: stdin is empty");
        if (Environment.GetEnvironmentVariable("RETOK_PASSWORD") is { Length: > 0 } env) return env;
        if (Console.IsInputRedirected) throw new ArgumentException("no terminal to prompt for the password: pass --password-stdin or set RETOK_PASSWORD");
        var first = Prompt("password: ");
        if (Prompt("again: ") != first) throw new ArgumentException("the passwords differ");
        return first;
    }

    static string Prompt(string label)
    {
        Console.Write(label);
        var sb = new System.Text.StringBuilder();
        while (true)
        {
            var k = Console.ReadKey(intercept: true);
            if (k.Key == ConsoleKey.Enter) break;
            if (k.Key == ConsoleKey.Backspace) { if (sb.Length > 0) sb.Length--; continue; }
            sb.Append(k.KeyChar);
        }
        Console.WriteLine();
        return sb.ToString();
    }

    /// <summary><see cref="CliSupport.Guard"/> plus the dashboard's own start-up errors.</summary>
    static Task<int> Guard(Func<Task<int>> body) => CliSupport.Guard(async () =>
    {
        try { return await body(); }
        catch (DashboardConfigException ex) { CliSupport.PrintError(ex.Message); return 2; }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException) { CliSupport.PrintError(ex.Message); return 2; }
        catch (IOException ex) when (ex.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
        { CliSupport.PrintError($"cannot listen: {ex.Message}"); return 2; }
    });
}

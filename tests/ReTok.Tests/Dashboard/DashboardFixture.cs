using System.IO.Compression;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.RegularExpressions;
using ReTok.Dashboard;
using ReTok.Dashboard.Auth;
using ReTok.Engine;
using ReTok.Tests.Tracking;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>
/// A real dashboard on Kestrel (127.0.0.1, free port) over a per-class PostgreSQL database, seeded with users of each
/// role, tokens, a jobs/ folder and finished runs with metrics, artifacts (a PNG grid), logs and lineage.
/// </summary>
public sealed class DashboardFixture : IAsyncLifetime
{
    public const string Password = "correct-horse-1";
    public TestDatabase Db { get; } = new();
    public DashboardServer Server { get; private set; } = null!;
    public string BaseUrl { get; private set; } = "";
    public string JobsDir { get; } = Directory.CreateTempSubdirectory("retok-jobs").FullName;
    public Dictionary<UserRole, string> Tokens { get; } = new();
    public UserStore Users { get; private set; } = null!;
    public Tracker Tracker { get; private set; } = null!;

    public long TokRun, RecRun, GenRun, FailedRun;
    public byte[] GridPng = TestPng.Grid(96, 96);
    public Artifact Grid = null!;

    public async Task InitializeAsync()
    {
        await Db.InitializeAsync();
        Users = new UserStore(Db.ConnectionString);
        foreach (var role in Enum.GetValues<UserRole>())
        {
            var name = role.ToString().ToLowerInvariant();
            await Users.AddAsync(name, Password, role);
            Tokens[role] = (await Users.CreateTokenAsync(name, "tests")).Token;
        }
        await File.WriteAllTextAsync(Path.Combine(JobsDir, "selftest.yaml"), "kind: selftest\nname: from-jobs\nexperiment: engine\nparams:\n  n: 40\n  step_ms: 100\n");
        await File.WriteAllTextAsync(Path.Combine(JobsDir, "broken.yaml"), "kind: selftest\nparams:\n  n: lots\n");
        Tracker = Db.CreateTracker();
        await SeedAsync();
        Server = await DashboardServer.StartAsync(new DashboardOptions
        {
            Engine = new EngineOptions { Db = Db.ConnectionString, Artifacts = Db.ArtifactRoot },
            Urls = ["http://127.0.0.1:0"],
            JobsDir = JobsDir,
            LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
        });
        BaseUrl = Server.Addresses.Single().TrimEnd('/');
    }

    async Task SeedAsync()
    {
        var exp = await Tracker.EnsureExperimentAsync("paper");
        Run New(string name, string kind, RunStatus st, string parameters, params string[] tags) => new()
        {
            Name = name, Kind = kind, Status = st, ExperimentId = exp, Parameters = parameters, Tags = tags.ToList(),
            StartedAt = DateTimeOffset.UtcNow.AddMinutes(-5), FinishedAt = st.IsTerminal() ? DateTimeOffset.UtcNow : null, Progress = 1,
        };
        TokRun = (await Tracker.Runs.InsertAsync(New("tok-train", "selftest", RunStatus.Succeeded, """{"n": 40, "step_ms": 100, "optim": {"lr": 0.0001}}""", "tokenizer=ReTok-S-B"))).Id;
        await Tracker.LogMetricsAsync(TokRun, Enumerable.Range(0, 50).Select(i => new MetricValue("train/loss", i * 10, 2.0 / (1 + 0.2 * i))).ToList());
        Grid = await Tracker.SaveArtifactAsync(TokRun, "samples/grid.png", new MemoryStream(GridPng), new ArtifactSaveOptions { Kind = "image", ContentType = "image/png" });
        var result = await Tracker.SaveArtifactAsync(TokRun, "result.json", new MemoryStream("""{"total": 820}"""u8.ToArray()), new ArtifactSaveOptions { Kind = "json", ContentType = "application/json" });
        await Tracker.SaveArtifactAsync(TokRun, "notes.html", new MemoryStream("<script>alert(1)</script>"u8.ToArray()), new ArtifactSaveOptions { ContentType = "text/html" });
        await Tracker.LogAsync(TokRun, [new LogLine("info", "starting tokenizer training"), new LogLine("warn", "loss spike at step 120"), new LogLine("info", "done")]);

        RecRun = (await Tracker.Runs.InsertAsync(New("rec-eval", "selftest", RunStatus.Succeeded, """{"n": 1}""", "eval"))).Id;
        await Tracker.RecordUseAsync(RecRun, result.Id, "tokenizer");
        await Tracker.LogMetricsAsync(RecRun, [new("rfid@k=32", 0, 2.5), new("rfid@k=256", 0, 1.2), new("rfid@k=256", 1, 1.01)]);

        GenRun = (await Tracker.Runs.InsertAsync(New("gen-eval", "selftest", RunStatus.Succeeded, """{"n": 2}""", "generator=LlamaGen-L", "tokenizer=ReTok-S-B"))).Id;
        await Tracker.LogMetricsAsync(GenRun, [
            new("gfid@k=256", 0, 3.1), new("is@k=256", 0, 200), new("precision@k=256", 0, 0.7), new("recall@k=256", 0, 0.6),
            new("gfid@k=256,cfg=1.5", 0, 2.66), new("is@k=256,cfg=1.5", 0, 231.7), new("precision@k=256,cfg=1.5", 0, 0.82), new("recall@k=256,cfg=1.5", 0, 0.57)]);

        FailedRun = (await Tracker.Runs.InsertAsync(New("tok-train-small", "selftest", RunStatus.Failed, """{"n": 20, "step_ms": 100, "optim": {"lr": 0.0002}}"""))).Id;
        await Tracker.LogMetricsAsync(FailedRun, Enumerable.Range(0, 30).Select(i => new MetricValue("train/loss", i * 10, 2.5 / (1 + 0.1 * i))).ToList());
        await using var db = Tracker.CreateDb();
        var f = await db.Runs.FindAsync(FailedRun);
        f!.FailureReason = "JobFailedException: loss became NaN at step 290";
        await db.SaveChangesAsync();
    }

    /// <summary>A client that does not follow redirects; Bearer when a role is given, cookies when <paramref name="cookies"/>.</summary>
    public HttpClient Client(UserRole? bearer = null, bool cookies = false)
    {
        var c = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false, UseCookies = cookies, CookieContainer = new CookieContainer() })
        { BaseAddress = new Uri(BaseUrl) };
        if (bearer is { } r) c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Tokens[r]);
        return c;
    }

    /// <summary>Logs in through the HTML form (antiforgery token included) and returns the cookie client.</summary>
    public async Task<HttpClient> LoginAsync(string user, string password = Password)
    {
        var c = Client(cookies: true);
        var form = await c.GetStringAsync("/login");
        var res = await c.PostAsync("/login", new FormUrlEncodedContent(new Dictionary<string, string>
        {
            ["__RequestVerificationToken"] = CsrfToken(form), ["user"] = user, ["password"] = password, ["returnUrl"] = "/runs",
        }));
        Assert.Equal(HttpStatusCode.Redirect, res.StatusCode);
        Assert.Equal("/runs", res.Headers.Location?.OriginalString);
        return c;
    }

    public static string CsrfToken(string html) =>
        Regex.Match(html, "name=\"__RequestVerificationToken\" value=\"([^\"]+)\"").Groups[1].Value is { Length: > 0 } t ? t
            : throw new Xunit.Sdk.XunitException("no antiforgery token in the page");

    public async Task DisposeAsync()
    {
        if (Server is not null) await Server.DisposeAsync();
        if (Tracker is not null) await Tracker.DisposeAsync();
        await Db.DisposeAsync();
        try { Directory.Delete(JobsDir, true); } catch (IOException) { }
    }
}

/// <summary>Writes small RGB PNGs (a 2x2 grid of coloured tiles) without an imaging library.</summary>
public static class TestPng
{
    public static byte[] Grid(int w, int h)
    {
        var raw = new MemoryStream();
        byte[][] colors = [[220, 40, 40], [40, 160, 60], [40, 80, 220], [240, 200, 40]];
        for (var y = 0; y < h; y++)
        {
            raw.WriteByte(0); // filter: none
            for (var x = 0; x < w; x++)
            {
                var c = colors[(y * 2 / h) * 2 + x * 2 / w];
                raw.Write(c);
            }
        }
        using var png = new MemoryStream();
        png.Write([137, 80, 78, 71, 13, 10, 26, 10]);
        var ihdr = new byte[13];
        BinaryBE(ihdr, 0, w); BinaryBE(ihdr, 4, h);
        ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
        Chunk(png, "IHDR", ihdr);
        using (var z = new MemoryStream())
        {
            using (var zs = new ZLibStream(z, CompressionLevel.Optimal, leaveOpen: true)) zs.Write(raw.ToArray());
            Chunk(png, "IDAT", z.ToArray());
        }
        Chunk(png, "IEND", []);
        return png.ToArray();
    }

    static void BinaryBE(byte[] b, int at, int v) { b[at] = (byte)(v >> 24); b[at + 1] = (byte)(v >> 16); b[at + 2] = (byte)(v >> 8); b[at + 3] = (byte)v; }

    static void Chunk(Stream s, string type, byte[] data)
    {
        var len = new byte[4];
        BinaryBE(len, 0, data.Length);
        s.Write(len);
        var td = Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        s.Write(td);
        var crc = new byte[4];
        BinaryBE(crc, 0, (int)Crc32(td));
        s.Write(crc);
    }

    static uint Crc32(byte[] data)
    {
        var c = 0xFFFFFFFFu;
        foreach (var b in data)
        {
            c ^= b;
            for (var k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }
}

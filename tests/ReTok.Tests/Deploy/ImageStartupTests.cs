using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Npgsql;
using ReTok.Tests.Infra;
using ReTok.Tests.Tracking;
using k8s.Models;

namespace ReTok.Tests.Deploy;

/// <summary>
/// The shipped images and manifests start (issue 14): with no Docker engine here, each test runs the container's
/// command directly, as the image's user (uid 1000, via setpriv), with the image's environment (Dockerfile ENV, then
/// the k8s ConfigMap, then a test "secret": RETOK_DB on the test server, RETOK_ARTIFACTS on the test Azurite), the
/// image's folders (its `RUN install -d` lines and the manifest's volumes, under a temporary folder standing for "/"),
/// and the command from ENTRYPOINT/CMD and the manifest's command/args (Kubernetes rules). The binary is the CLI as
/// built for this test run (the test output folder stands for /app; `dotnet publish` would copy 1 GB per run).
/// </summary>
public class ImageStartupTests
{
    /// <summary>The final stage of a Dockerfile, as far as starting the container goes.</summary>
    sealed record Image(string Base, Dictionary<string, string> Env, int Uid, int Gid, List<string[]> Dirs, string[] Entrypoint, string[] Cmd);

    static Image ReadDockerfile(string file)
    {
        var text = File.ReadAllText(Path.Combine(Proc.Root, "docker", file));
        var lines = new List<string>();
        var cur = "";
        foreach (var raw in text.Split('\n'))
        {
            var l = raw.TrimEnd();
            if (cur.Length == 0 && l.TrimStart().StartsWith('#')) continue;
            if (l.EndsWith('\\')) { cur += l[..^1] + " "; continue; }
            lines.Add(cur + l); cur = "";
        }
        Image? img = null;
        foreach (var l in lines.Where(l => l.Length > 0))
        {
            var (op, rest) = (l.Split(' ', 2)[0], l.Split(' ', 2).ElementAtOrDefault(1)?.Trim() ?? "");
            switch (op)
            {
                case "FROM": img = new Image(rest.Split(' ')[0], new(), 0, 0, new(), [], []); break;   // a new stage
                case "ENV":
                    foreach (var kv in rest.Split(' ', StringSplitOptions.RemoveEmptyEntries)) { var p = kv.Split('=', 2); img!.Env[p[0]] = p[1]; }
                    break;
                case "USER": var u = rest.Split(':'); img = img! with { Uid = int.Parse(u[0]), Gid = int.Parse(u.ElementAtOrDefault(1) ?? u[0]) }; break;
                case "RUN" when rest.StartsWith("install -d"): img!.Dirs.Add(rest.Split(' ', StringSplitOptions.RemoveEmptyEntries)); break;
                case "ENTRYPOINT": img = img! with { Entrypoint = JsonSerializer.Deserialize<string[]>(rest)! }; break;
                case "CMD": img = img! with { Cmd = JsonSerializer.Deserialize<string[]>(rest)! }; break;
            }
        }
        return img ?? throw new InvalidOperationException($"{file}: no FROM");
    }

    static List<object> Manifests(string file) => k8s.KubernetesYaml.LoadAllFromString(File.ReadAllText(Path.Combine(Proc.Root, "infra", "k8s", file)));

    static V1PodSpec PodOf(string file) => Manifests(file).Select(o => o switch
    {
        V1Deployment d => d.Spec.Template.Spec, V1DaemonSet d => d.Spec.Template.Spec, V1Job j => j.Spec.Template.Spec, _ => null,
    }).OfType<V1PodSpec>().Single();

    static IDictionary<string, string> ConfigMap() => Manifests("config.yaml").OfType<V1ConfigMap>().Single().Data;

    /// <summary>A container of <paramref name="pod"/>'s single container image, "/" being a temporary folder.</summary>
    sealed class Container : IDisposable
    {
        public readonly string Root = Path.Combine(Path.GetTempPath(), $"retok-image-{Guid.NewGuid():N}"[..24]);
        public readonly Dictionary<string, string?> Env = new();
        public readonly List<string> Argv = new();
        readonly List<string> _user = new();

        public Container(V1PodSpec pod, IDictionary<string, string?> secret, string[]? argsOverride = null)
        {
            Directory.CreateDirectory(Root);   // root-owned, 0755: like "/" of the image, not writable for its user
            var c = pod.Containers.Single();
            var image = ReadDockerfile(c.Image.Split('/').Last().Split(':')[0] + ".Dockerfile");
            // the image's folders, made by its own RUN line (paths moved under Root)
            foreach (var run in image.Dirs)
            {
                using var install = Proc.Run("install", run.Skip(1).Select(a => a.StartsWith('/') ? Root + a : a));
                Assert.True(install.ExitCode == 0, install.Output);
            }
            var sc = pod.SecurityContext;
            int uid = (int?)sc?.RunAsUser ?? image.Uid, gid = (int?)sc?.RunAsGroup ?? image.Gid;
            Assert.NotEqual(0, uid);
            // volumes as the kubelet mounts them: a fresh root-owned folder; with fsGroup, group-owned and group-writable
            foreach (var m in c.VolumeMounts ?? [])
            {
                var dir = Root + m.MountPath;
                if (Directory.Exists(dir)) Directory.Delete(dir, true);   // the volume hides the image's folder
                Directory.CreateDirectory(dir);
                if (sc?.FsGroup is { } fs && m.ReadOnlyProperty != true) Chown(dir, $"0:{fs}", "2775");
                else Chown(dir, "0:0", "0755");
            }
            _user.AddRange(["setpriv", $"--reuid={uid}", $"--regid={gid}"]);
            _user.Add(sc?.FsGroup is { } g ? $"--groups={g}" : "--clear-groups");
            _user.Add("--");

            Env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
            Env["HOME"] = Root;   // uid 1000 has no passwd entry in the aspnet image: HOME is "/"
            if (image.Base.Contains("dotnet/aspnet")) { Env["DOTNET_RUNNING_IN_CONTAINER"] = "true"; Env["ASPNETCORE_HTTP_PORTS"] = "8080"; }
            foreach (var (k, v) in image.Env) Env[k] = Rebase(v);
            if (c.EnvFrom?.Any(e => e.ConfigMapRef?.Name == "retok-config") == true)
                foreach (var (k, v) in ConfigMap()) Env[k] = Rebase(v);
            foreach (var (k, v) in secret) Env[k] = v;

            // Kubernetes: command replaces ENTRYPOINT (and drops CMD); args replace CMD
            Argv.AddRange(c.Command ?? image.Entrypoint);
            Argv.AddRange(argsOverride ?? c.Args ?? (c.Command != null ? [] : image.Cmd));
        }

        string Rebase(string v) => v == "/data" || v.StartsWith("/data/") ? Root + v : v;

        static void Chown(string dir, string owner, string mode)
        {
            using (var p = Proc.Run("chown", [owner, dir])) Assert.True(p.ExitCode == 0, p.Output);
            using (var p = Proc.Run("chmod", [mode, dir])) Assert.True(p.ExitCode == 0, p.Output);
        }

        public string At(string containerPath) => Root + containerPath;

        /// <summary>Starts the command as the image's user in the image's WORKDIR (/app = the test output folder).</summary>
        public Proc Start(IEnumerable<string>? argv = null) =>
            new(_user[0], _user.Skip(1).Concat(argv ?? Argv), Env, cwd: AppContext.BaseDirectory, clearEnv: true);

        public void Dispose() { try { Directory.Delete(Root, true); } catch (IOException) { } }
    }

    static (string Db, Dictionary<string, string?> Secret) FreshSecret()
    {
        var db = $"retok_img_{Guid.NewGuid():N}"[..24];   // not created: the migrate Job / auto-migration must create it
        return (db, new Dictionary<string, string?>
        {
            ["RETOK_DB"] = TestServers.Postgres(db),
            ["RETOK_ARTIFACTS"] = $"blob:img-{Guid.NewGuid():N}"[..20] + ";" + TestServers.Blob,
        });
    }

    static async Task DropAsync(string db)
    {
        NpgsqlConnection.ClearAllPools();
        await using var c = new NpgsqlConnection(TestServers.Postgres());
        await c.OpenAsync();
        await using var cmd = new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)", c);
        await cmd.ExecuteNonQueryAsync();
    }

    static void NoStackTrace(Proc p) => Assert.False(p.Stderr.Contains("   at ") || p.Stdout.Contains("   at "), "stack trace printed\n" + p.Output);

    [Fact]
    public async Task MigrateJobThenCpuWorkerStartAsTheImageUser()
    {
        var (db, secret) = FreshSecret();
        try
        {
            using (var job = new Container(PodOf("migrate-job.yaml"), secret))
            using (var migrate = job.Start())
            {
                Assert.True(await migrate.WaitAsync(TimeSpan.FromMinutes(2)) == 0, migrate.Output);
                Assert.Contains("applied", migrate.Stdout);
            }

            using var box = new Container(PodOf("worker-cpu.yaml"), secret);
            using var worker = box.Start();
            await worker.WaitForAsync(" ready", TimeSpan.FromMinutes(2));
            NoStackTrace(worker);
            await using (var c = new NpgsqlConnection(TestServers.Postgres(db)))
            {
                await c.OpenAsync();
                await using var q = new NpgsqlCommand("SELECT queues FROM retok.workers", c);
                Assert.Equal("cpu", (string)(await q.ExecuteScalarAsync())!);
            }
            Assert.True(Directory.Exists(box.At("/data/scratch")));
            worker.Terminate();   // what `docker stop` / the kubelet sends
            Assert.True(await worker.WaitAsync(TimeSpan.FromMinutes(1)) == 0, worker.Output);
        }
        finally { await DropAsync(db); }
    }

    [Fact]
    public async Task DashboardStartsAsTheImageUserAndKeepsItsLoginKeysOnTheVolume()
    {
        var (db, secret) = FreshSecret();
        secret["RETOK_PASSWORD"] = "correct-horse-7";
        try
        {
            using var box = new Container(PodOf("dashboard.yaml"), secret);
            // binding 0.0.0.0 needs an admin first: the image's own `users add` (the Dockerfile's comment)
            using (var add = box.Start(box.Argv.Take(2).Concat(["users", "add", "admin", "--role", "admin"])))
                Assert.True(await add.WaitAsync(TimeSpan.FromMinutes(2)) == 0, add.Output);

            // the container's port 8080 is its own; here the host's network is shared, so only the port changes
            using var l = new TcpListener(IPAddress.Loopback, 0);
            l.Start(); var port = ((IPEndPoint)l.LocalEndpoint).Port; l.Stop();
            var argv = box.Argv.Select(a => a.Replace(":8080", $":{port}")).ToList();
            Assert.Contains(argv, a => a == $"http://0.0.0.0:{port}");
            using var dash = box.Start(argv);
            await dash.WaitForAsync("dashboard listening", TimeSpan.FromMinutes(2));
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/healthz")).StatusCode);
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/login")).StatusCode);   // issues the anti-forgery cookie: a key is made
            var keys = box.At("/data/dashboard-keys");
            Assert.NotEmpty(Directory.GetFiles(keys, "key-*.xml"));
            NoStackTrace(dash);
            dash.Terminate();
            await dash.WaitAsync(TimeSpan.FromMinutes(1));
        }
        finally { await DropAsync(db); }
    }

    /// <summary>A data folder the image user cannot write (a volume mounted without fsGroup): one line naming it.</summary>
    [Fact]
    public async Task UnwritableDataFolderIsOneClearLine()
    {
        var (db, secret) = FreshSecret();
        try
        {
            using var box = new Container(PodOf("worker-cpu.yaml"), secret);
            Directory.Delete(box.At("/data/scratch"), true);
            using (var p = Proc.Run("chown", ["0:0", box.At("/data")])) Assert.True(p.ExitCode == 0, p.Output);
            using var worker = box.Start();
            Assert.Equal(5, await worker.WaitAsync(TimeSpan.FromMinutes(2)));
            Assert.Contains($"Access to the path '{box.At("/data/scratch")}' is denied", worker.Stderr);
            Assert.Contains("(uid 1000) needs write access to RETOK_HOME", worker.Stderr);
            NoStackTrace(worker);
        }
        finally { await DropAsync(db); }
    }

    [Fact]
    public async Task GpuWorkerImageArgumentsAreAcceptedAndWithoutCudaSaySo()
    {
        var (db, secret) = FreshSecret();
        try
        {
            using var box = new Container(PodOf("worker-gpu.yaml"), secret);
            Assert.Contains("all", box.Argv);
            using var worker = box.Start();
            if (ReTok.Models.Devices.CudaDeviceCount() > 0)
            {
                await worker.WaitForAsync(" ready", TimeSpan.FromMinutes(2));
                worker.Terminate();
                Assert.Equal(0, await worker.WaitAsync(TimeSpan.FromMinutes(1)));
                return;
            }
            Assert.Equal(2, await worker.WaitAsync(TimeSpan.FromMinutes(2)));
            Assert.Contains("--gpus all: no CUDA device is visible", worker.Stderr);
            NoStackTrace(worker);
        }
        finally { await DropAsync(db); }
    }
}

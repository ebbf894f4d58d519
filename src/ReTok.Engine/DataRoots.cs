using System.Reflection;
using ReTok.Tracking;

namespace ReTok.Engine;

/// <summary>
/// Marks a job parameter that names a file or folder on the worker. The engine confines every such parameter to the
/// <see cref="DataRoots"/> at submit time and again on the worker before the handler runs, and hands the handler the
/// resolved path, so no kind reads a local path the policy has not checked.
/// </summary>
[AttributeUsage(AttributeTargets.Property, Inherited = true)]
public sealed class DataPathAttribute : Attribute;

/// <summary>
/// The folders job parameters may read from (<c>RETOK_DATA_ROOTS</c>, colon-separated; default: the data folders
/// under $RETOK_HOME, see <see cref="DefaultSubfolders"/>). Without it any operator could point extract-dataset at
/// /etc or the dashboard's password file and read it back through failure reasons or artifacts (docs/security.md).
/// A path is inside when its real path (every symbolic link and "..", resolved as the kernel would) is a root or below
/// one; the roots are resolved the same way.
/// </summary>
public sealed class DataRoots
{
    /// <summary>Under $RETOK_HOME: data and weights folders, the quickstart's generated images, the tiny specs' folders.
    /// Not the home itself: it holds dashboard keys, the quickstart admin password, artifacts and scratch.</summary>
    public static readonly string[] DefaultSubfolders = ["data", "weights", "quickstart/images", "synthetic", "tiny"];

    public DataRoots(IEnumerable<string> roots, string origin)
    {
        Roots = roots.Select(r => r.Trim()).Where(r => r.Length > 0).Select(RealPath).Distinct().ToList();
        Origin = origin;
    }

    public IReadOnlyList<string> Roots { get; }
    /// <summary>Where the roots came from (for messages): "RETOK_DATA_ROOTS" or the default.</summary>
    public string Origin { get; }

    /// <summary>RETOK_DATA_ROOTS when set (an empty value allows nothing), else the defaults under <paramref name="home"/> ($RETOK_HOME).</summary>
    public static DataRoots FromEnvironment(string? home = null)
    {
        if (Environment.GetEnvironmentVariable("RETOK_DATA_ROOTS") is { } env)
            return new DataRoots(env.Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), "RETOK_DATA_ROOTS");
        home ??= RetokSettings.FromEnvironment().Home;
        return new DataRoots(DefaultSubfolders.Select(d => Path.Combine(home, d)), "default data roots under $RETOK_HOME; set RETOK_DATA_ROOTS");
    }

    /// <summary>True when <paramref name="path"/> resolves inside a root; <paramref name="real"/> is its resolved form.</summary>
    public bool Contains(string path, out string real)
    {
        real = RealPath(path);
        var r = real;
        return Roots.Any(root => r == root || r.StartsWith(root == "/" ? "/" : root + "/", StringComparison.Ordinal));
    }

    /// <summary>The resolved path of parameter <paramref name="key"/>, or an error naming the key (never the file's contents).</summary>
    public string Resolve(string key, string path) =>
        Check(key, path, out var real) is { } error ? throw new JobFailedException(error) : real;

    string? Check(string key, string path, out string real)
    {
        real = path;
        if (path.Length == 0 || path.Any(char.IsControl)) return $"{key}: not a usable path";
        try { if (Contains(path, out real)) return null; }
        catch (IOException e) { return $"{key}: {SafeText.Clean(path)}: {e.Message}"; }
        var shown = SafeText.Clean(path);
        var via = Path.IsPathRooted(path) && real == Path.GetFullPath(path) ? "" : $" (resolves to {real})";
        return $"{key}: {shown}{via} is outside the data roots the worker may read ({(Roots.Count == 0 ? "none" : string.Join(", ", Roots))}; {Origin})";
    }

    /// <summary>Errors for every <see cref="DataPathAttribute"/> parameter of <paramref name="parameters"/> outside the roots (submit-time check).</summary>
    public List<string> Validate(object parameters, string prefix = "params.")
    {
        var errors = new List<string>();
        foreach (var (prop, owner, key) in PathParameters(parameters, prefix))
            if (prop.GetValue(owner) is string v && Check(key, v, out _) is { } e) errors.Add(e);
        return errors;
    }

    /// <summary>
    /// Worker side: replaces every path parameter by its resolved real path (so the handler opens exactly what was
    /// checked), or fails the run naming the parameters outside the roots.
    /// </summary>
    public void Confine(object parameters)
    {
        var errors = new List<string>();
        foreach (var (prop, owner, key) in PathParameters(parameters, ""))
        {
            if (prop.GetValue(owner) is not string v) continue;
            if (Check(key, v, out var real) is { } e) errors.Add(e);
            else prop.SetValue(owner, real);
        }
        if (errors.Count > 0) throw new JobFailedException(string.Join("; ", errors));
    }

    /// <summary>The [DataPath] string properties of a parameters record and of the records nested in it, with their snake_case key paths.</summary>
    public static IEnumerable<(PropertyInfo Prop, object Owner, string Key)> PathParameters(object parameters, string prefix, int depth = 0)
    {
        foreach (var p in parameters.GetType().GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (!p.CanRead || p.GetIndexParameters().Length > 0) continue;
            var key = prefix + ParamBinder.KeyOf(p);
            if (p.GetCustomAttribute<DataPathAttribute>() is not null)
            {
                if (p.PropertyType != typeof(string)) throw new InvalidOperationException($"{p.DeclaringType?.Name}.{p.Name}: [DataPath] needs a string property");
                yield return (p, parameters, key);
            }
            else if (depth < 8 && IsParamsRecord(p.PropertyType) && p.GetValue(parameters) is { } nested)
                foreach (var x in PathParameters(nested, key + ".", depth + 1)) yield return x;
        }
    }

    /// <summary>Our own parameter sections (records of the ReTok assemblies), not strings, collections or JSON nodes.</summary>
    public static bool IsParamsRecord(Type t) =>
        t.IsClass && t != typeof(string) && t.Namespace?.StartsWith("ReTok.", StringComparison.Ordinal) == true && !typeof(System.Collections.IEnumerable).IsAssignableFrom(t);

    /// <summary>
    /// realpath(3): the absolute path with every symbolic link and "." / ".." resolved in order (a ".." after a link
    /// goes to the link target's parent, as the kernel does). Components that do not exist are kept as written.
    /// Relative paths are taken from the current directory.
    /// </summary>
    public static string RealPath(string path)
    {
        var pending = new Stack<string>();
        void Push(string p) { foreach (var c in p.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse()) pending.Push(c); }
        Push(Path.IsPathRooted(path) ? path : Path.Combine(Directory.GetCurrentDirectory(), path));
        var cur = "/";
        int links = 0;
        while (pending.TryPop(out var c))
        {
            if (c == ".") continue;
            if (c == "..") { cur = Path.GetDirectoryName(cur) ?? "/"; continue; }
            var next = cur == "/" ? "/" + c : cur + "/" + c;
            string? target;
            try { target = new FileInfo(next).LinkTarget; }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { target = null; }
            if (target is null) { cur = next; continue; }
            if (++links > 40) throw new IOException($"too many levels of symbolic links");
            if (target.StartsWith('/')) cur = "/";
            Push(target);
        }
        return cur;
    }
}

using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;

namespace ReTok.Engine;

/// <summary>
/// A job kind's handler. One instance per execution (parameterless constructor). <typeparamref name="TParams"/> is the
/// parameters record bound from the YAML spec (snake_case keys) and stored as JSON on the run.
/// </summary>
public interface IJobHandler<in TParams> where TParams : class
{
    Task RunAsync(JobContext ctx, TParams p);
}

/// <summary>
/// A kind that fans out, in the one shape every such kind has: <see cref="IJobHandler{TParams}.RunAsync"/> (the
/// submitted run) plans the work and calls <see cref="JobContext.SpawnShardsAsync"/>; the engine then runs
/// <see cref="RunShardAsync"/> once per shard (same kind, the parent's parameters and inputs, the shard's own state in
/// <see cref="JobContext.GetFanOutState{T}"/>) and <see cref="AggregateAsync"/> once, when every shard has succeeded, as
/// run kind <c>NAME-aggregate</c> (registered with the kind). An aggregator may fan out again (a search's next round).
/// </summary>
public interface IFanOutJob<in TParams> : IJobHandler<TParams> where TParams : class
{
    Task RunShardAsync(JobContext ctx, TParams p);
    Task AggregateAsync(JobContext ctx, TParams p);
}

/// <summary>Parameters that check themselves beyond types (ranges, combinations); run at submit time and before execution.</summary>
public interface IValidatableParams
{
    /// <summary>Error messages; each should start with the snake_case key it is about.</summary>
    IEnumerable<string> Validate();
}

/// <summary>Parameters of a <see cref="JobKindAttribute.MultiNode"/> kind whose validity depends on the node count (how
/// a global batch splits over the ranks); checked at submit for <c>nodes: N</c> &gt; 1, so a bad split fails there, not
/// in the ranks' first step.</summary>
public interface IMultiNodeParams
{
    /// <summary>Error messages for running on <paramref name="nodes"/> nodes; each starts with the key it is about.</summary>
    IEnumerable<string> ValidateNodes(int nodes);
}

/// <summary>Registers a handler class as job kind <see cref="Name"/>: <c>[JobKind("selftest", Queue = "cpu")]</c>.</summary>
[AttributeUsage(AttributeTargets.Class, Inherited = false)]
public sealed class JobKindAttribute(string name) : Attribute
{
    public string Name { get; } = name;
    /// <summary>Hangfire queue: "cpu" or "gpu" (a GPU job leases one device for its lifetime).</summary>
    public string Queue { get; set; } = "cpu";
    /// <summary>Executions allowed for transient faults before the run fails (deterministic faults fail at once).</summary>
    public int MaxAttempts { get; set; } = 3;
    public string? Description { get; set; }
    /// <summary>The handler runs as N rank runs with spec key <c>nodes: N</c> (it meets its peers through
    /// <see cref="JobContext.PublishRendezvousAsync"/>/<see cref="JobContext.WaitRendezvousAsync"/>); other kinds refuse nodes &gt; 1.</summary>
    public bool MultiNode { get; set; }
}

/// <param name="AggregateOf">On the <c>NAME-aggregate</c> kind of an <see cref="IFanOutJob{TParams}"/>: NAME.</param>
public sealed record JobKindInfo(string Name, string Queue, int MaxAttempts, string? Description, Type HandlerType, Type ParamsType, string? AggregateOf = null,
    bool MultiNode = false)
{
    public const string AggregateSuffix = "-aggregate";

    /// <summary>The kind a fan-out's shards run as: the kind itself, or for an aggregator the kind it aggregates.</summary>
    public string ShardKind => AggregateOf ?? Name;

    internal Task InvokeAsync(JobContext ctx, object parameters)
    {
        var handler = Activator.CreateInstance(HandlerType)
            ?? throw new InvalidOperationException($"job kind '{Name}': cannot create {HandlerType.Name}");
        // the run's place in a fan-out picks the entry point, so a kind's shards and aggregator are the same class
        var (iface, method) = AggregateOf is not null ? (typeof(IFanOutJob<>), nameof(IFanOutJob<object>.AggregateAsync))
            : ctx.Run.FanInRunId is not null && typeof(IFanOutJob<>).MakeGenericType(ParamsType).IsAssignableFrom(HandlerType)
                ? (typeof(IFanOutJob<>), nameof(IFanOutJob<object>.RunShardAsync))
                : (typeof(IJobHandler<>), nameof(IJobHandler<object>.RunAsync));
        var run = iface.MakeGenericType(ParamsType).GetMethod(method)!;
        try { return (Task)run.Invoke(handler, new[] { ctx, parameters })!; }
        catch (TargetInvocationException ex) when (ex.InnerException is not null) { throw ex.InnerException; }
    }
}

/// <summary>Job kinds by name, found by scanning assemblies for <see cref="JobKindAttribute"/> classes.</summary>
public sealed class JobKindRegistry
{
    readonly Dictionary<string, JobKindInfo> _kinds = new(StringComparer.Ordinal);

    static JobKindRegistry? _default;

    /// <summary>
    /// The kinds this process serves when a caller passes none. The engine knows no kinds (they reference models), so
    /// the host sets it once at startup: <c>JobKindRegistry.Default = JobKinds.All</c> (ReTok.Jobs, src/ReTok.Jobs/Kinds/*).
    /// </summary>
    public static JobKindRegistry Default
    {
        get => _default ?? throw new InvalidOperationException("no job kinds registered: the host sets JobKindRegistry.Default (ReTok.Jobs.JobKinds.All) at startup");
        set => _default = value;
    }

    public JobKindRegistry Scan(Assembly assembly)
    {
        foreach (var t in HandlerCandidates(assembly))
            if (t.GetCustomAttribute<JobKindAttribute>() is { } attr) Register(t, attr);
        return this;
    }

    /// <summary>
    /// The types of <paramref name="assembly"/> that carry an attribute named JobKindAttribute, found in its metadata so
    /// that only they are loaded: <see cref="Assembly.GetTypes"/> would load every type of the kinds assembly, and
    /// TorchSharp with them, into processes that only validate specs (the dashboard).
    /// </summary>
    static IEnumerable<Type> HandlerCandidates(Assembly assembly)
    {
        if (assembly.IsDynamic || assembly.Location.Length == 0) return assembly.GetTypes();
        using var pe = new PEReader(File.OpenRead(assembly.Location));
        var md = pe.GetMetadataReader();
        string FullName(TypeDefinition t) => t.GetDeclaringType().IsNil
            ? (t.Namespace.IsNil ? "" : md.GetString(t.Namespace) + ".") + md.GetString(t.Name)
            : FullName(md.GetTypeDefinition(t.GetDeclaringType())) + "+" + md.GetString(t.Name);
        return md.TypeDefinitions.Select(md.GetTypeDefinition)
            .Where(t => t.GetCustomAttributes().Any(a => AttributeTypeName(md, md.GetCustomAttribute(a)) == nameof(JobKindAttribute)))
            .Select(t => assembly.GetType(FullName(t), throwOnError: true)!).ToList();
    }

    static string? AttributeTypeName(MetadataReader md, CustomAttribute a)
    {
        EntityHandle ctorParent = a.Constructor.Kind switch
        {
            HandleKind.MemberReference => md.GetMemberReference((MemberReferenceHandle)a.Constructor).Parent,
            HandleKind.MethodDefinition => md.GetMethodDefinition((MethodDefinitionHandle)a.Constructor).GetDeclaringType(),
            _ => default,
        };
        return ctorParent.Kind switch
        {
            HandleKind.TypeReference => md.GetString(md.GetTypeReference((TypeReferenceHandle)ctorParent).Name),
            HandleKind.TypeDefinition => md.GetString(md.GetTypeDefinition((TypeDefinitionHandle)ctorParent).Name),
            _ => null,
        };
    }

    public JobKindRegistry Register(Type handler, JobKindAttribute attr)
    {
        var iface = handler.GetInterfaces().FirstOrDefault(i => i.IsGenericType && i.GetGenericTypeDefinition() == typeof(IJobHandler<>))
            ?? throw new InvalidOperationException($"{handler.FullName} has [JobKind(\"{attr.Name}\")] but does not implement IJobHandler<TParams>");
        if (handler.GetConstructor(Type.EmptyTypes) is null)
            throw new InvalidOperationException($"{handler.FullName}: a job handler needs a parameterless constructor");
        if (!System.Text.RegularExpressions.Regex.IsMatch(attr.Queue, "^[a-z0-9_-]+$"))
            throw new InvalidOperationException($"job kind '{attr.Name}': queue '{attr.Queue}' must be lowercase letters, digits, '_' or '-'");
        if (_kinds.TryGetValue(attr.Name, out var existing) && existing.HandlerType != handler)
            throw new InvalidOperationException($"job kind '{attr.Name}' is registered twice: {existing.HandlerType.FullName} and {handler.FullName}");
        var info = new JobKindInfo(attr.Name, attr.Queue, Math.Max(1, attr.MaxAttempts), attr.Description, handler, iface.GetGenericArguments()[0],
            MultiNode: attr.MultiNode);
        _kinds[attr.Name] = info;
        if (typeof(IFanOutJob<>).MakeGenericType(info.ParamsType).IsAssignableFrom(handler))
        {
            var agg = attr.Name + JobKindInfo.AggregateSuffix;
            if (_kinds.TryGetValue(agg, out var other) && other.AggregateOf != attr.Name)
                throw new InvalidOperationException($"job kind '{agg}' is registered twice: {other.HandlerType.FullName} and the fan-in of {handler.FullName}");
            _kinds[agg] = info with { Name = agg, AggregateOf = attr.Name, Description = $"fan-in of {attr.Name}: runs once all its shards have succeeded" };
        }
        return this;
    }

    public IReadOnlyCollection<JobKindInfo> All => _kinds.Values.OrderBy(k => k.Name).ToList();

    public bool TryGet(string name, out JobKindInfo info) => _kinds.TryGetValue(name, out info!);

    public JobKindInfo Get(string name) => _kinds.TryGetValue(name, out var k) ? k
        : throw new SpecValidationException(new[] { $"kind: unknown job kind '{name}' (known: {string.Join(", ", _kinds.Keys.Order())})" });
}

using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.Distributed;

/// <summary>
/// NCCL (libnccl.so.2) communicator: one rank per GPU. Collectives run on the CUDA legacy default (null) stream, the
/// stream TorchSharp's kernels use, so they are ordered after the backward that produced the gradients and before the
/// optimizer kernels that read them without an explicit synchronisation. Several tensors in one call are issued between
/// ncclGroupStart/End (one fused launch per bucket list). Not exercised on CPU-only machines: see docs/training.md.
/// </summary>
public sealed class NcclCommunicator : ICommunicator
{
    private IntPtr comm;
    private readonly Device device;
    public int Rank { get; }
    public int WorldSize { get; }
    public string Backend => "nccl";

    private NcclCommunicator(IntPtr comm, int rank, int worldSize, Device device) => (this.comm, Rank, WorldSize, this.device) = (comm, rank, worldSize, device);

    /// <summary>A fresh id for <see cref="InitRank"/> (rank 0 creates it and hands it to the others out of band).</summary>
    public static byte[] GetUniqueId()
    {
        var id = new NcclNative.UniqueId();
        NcclNative.Check(NcclNative.Lib.GetUniqueId(ref id), "ncclGetUniqueId");
        return id.Internal;
    }

    /// <summary>ncclCommInitRank: this process/thread's rank of <paramref name="worldSize"/>; blocks until every rank has joined.
    /// The calling thread's current CUDA device must be <paramref name="device"/> (NCCL binds the communicator to it).</summary>
    public static NcclCommunicator InitRank(byte[] uniqueId, int rank, int worldSize, Device device)
    {
        if (uniqueId.Length != NcclNative.UniqueIdBytes) throw new ArgumentException($"an NCCL unique id has {NcclNative.UniqueIdBytes} bytes, got {uniqueId.Length}");
        var id = new NcclNative.UniqueId { Internal = uniqueId };
        NcclNative.Check(NcclNative.Lib.CommInitRank(out var c, worldSize, id, rank), "ncclCommInitRank");
        return new NcclCommunicator(c, rank, worldSize, device);
    }

    /// <summary>One communicator per listed GPU for replicas that are threads of this process (ncclCommInitAll).</summary>
    public static IReadOnlyList<ICommunicator> CreateInProcessGroup(int[] cudaDevices)
    {
        var lib = NcclNative.Lib; // fails here, with the install hint, when libnccl is missing
        if (!cuda.is_available() || cuda.device_count() < cudaDevices.Length)
            throw new InvalidOperationException($"data_parallel backend nccl with {cudaDevices.Length} replicas needs {cudaDevices.Length} CUDA devices; this machine has {(cuda.is_available() ? cuda.device_count() : 0)}");
        var comms = new IntPtr[cudaDevices.Length];
        NcclNative.Check(lib.CommInitAll(comms, cudaDevices.Length, cudaDevices), "ncclCommInitAll");
        return cudaDevices.Select((d, r) => (ICommunicator)new NcclCommunicator(comms[r], r, cudaDevices.Length, new Device(DeviceType.CUDA, d))).ToList();
    }

    public void AllReduceSum(IList<Tensor> tensors) => Grouped(tensors, t =>
        NcclNative.Lib.AllReduce(Ptr(t), Ptr(t), (UIntPtr)t.numel(), NcclNative.DataType(t.dtype), NcclNative.RedOpSum, comm, IntPtr.Zero), "ncclAllReduce");

    public void Broadcast(IList<Tensor> tensors, int root = 0) => Grouped(tensors, t =>
        NcclNative.Lib.Broadcast(Ptr(t), Ptr(t), (UIntPtr)t.numel(), NcclNative.DataType(t.dtype), root, comm, IntPtr.Zero), "ncclBroadcast");

    /// <summary>An all-reduce of one element, then a device synchronise: every rank has reached this point.</summary>
    public void Barrier()
    {
        using var t = zeros(1, device: device);
        AllReduceSum(new[] { t });
        cuda.synchronize(device);
    }

    public void Abort()
    {
        if (comm != IntPtr.Zero) { NcclNative.Lib.CommAbort(comm); comm = IntPtr.Zero; }
    }

    public void Dispose()
    {
        if (comm != IntPtr.Zero) { NcclNative.Lib.CommDestroy(comm); comm = IntPtr.Zero; }
    }

    private void Grouped(IList<Tensor> tensors, Func<Tensor, int> call, string what)
    {
        if (comm == IntPtr.Zero) throw new ObjectDisposedException(nameof(NcclCommunicator), "the NCCL communicator was aborted or disposed");
        foreach (var t in tensors)
            if (t.device.type != DeviceType.CUDA || !t.is_contiguous())
                throw new ArgumentException($"{what}: NCCL needs contiguous CUDA tensors, got {t.device} {(t.is_contiguous() ? "" : "non-contiguous ")}[{string.Join(",", t.shape)}]");
        var lib = NcclNative.Lib;
        if (tensors.Count > 1) NcclNative.Check(lib.GroupStart(), "ncclGroupStart");
        try
        {
            foreach (var t in tensors) NcclNative.Check(call(t), what);
        }
        finally
        {
            if (tensors.Count > 1) NcclNative.Check(lib.GroupEnd(), "ncclGroupEnd");
        }
    }

    /// <summary>Device address of the tensor's first element: at::Tensor::data_ptr() (storage plus offset), which TorchSharp
    /// 0.107 exports from LibTorchSharp but does not surface on Tensor.</summary>
    private static IntPtr Ptr(Tensor t) => THSTensor_data(t.Handle);

    [DllImport("LibTorchSharp")]
    private static extern IntPtr THSTensor_data(IntPtr handle);
}

/// <summary>
/// Typed binding to the part of nccl.h used here (NCCL 2.x ABI). The library is resolved at first use through
/// <see cref="Load"/>, not by DllImport, so a missing library is one clear error naming where to get it.
/// </summary>
internal static class NcclNative
{
    public const int UniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
    public const int RedOpSum = 0;         // ncclSum

    /// <summary>ncclUniqueId: an opaque 128-byte struct passed by value.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct UniqueId
    {
        [MarshalAs(UnmanagedType.ByValArray, SizeConst = UniqueIdBytes)]
        public byte[] Internal;
    }

    // ncclResult_t (int) fn(...); ncclComm_t and cudaStream_t are pointers
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int GetUniqueIdFn(ref UniqueId id);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int CommInitRankFn(out IntPtr comm, int nranks, UniqueId id, int rank);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int CommInitAllFn([Out] IntPtr[] comms, int ndev, int[] devlist);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate int AllReduceFn(IntPtr send, IntPtr recv, UIntPtr count, int dtype, int op, IntPtr comm, IntPtr stream);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate int BroadcastFn(IntPtr send, IntPtr recv, UIntPtr count, int dtype, int root, IntPtr comm, IntPtr stream);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int VoidFn();
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int CommFn(IntPtr comm);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate IntPtr ErrorStringFn(int result);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int GetVersionFn(out int version);

    public sealed record Api(string Path, GetUniqueIdFn GetUniqueId, CommInitRankFn CommInitRank, CommInitAllFn CommInitAll,
        AllReduceFn AllReduce, BroadcastFn Broadcast, VoidFn GroupStart, VoidFn GroupEnd, CommFn CommDestroy, CommFn CommAbort,
        ErrorStringFn GetErrorString, GetVersionFn GetVersion);

    private static readonly Lazy<Api> lib = new(() => Load(Candidates()));
    public static Api Lib => lib.Value;

    /// <summary>Where libnccl is looked for, in order: $NCCL_LIBRARY, the loader's search path (LD_LIBRARY_PATH, ldconfig),
    /// the CUDA and distro folders, and the nvidia-nccl-cu* wheel that PyTorch installs (site-packages/nvidia/nccl/lib).</summary>
    public static IEnumerable<string> Candidates()
    {
        if (Environment.GetEnvironmentVariable("NCCL_LIBRARY") is { Length: > 0 } env) yield return env;
        yield return "libnccl.so.2";
        yield return "libnccl.so";
        foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/cuda/lib64", "/usr/local/nccl/lib" })
            yield return Path.Combine(dir, "libnccl.so.2");
        var roots = new List<string>();
        if (Environment.GetEnvironmentVariable("VIRTUAL_ENV") is { Length: > 0 } venv) roots.Add(Path.Combine(venv, "lib"));
        roots.AddRange(new[] { "/usr/lib", "/usr/local/lib", Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local/lib") });
        foreach (var root in roots.Where(Directory.Exists))
            foreach (var py in SafeDirs(root, "python3*"))
                foreach (var site in new[] { "site-packages", "dist-packages" })
                    yield return Path.Combine(py, site, "nvidia/nccl/lib/libnccl.so.2");
    }

    private static IEnumerable<string> SafeDirs(string root, string pattern)
    {
        try { return Directory.GetDirectories(root, pattern); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return Array.Empty<string>(); }
    }

    /// <summary>Load the first candidate that opens and bind every entry point; otherwise one error naming the library,
    /// the places tried and how to install it.</summary>
    public static Api Load(IEnumerable<string> candidates)
    {
        var tried = new List<string>();
        foreach (var c in candidates)
        {
            tried.Add(c);
            if (!NativeLibrary.TryLoad(c, out var h)) continue;
            T F<T>(string name) where T : Delegate => NativeLibrary.TryGetExport(h, name, out var p)
                ? Marshal.GetDelegateForFunctionPointer<T>(p)
                : throw new EntryPointNotFoundException($"NCCL: {c} has no '{name}' (an NCCL 2.x libnccl.so.2 is needed)");
            return new Api(c, F<GetUniqueIdFn>("ncclGetUniqueId"), F<CommInitRankFn>("ncclCommInitRank"), F<CommInitAllFn>("ncclCommInitAll"),
                F<AllReduceFn>("ncclAllReduce"), F<BroadcastFn>("ncclBroadcast"), F<VoidFn>("ncclGroupStart"), F<VoidFn>("ncclGroupEnd"),
                F<CommFn>("ncclCommDestroy"), F<CommFn>("ncclCommAbort"), F<ErrorStringFn>("ncclGetErrorString"), F<GetVersionFn>("ncclGetVersion"));
        }
        throw new DllNotFoundException(
            "data_parallel backend nccl: could not load the NCCL library libnccl.so.2 (tried: " + string.Join(", ", tried) + "). " +
            "Install it with `apt-get install libnccl2` (NVIDIA's CUDA apt repository) or `pip install nvidia-nccl-cu12` (the wheel " +
            "PyTorch ships, site-packages/nvidia/nccl/lib), or point NCCL_LIBRARY at a libnccl.so.2; or use backend cpu.");
    }

    /// <summary>ncclDataType_t of a tensor dtype.</summary>
    public static int DataType(ScalarType t) => t switch
    {
        ScalarType.Int8 => 0, ScalarType.Byte => 1, ScalarType.Int32 => 2, ScalarType.Int64 => 4,
        ScalarType.Float16 => 6, ScalarType.Float32 => 7, ScalarType.Float64 => 8, ScalarType.BFloat16 => 9,
        _ => throw new ArgumentException($"NCCL has no data type for {t}"),
    };

    public static void Check(int result, string what)
    {
        if (result == 0) return;
        var msg = Marshal.PtrToStringAnsi(Lib.GetErrorString(result)) ?? "unknown error";
        throw new InvalidOperationException($"{what} failed: NCCL error {result} ({msg})");
    }
}

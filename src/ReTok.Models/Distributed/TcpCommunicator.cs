using System.Buffers.Binary;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Security.Cryptography;
using static TorchSharp.torch;

namespace ReTok.Models.Distributed;

/// <summary>
/// Cross-process CPU backend (<c>backend: tcp</c>): a star around rank 0. Rank 0 listens (<see cref="Listen"/>), its
/// address "host:port/token" is the analogue of NCCL's unique id, handed to the other ranks out of band, and every other
/// rank connects (<see cref="Connect"/>). An all-reduce sends each rank's tensors to rank 0, which sums them in rank order
/// 0..N-1 exactly as <see cref="CpuCommunicator"/> does (bit-identical results) and sends the sums back. Every socket read
/// and write has the timeout, so a lost peer fails the collective with a <see cref="TimeoutException"/> or an
/// <see cref="IOException"/> naming the peer instead of hanging. Slow (everything goes through rank 0 and the host
/// memory): the CPU test bed of multi-node training and a fallback without NCCL, not a fast backend.
/// </summary>
public sealed class TcpCommunicator : ICommunicator
{
    const int Magic = 0x4B4F5452; // "RTOK"
    const byte OpAllReduce = 1, OpBroadcast = 2, OpBarrier = 3, HandshakeOk = 0x5A;

    readonly Socket?[] peers;   // rank 0: index r = rank r's socket; rank r > 0: index 0 = rank 0's
    readonly TimeSpan timeout;
    long seq;
    volatile bool aborted;

    public int Rank { get; }
    public int WorldSize { get; }
    public string Backend => "tcp";

    TcpCommunicator(int rank, int worldSize, Socket?[] peers, TimeSpan timeout) => (Rank, WorldSize, this.peers, this.timeout) = (rank, worldSize, peers, timeout);

    /// <summary>Rank 0's listener: publish <see cref="Host.Address"/>, then <see cref="Host.Accept"/> the other ranks.</summary>
    public sealed class Host : IDisposable
    {
        readonly Socket listener;
        readonly byte[] token;
        readonly int worldSize;
        readonly TimeSpan timeout;

        internal Host(Socket listener, string advertise, int worldSize, TimeSpan timeout)
        {
            (this.listener, this.worldSize, this.timeout) = (listener, worldSize, timeout);
            token = RandomNumberGenerator.GetBytes(16);
            Address = $"{advertise}:{((IPEndPoint)listener.LocalEndPoint!).Port}/{Convert.ToHexStringLower(token)}";
        }

        /// <summary>"host:port/token": where the other ranks connect; the token keeps a rank of an older rendezvous out.</summary>
        public string Address { get; }

        /// <summary>Rank 0's communicator once ranks 1..N-1 have all connected; a <see cref="TimeoutException"/> naming the
        /// missing ranks otherwise. Connections with a wrong token, world size or a duplicate rank are dropped.
        /// <paramref name="ct"/> (the run's cancellation) is checked every half second while waiting.</summary>
        public TcpCommunicator Accept(CancellationToken ct = default)
        {
            var peers = new Socket?[worldSize];
            var deadline = DateTime.UtcNow + timeout;
            try
            {
                for (int joined = 1; joined < worldSize;)
                {
                    ct.ThrowIfCancellationRequested();
                    var left = deadline - DateTime.UtcNow;
                    var slice = TimeSpan.FromMilliseconds(Math.Min(500, Math.Max(0, left.TotalMilliseconds)));
                    if (left > TimeSpan.Zero && !listener.Poll((int)slice.TotalMicroseconds, SelectMode.SelectRead)) continue;
                    if (left <= TimeSpan.Zero)
                    {
                        var missing = Enumerable.Range(1, worldSize - 1).Where(r => peers[r] is null);
                        throw new TimeoutException($"tcp rank 0: ranks {string.Join(", ", missing)} did not connect to {Address.Split('/')[0]} within {timeout.TotalSeconds:F0} s");
                    }
                    var s = listener.Accept();
                    Configure(s, timeout);
                    try
                    {
                        var hello = new byte[28];
                        ReadExactly(s, hello);
                        int magic = BinaryPrimitives.ReadInt32LittleEndian(hello), rank = BinaryPrimitives.ReadInt32LittleEndian(hello.AsSpan(20)),
                            world = BinaryPrimitives.ReadInt32LittleEndian(hello.AsSpan(24));
                        if (magic != Magic || !hello.AsSpan(4, 16).SequenceEqual(token) || world != worldSize || rank < 1 || rank >= worldSize || peers[rank] is not null)
                        {
                            s.Dispose(); // a stale or foreign connection: it sees the connection close
                            continue;
                        }
                        peers[rank] = s;
                        joined++;
                    }
                    catch (Exception e) when (e is IOException or SocketException or TimeoutException) { s.Dispose(); }
                }
                foreach (var p in peers.Skip(1)) p!.Send(new[] { HandshakeOk });
                return new TcpCommunicator(0, worldSize, peers, timeout);
            }
            catch
            {
                foreach (var p in peers) p?.Dispose();
                throw;
            }
        }

        public void Dispose() => listener.Dispose();
    }

    /// <summary>
    /// Rank 0 starts listening on every interface (port <paramref name="port"/>, 0 = any free one) and advertises
    /// <paramref name="advertiseHost"/>, default <c>$RETOK_NODE_ADDRESS</c>, else this machine's first non-loopback IPv4
    /// address, else 127.0.0.1.
    /// </summary>
    public static Host Listen(int worldSize, TimeSpan timeout, string? advertiseHost = null, int port = 0)
    {
        if (worldSize < 1) throw new ArgumentException($"world size must be >= 1, got {worldSize}");
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Any, port));
        listener.Listen(Math.Max(16, worldSize));
        return new Host(listener, advertiseHost ?? DefaultAdvertiseHost(), worldSize, timeout);
    }

    /// <summary>Rank <paramref name="rank"/> joins the group at <paramref name="address"/> (<see cref="Host.Address"/>); returns once every rank has joined.</summary>
    public static TcpCommunicator Connect(string address, int rank, int worldSize, TimeSpan timeout)
    {
        if (rank < 1 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {worldSize}: rank 0 listens, ranks 1..{worldSize - 1} connect");
        var slash = address.LastIndexOf('/');
        var colon = slash > 0 ? address.LastIndexOf(':', slash) : -1;
        if (colon <= 0 || !int.TryParse(address.AsSpan(colon + 1, slash - colon - 1), out var port))
            throw new ArgumentException($"tcp rendezvous address '{address}' is not host:port/token");
        var host = address[..colon];
        var token = Convert.FromHexString(address[(slash + 1)..]);
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            Configure(s, timeout);
            var connect = s.ConnectAsync(host, port);
            if (!connect.Wait(timeout)) throw new TimeoutException($"tcp rank {rank}: could not connect to rank 0 at {host}:{port} within {timeout.TotalSeconds:F0} s");
            var hello = new byte[28];
            BinaryPrimitives.WriteInt32LittleEndian(hello, Magic);
            token.CopyTo(hello, 4);
            BinaryPrimitives.WriteInt32LittleEndian(hello.AsSpan(20), rank);
            BinaryPrimitives.WriteInt32LittleEndian(hello.AsSpan(24), worldSize);
            s.Send(hello);
            var ok = new byte[1];
            ReadExactly(s, ok, $"tcp rank {rank}: rank 0 at {host}:{port}");
            if (ok[0] != HandshakeOk) throw new IOException($"tcp rank {rank}: rank 0 at {host}:{port} answered the handshake with {ok[0]}");
            var peers = new Socket?[worldSize];
            peers[0] = s;
            return new TcpCommunicator(rank, worldSize, peers, timeout);
        }
        catch (AggregateException e) when (e.InnerException is SocketException se)
        {
            s.Dispose();
            throw new IOException($"tcp rank {rank}: could not connect to rank 0 at {host}:{port}: {se.Message}", se);
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    static string DefaultAdvertiseHost()
    {
        if (Environment.GetEnvironmentVariable("RETOK_NODE_ADDRESS") is { Length: > 0 } a) return a;
        var ip = NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses).Select(u => u.Address)
            .FirstOrDefault(x => x.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(x));
        return ip?.ToString() ?? "127.0.0.1";
    }

    static void Configure(Socket s, TimeSpan timeout)
    {
        s.NoDelay = true;
        s.ReceiveTimeout = s.SendTimeout = (int)Math.Clamp(timeout.TotalMilliseconds, 1, int.MaxValue);
    }

    // ------------------------------------------------------------ collectives

    public void AllReduceSum(IList<Tensor> tensors)
    {
        if (WorldSize == 1) return;
        long n = ++seq;
        using var _ = no_grad();
        if (Rank != 0)
        {
            Send(0, OpAllReduce, n, tensors);
            Receive(0, OpAllReduce, n, tensors);
            return;
        }
        using var scope = NewDisposeScope();
        var sums = tensors.Select(t => t.detach().clone()).ToArray();
        for (int r = 1; r < WorldSize; r++)   // rank order: the same additions as CpuCommunicator, so the same bits
        {
            var got = ReceiveNew(r, OpAllReduce, n, tensors);
            for (int i = 0; i < sums.Length; i++) sums[i].add_(got[i].to(sums[i].device));
        }
        for (int r = 1; r < WorldSize; r++) Send(r, OpAllReduce, n, sums);
        for (int i = 0; i < tensors.Count; i++) tensors[i].copy_(sums[i]);
    }

    public void Broadcast(IList<Tensor> tensors, int root = 0)
    {
        if (WorldSize == 1) return;
        if (root < 0 || root >= WorldSize) throw new ArgumentOutOfRangeException(nameof(root));
        long n = ++seq;
        using var _ = no_grad();
        if (Rank == 0)
        {
            if (root != 0) Receive(root, OpBroadcast, n, tensors);   // relayed through rank 0, the hub
            for (int r = 1; r < WorldSize; r++)
                if (r != root) Send(r, OpBroadcast, n, tensors);
        }
        else if (Rank == root) Send(0, OpBroadcast, n, tensors);
        else Receive(0, OpBroadcast, n, tensors);
    }

    public void Barrier()
    {
        if (WorldSize == 1) return;
        long n = ++seq;
        var none = Array.Empty<Tensor>();
        if (Rank == 0)
        {
            for (int r = 1; r < WorldSize; r++) Receive(r, OpBarrier, n, none);
            for (int r = 1; r < WorldSize; r++) Send(r, OpBarrier, n, none);
        }
        else
        {
            Send(0, OpBarrier, n, none);
            Receive(0, OpBarrier, n, none);
        }
    }

    /// <summary>Closes every connection: this rank's blocked collective fails at once, and its peers see the connection close.</summary>
    public void Abort()
    {
        aborted = true;
        foreach (var p in peers) p?.Dispose();
    }

    public void Dispose()
    {
        foreach (var p in peers) p?.Dispose();
    }

    // ------------------------------------------------------------ framing: [op u8][seq i64][count i32] then per tensor [bytes i64][data]

    void Send(int peer, byte op, long n, IList<Tensor> tensors)
    {
        var header = new byte[13];
        header[0] = op;
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(1), n);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(9), tensors.Count);
        Io(peer, () =>
        {
            var s = peers[peer]!;
            SendAll(s, header);
            var len = new byte[8];
            foreach (var t in tensors)
            {
                using var host = t.detach().cpu().contiguous();
                BinaryPrimitives.WriteInt64LittleEndian(len, host.NumberOfElements * host.ElementSize);
                SendAll(s, len);
                if (host.NumberOfElements > 0) SendAll(s, host.bytes);
            }
        });
    }

    /// <summary>Receives into <paramref name="into"/> (same shapes and dtypes on every rank) in place.</summary>
    void Receive(int peer, byte op, long n, IList<Tensor> into)
    {
        var got = ReceiveNew(peer, op, n, into);
        for (int i = 0; i < into.Count; i++)
        {
            into[i].copy_(got[i]);
            got[i].Dispose();
        }
    }

    /// <summary>Receives a message shaped like <paramref name="like"/> into new CPU tensors.</summary>
    Tensor[] ReceiveNew(int peer, byte op, long n, IList<Tensor> like)
    {
        var result = new Tensor[like.Count];
        Io(peer, () =>
        {
            var s = peers[peer]!;
            var header = new byte[13];
            ReadExactly(s, header, Who(peer));
            long theirs = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(1));
            int count = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(9));
            if (header[0] != op || theirs != n || count != like.Count)
                throw new InvalidOperationException($"tcp rank {Rank}: {Who(peer)} is in collective #{theirs} (op {header[0]}, {count} tensors), this rank in #{n} (op {op}, {like.Count}): the ranks issue different collectives");
            var len = new byte[8];
            for (int i = 0; i < like.Count; i++)
            {
                ReadExactly(s, len, Who(peer));
                long bytes = BinaryPrimitives.ReadInt64LittleEndian(len), want = like[i].NumberOfElements * like[i].ElementSize;
                if (bytes != want) throw new InvalidOperationException($"tcp rank {Rank}: {Who(peer)} sent {bytes} bytes for tensor {i}, this rank has {want} ([{string.Join(",", like[i].shape)}] {like[i].dtype})");
                var t = empty(like[i].shape, like[i].dtype);
                if (bytes > 0)
                {
                    var data = new byte[bytes];
                    ReadExactly(s, data, Who(peer));
                    t.bytes = data;
                }
                result[i] = t;
            }
        });
        return result;
    }

    string Who(int peer) => $"rank {peer}";

    /// <summary>Socket faults as errors that name the peer: a timeout (<see cref="TimeoutException"/>), a closed or reset
    /// connection (<see cref="IOException"/>), or this rank's own abort (<see cref="OperationCanceledException"/>).</summary>
    void Io(int peer, Action body)
    {
        if (aborted) throw Aborted();
        try { body(); }
        catch (Exception e) when (aborted && e is IOException or SocketException or ObjectDisposedException) { throw Aborted(); }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut || e.SocketErrorCode == SocketError.WouldBlock)
        {
            throw new TimeoutException($"tcp rank {Rank}: no progress from {Who(peer)} for {timeout.TotalSeconds:F0} s (data_parallel.timeout_s): that rank is lost or stalled", e);
        }
        catch (SocketException e) { throw new IOException($"tcp rank {Rank}: connection to {Who(peer)} failed ({e.SocketErrorCode}: {e.Message}): that rank's process ended?", e); }
        catch (IOException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.TimedOut or SocketError.WouldBlock } se)
        {
            throw new TimeoutException($"tcp rank {Rank}: no progress from {Who(peer)} for {timeout.TotalSeconds:F0} s (data_parallel.timeout_s): that rank is lost or stalled", se);
        }
        catch (IOException e) when (!e.Message.StartsWith("tcp rank")) { throw new IOException($"tcp rank {Rank}: {e.Message}", e); }
    }

    static OperationCanceledException Aborted() => new("data parallel: another replica failed, this collective was aborted");

    static void SendAll(Socket s, ReadOnlySpan<byte> data)
    {
        while (data.Length > 0) data = data[s.Send(data)..];
    }

    static void ReadExactly(Socket s, Span<byte> buffer, string? who = null)
    {
        while (buffer.Length > 0)
        {
            int got = s.Receive(buffer);
            if (got == 0) throw new IOException($"{who ?? "peer"} closed the connection (its process ended or it failed out of the collective)");
            buffer = buffer[got..];
        }
    }
}

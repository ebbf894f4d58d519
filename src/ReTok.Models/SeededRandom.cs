using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models;

/// <summary>
/// Seeded random draws that work on every device. TorchSharp 0.107's <c>new Generator(seed, device)</c> is always a
/// CPU generator (THSGenerator_new ignores the device: "TODO: Support creation of GPU RNGs"), and libtorch rejects a
/// CPU generator in a CUDA kernel ("Expected a 'cuda' device type for generator but found 'cpu'"). So every seeded
/// draw goes through here: on the CPU the kernel runs with the generator exactly as before (bit-identical results);
/// on another device the numbers are drawn on the CPU from the same generator and copied over (small tensors only:
/// labels, class-dropout coins, one uniform per sampled token, initial weights once). A null generator means the
/// device's default generator, as in the reference, and runs on the device directly.
/// </summary>
public static class SeededRandom
{
    /// <summary>
    /// libtorch's default CPU generator is one per process. A job that seeds it and then draws from it (module construction)
    /// holds this gate for that stretch, so that two jobs of one worker process (two slots, two rank runs of a node group)
    /// do not interleave their draws and each gets the weights its seed gives alone.
    /// </summary>
    public static readonly SemaphoreSlim DefaultGeneratorGate = new(1, 1);

    /// <summary>A generator for seeded draws on any device (always a CPU generator, see the class remarks).</summary>
    public static Generator NewGenerator(long seed) => new((ulong)seed);

    static bool OnDevice(Device device, Generator? g) => g is null || device.type == DeviceType.CPU;

    /// <summary>U[0,1) of the given shape on <paramref name="device"/>.</summary>
    public static Tensor Rand(long[] shape, Generator? g, Device device, ScalarType dtype = ScalarType.Float32) =>
        OnDevice(device, g) ? rand(shape, dtype: dtype, device: device, generator: g) : rand(shape, dtype: dtype, generator: g).to(device);

    /// <summary>Integers in [low, high) (int64) on <paramref name="device"/>.</summary>
    public static Tensor Randint(long low, long high, long[] shape, Generator? g, Device device) =>
        OnDevice(device, g)
            ? randint(low, high, shape, dtype: ScalarType.Int64, device: device, generator: g)
            : randint(low, high, shape, dtype: ScalarType.Int64, generator: g).to(device);

    /// <summary>In-place N(mean, std) fill of <paramref name="t"/> (a parameter under no_grad), wherever it lives.</summary>
    public static void Normal_(Tensor t, double mean, double std, Generator? g)
    {
        if (OnDevice(t.device, g)) { t.normal_(mean, std, g); return; }
        using var cpu = empty(t.shape, t.dtype);
        cpu.normal_(mean, std, g);
        t.copy_(cpu);
    }

    /// <summary>
    /// One category per row of (B, V) probabilities -> (B, 1) int64. CPU: torch.multinomial with the generator
    /// (bit-identical to before). Other devices with a generator, or <paramref name="inverseCdf"/>: inverse-CDF
    /// sampling with one U[0,1) per row drawn on the CPU (float64), see <see cref="InverseCdf"/>; the same seed then
    /// gives the same tokens on every device up to float rounding of the CDF at a boundary.
    /// </summary>
    public static Tensor Multinomial1(Tensor probs, Generator? g, bool inverseCdf = false)
    {
        if (!inverseCdf && OnDevice(probs.device, g)) return multinomial(probs, 1, generator: g);
        var u = rand(new[] { probs.shape[0], 1L }, dtype: ScalarType.Float64, generator: g);
        return InverseCdf(probs, u.to(probs.device));
    }

    /// <summary>
    /// Inverse-CDF draw: index of the first category whose cumulative probability exceeds u * total (total = the
    /// row's sum, so unnormalised rows work). Categories of probability 0 are never chosen: their CDF equals their
    /// predecessor's. probs (B, V), u (B, 1) in [0, 1) -> (B, 1) int64. The CDF is accumulated in float64.
    /// </summary>
    public static Tensor InverseCdf(Tensor probs, Tensor u)
    {
        using var scope = NewDisposeScope();
        var cdf = probs.to(ScalarType.Float64).cumsum(-1);
        var target = u.to(ScalarType.Float64) * cdf.narrow(-1, cdf.shape[^1] - 1, 1);
        var idx = searchsorted(cdf, target.contiguous(), right: true).clamp_max(probs.shape[^1] - 1);
        return idx.to(ScalarType.Int64).MoveToOuterDisposeScope();
    }
}

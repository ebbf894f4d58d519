using static TorchSharp.torch;

namespace ReTok.Evaluation.Metrics;

/// <summary>
/// Gaussian statistics of a feature set, as the ADM evaluator's <c>compute_statistics</c>: mu = np.mean of float32 features
/// (a float32 vector; we sum in float64 and round once), sigma = np.cov(rowvar=False) in float64 with denominator N-1.
/// Stored as float64 tensors (mu rounded to float32 when computed; loaded reference mu/sigma are kept as given).
/// </summary>
public sealed class FidStatistics : IDisposable
{
    public Tensor Mu { get; }
    public Tensor Sigma { get; }

    public FidStatistics(Tensor mu, Tensor sigma)
    {
        if (mu.dim() != 1 || sigma.dim() != 2 || sigma.shape[0] != mu.shape[0] || sigma.shape[1] != mu.shape[0])
            throw new ArgumentException($"statistics shapes do not match: mu [{string.Join(",", mu.shape)}], sigma [{string.Join(",", sigma.shape)}]");
        Mu = mu.to(ScalarType.Float64).cpu();
        Sigma = sigma.to(ScalarType.Float64).cpu();
    }

    public long Dim => Mu.shape[0];

    public static FidStatistics FromActivations(Tensor acts)
    {
        if (acts.dim() != 2) throw new ArgumentException($"activations must be [N,D], got [{string.Join(",", acts.shape)}]");
        if (acts.shape[0] < 2) throw new ArgumentException($"need at least 2 activations to estimate a covariance, got {acts.shape[0]}");
        using var scope = NewDisposeScope();
        var x = acts.to(ScalarType.Float64).cpu();
        var mean = x.mean(new long[] { 0 });
        var xc = x - mean;
        var sigma = xc.t().matmul(xc) / (x.shape[0] - 1);
        var mu32 = mean.to(ScalarType.Float32).to(ScalarType.Float64); // np.mean of float32 is float32
        var r = new FidStatistics(mu32, sigma);
        r.Mu.MoveToOuterDisposeScope(); r.Sigma.MoveToOuterDisposeScope();
        return r;
    }

    /// <summary>
    /// ||mu1-mu2||^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2)) with this = sample (1) and <paramref name="other"/> = reference (2),
    /// as <c>sample_stats.frechet_distance(ref_stats)</c>. tr(sqrtm(s1 s2)) is computed in float64 as sum(sqrt(max(l, 0))) over
    /// the eigenvalues of the symmetric matrix A s2 A with A = s1^(1/2) (from eigh); it is similar to s1 s2, so its square
    /// root has the same trace as scipy's Schur sqrtm. The evaluator's safeguards are kept as diagnostics: a non-finite
    /// result is retried with 1e-6 added to both diagonals, and a clearly negative eigenvalue (scipy's "imaginary
    /// component") is reported through <paramref name="warn"/> instead of raising.
    /// </summary>
    public double FrechetDistance(FidStatistics other, Action<string>? warn = null, double eps = 1e-6)
    {
        if (Dim != other.Dim) throw new ArgumentException($"statistics have different dimensions: {Dim} vs {other.Dim}");
        using var scope = NewDisposeScope();
        var diff = Mu - other.Mu;
        double d2 = diff.dot(diff).item<double>();
        double tr1 = Sigma.trace().item<double>(), tr2 = other.Sigma.trace().item<double>();
        double trC = TraceSqrtProduct(Sigma, other.Sigma, warn);
        if (!double.IsFinite(trC))
        {
            warn?.Invoke($"fid calculation produces singular product; adding {eps} to diagonal of cov estimates");
            var off = eye(Dim, dtype: ScalarType.Float64) * eps;
            trC = TraceSqrtProduct(Sigma + off, other.Sigma + off, warn);
        }
        return d2 + tr1 + tr2 - 2 * trC;
    }

    internal static double TraceSqrtProduct(Tensor s1, Tensor s2, Action<string>? warn)
    {
        using var scope = NewDisposeScope();
        var (l1, v1) = linalg.eigh((s1 + s1.t()) / 2);
        var a = (v1 * l1.clamp_min(0).sqrt().unsqueeze(0)).matmul(v1.t());
        var m = a.matmul(s2).matmul(a);
        var lam = linalg.eigvalsh((m + m.t()) / 2);
        double lmin = lam.min().item<double>(), lmax = lam.max().item<double>();
        if (lmin < 0 && Math.Sqrt(-lmin) > 1e-3)
            warn?.Invoke($"sqrtm(sigma1 sigma2) has an eigenvalue {lmin:g4} < 0 (imaginary component {Math.Sqrt(-lmin):g4}); clamped to 0");
        if (!double.IsFinite(lmin) || !double.IsFinite(lmax)) return double.NaN;
        return lam.clamp_min(0).sqrt().sum().item<double>();
    }

    public void Dispose() { Mu.Dispose(); Sigma.Dispose(); }
}

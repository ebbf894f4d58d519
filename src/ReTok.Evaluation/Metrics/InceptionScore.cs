using static TorchSharp.torch;

namespace ReTok.Evaluation.Metrics;

public static class InceptionScore
{
    /// <summary>
    /// The evaluator's <c>compute_inception_score</c>: p = softmax(unbiased logits) over all 1008 outputs (float32), consecutive
    /// splits of <paramref name="splitSize"/> rows in stored order (the last may be partial), per split
    /// exp(mean_i sum_j p_ij (log p_ij - log mean_i p_ij)), and the mean over splits. Elementwise math in float32 as numpy;
    /// the reductions accumulate in float64 (numpy's pairwise float32 sums differ from these by ~1e-7 relative).
    /// </summary>
    public static double Compute(Tensor logits, int splitSize = 5000)
    {
        if (logits.dim() != 2) throw new ArgumentException($"logits must be [N,C], got [{string.Join(",", logits.shape)}]");
        using var scope = NewDisposeScope();
        var p = nn.functional.softmax(logits.to(ScalarType.Float32).cpu(), 1);
        var scores = new List<double>();
        for (long i = 0; i < p.shape[0]; i += splitSize)
        {
            var part = p.narrow(0, i, Math.Min(splitSize, p.shape[0] - i));
            var mean = part.to(ScalarType.Float64).mean(new long[] { 0 }, keepdim: true).to(ScalarType.Float32);
            var kl = part * (part.log() - mean.log());
            var klMean = kl.to(ScalarType.Float64).sum(1).mean().to(ScalarType.Float32);
            scores.Add(klMean.exp().item<float>());
        }
        return (float)scores.Average(); // np.mean over float32 scores is a float32
    }
}

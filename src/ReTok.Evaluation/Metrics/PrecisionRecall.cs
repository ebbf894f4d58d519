using static TorchSharp.torch;

namespace ReTok.Evaluation.Metrics;

/// <summary>
/// Improved precision/recall (Kynkäänniemi et al.) exactly as the ADM evaluator's ManifoldEstimator + DistanceBlock:
/// squared Euclidean distances max(|u|^2 - 2 u.v + |v|^2, 0), radius = the (k+1)-th smallest distance of a row including the
/// point itself (k = 3), blocks of 10000x10000, comparisons <=, precision = fraction of samples inside the reference
/// manifold, recall = fraction of references inside the sample manifold.
/// The evaluator computes each distance block in float16 on the GPU and falls back to float32 for a block that is not
/// finite; with <see cref="EmulateFp16"/> we reproduce that: fp16 inputs, fp16 squared norms (fp32 sum), fp32-accumulated
/// matmul rounded to fp16, and each of the combining ops rounded to fp16.
/// Radii are found with a running top-(k+1) over column blocks instead of materialising a 10000xN block (same values).
/// </summary>
public sealed class ManifoldEstimator
{
    public int RowBatchSize { get; init; } = 10000;
    public int ColBatchSize { get; init; } = 10000;
    public int K { get; init; } = 3;
    public bool EmulateFp16 { get; init; } = true;

    static Tensor H(Tensor t) => t.to(ScalarType.Float16).to(ScalarType.Float32);

    public Tensor PairwiseDistances(Tensor u, Tensor v)
    {
        using var scope = NewDisposeScope();
        u = u.to(ScalarType.Float32); v = v.to(ScalarType.Float32);
        if (EmulateFp16)
        {
            var u16 = H(u); var v16 = H(v);
            var nu = H(H(u16 * u16).sum(1)).unsqueeze(1);
            var nv = H(H(v16 * v16).sum(1)).unsqueeze(0);
            var mm = H(u16.matmul(v16.t()));
            var d16 = H(H(nu - H(2 * mm)) + nv).clamp_min(0);
            if (d16.isfinite().all().item<bool>()) return d16.MoveToOuterDisposeScope();
        }
        var n1 = (u * u).sum(1).unsqueeze(1);
        var n2 = (v * v).sum(1).unsqueeze(0);
        return (n1 - 2 * u.matmul(v.t()) + n2).clamp_min(0).MoveToOuterDisposeScope();
    }

    /// <summary>Squared distance of each row to its K-th nearest neighbour (self excluded by counting it as the 0th), float32 [N].</summary>
    public Tensor ManifoldRadii(Tensor features)
    {
        long n = features.shape[0];
        if (n < K + 1) throw new ArgumentException($"precision/recall needs at least {K + 1} feature vectors, got {n}");
        var radii = new List<Tensor>();
        for (long b1 = 0; b1 < n; b1 += RowBatchSize)
        {
            using var scope = NewDisposeScope();
            var rows = features.narrow(0, b1, Math.Min(RowBatchSize, n - b1));
            Tensor? best = null;
            for (long b2 = 0; b2 < n; b2 += ColBatchSize)
            {
                var d = PairwiseDistances(rows, features.narrow(0, b2, Math.Min(ColBatchSize, n - b2)));
                var all = best is null ? d : cat(new[] { best, d }, 1);
                best = all.topk((int)Math.Min(K + 1, all.shape[1]), 1, largest: false, sorted: true).values;
            }
            radii.Add(best!.select(1, K).MoveToOuterDisposeScope());
        }
        var r = cat(radii, 0);
        foreach (var t in radii) t.Dispose();
        return r;
    }

    /// <summary>(precision, recall) = (fraction of <paramref name="sample"/> inside the reference manifold, fraction of <paramref name="reference"/> inside the sample manifold).</summary>
    public (double Precision, double Recall) Evaluate(Tensor reference, Tensor sample)
    {
        using var scope = NewDisposeScope();
        var rRef = ManifoldRadii(reference);
        var rSmp = ManifoldRadii(sample);
        long n1 = reference.shape[0], n2 = sample.shape[0];
        var refIn = zeros(n1, ScalarType.Bool);
        var smpIn = zeros(n2, ScalarType.Bool);
        for (long b1 = 0; b1 < n1; b1 += RowBatchSize)
        {
            long l1 = Math.Min(RowBatchSize, n1 - b1);
            for (long b2 = 0; b2 < n2; b2 += ColBatchSize)
            {
                using var inner = NewDisposeScope();
                long l2 = Math.Min(ColBatchSize, n2 - b2);
                var d = PairwiseDistances(reference.narrow(0, b1, l1), sample.narrow(0, b2, l2));
                var in1 = (d <= rSmp.narrow(0, b2, l2).unsqueeze(0)).any(1);
                var in2 = (d <= rRef.narrow(0, b1, l1).unsqueeze(1)).any(0);
                refIn.narrow(0, b1, l1).logical_or_(in1);
                smpIn.narrow(0, b2, l2).logical_or_(in2);
            }
        }
        double precision = smpIn.to(ScalarType.Float64).mean().item<double>();
        double recall = refIn.to(ScalarType.Float64).mean().item<double>();
        return (precision, recall);
    }
}

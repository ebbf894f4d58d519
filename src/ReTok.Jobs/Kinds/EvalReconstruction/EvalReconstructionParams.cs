using ReTok.Engine;

namespace ReTok.Jobs.Kinds.EvalReconstruction;

/// <summary>An artifact of a given run (an input as it resolved).</summary>
public sealed record ArtifactRef
{
    public long RunId { get; init; }
    public string Name { get; init; } = "";
    public override string ToString() => $"run:{RunId}/{Name}";
}

/// <summary>Where the tokenizer comes from: tracked artifacts (weights + YAML), or a checkpoint file on the worker + a preset or YAML path.</summary>
public sealed record TokenizerSource
{
    public ArtifactRef? Weights { get; init; }
    public ArtifactRef? Config { get; init; }
    /// <summary>Authors' .pt (or a .safetensors) on the worker, used when <see cref="Weights"/> is null.</summary>
    [DataPath] public string? Checkpoint { get; init; }
    /// <summary>VQ_SS256 / VQ_SB256, used when no config artifact or path is given.</summary>
    public string? Preset { get; init; }
    [DataPath] public string? ConfigPath { get; init; }
    /// <summary>Entry of a nested training checkpoint to load (ema, model, state_dict).</summary>
    public string Prefer { get; init; } = "ema";

    public string Describe() =>
        (Weights is not null ? $"{Weights}" : Checkpoint ?? "?") + " with " +
        (Config is not null ? $"{Config}" : ConfigPath ?? $"preset {Preset}") + $" (prefer {Prefer})";
}

/// <summary>
/// Parameters of eval-reconstruction. Inputs: `data` (a dataset.npz), `tokenizer` + `tokenizer_config` (train-tokenizer's
/// outputs) or, without them, <see cref="Checkpoint"/> + <see cref="Preset"/>/<see cref="Config"/>; optional `reference`
/// (an image batch npz or a reference batch with mu/sigma/mu_s/sigma_s) for rFID instead of the data itself.
/// </summary>
public sealed record EvalReconstructionParams : IValidatableParams
{
    /// <summary>Decode lengths K (the first K of the 1-D tokens).</summary>
    public int[] TokenCounts { get; init; } = [32, 64, 128, 256];
    /// <summary>Images per forward; LPIPS is a mean of per-batch means over this grid (reconstruction_ddp.py used 32 per GPU).</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>Batches per checkpointed part.</summary>
    public int ChunkBatches { get; init; } = 8;
    /// <summary>&gt; 1: that many shard runs reconstruct disjoint index ranges; an aggregator concatenates and scores.</summary>
    public int Shards { get; init; } = 1;
    /// <summary>Only the first N images of the data npz.</summary>
    public int? Limit { get; init; }
    /// <summary>Tokenizer checkpoint on the worker (the authors' .pt) when there is no `tokenizer` input.</summary>
    [DataPath] public string? Checkpoint { get; init; }
    /// <summary>VQ_SS256 or VQ_SB256 when there is no `tokenizer_config` input and no <see cref="Config"/>.</summary>
    public string? Preset { get; init; }
    /// <summary>A tokenizer YAML on the worker (configs/vq/VQ_SB256.yaml style).</summary>
    [DataPath] public string? Config { get; init; }
    public string Prefer { get; init; } = "ema";
    /// <summary>Weights folder for Inception / VGG16 / LPIPS heads (default $RETOK_HOME/weights).</summary>
    [DataPath] public string? WeightsDir { get; init; }
    public bool Lpips { get; init; } = true;
    /// <summary>rFID, sFID and IS (need the Inception weights).</summary>
    public bool Fid { get; init; } = true;
    public int InceptionBatchSize { get; init; } = 64;
    /// <summary>Share the reference's Inception features as a <c>features/…</c> artifact and under $RETOK_HOME/cache/features (keyed by content and weights).</summary>
    public bool FeatureCache { get; init; } = true;
    public int GridImages { get; init; } = 8;
    /// <summary>Free the storage of the checkpoint parts once the outputs are registered.</summary>
    public bool ReleaseParts { get; init; } = true;

    public IEnumerable<string> Validate()
    {
        if (TokenCounts.Length == 0) yield return "token_counts: give at least one K";
        foreach (var k in TokenCounts) if (k < 1 || k > 256) yield return $"token_counts: K must be 1..256, got {k}";
        if (TokenCounts.Distinct().Count() != TokenCounts.Length) yield return "token_counts: duplicate K";
        if (BatchSize < 1) yield return $"batch_size: must be >= 1, got {BatchSize}";
        if (ChunkBatches < 1) yield return $"chunk_batches: must be >= 1, got {ChunkBatches}";
        if (InceptionBatchSize < 1) yield return $"inception_batch_size: must be >= 1, got {InceptionBatchSize}";
        if (GridImages < 1) yield return $"grid_images: must be >= 1, got {GridImages}";
        if (Shards < 1) yield return $"shards: must be >= 1, got {Shards}";
        if (Limit is < 1) yield return $"limit: must be >= 1, got {Limit}";
        if (Preset is not null && Config is not null) yield return "preset: give either preset or config, not both";
        if (Prefer is not ("ema" or "model" or "state_dict")) yield return $"prefer: must be ema, model or state_dict, got '{Prefer}'";
    }
}

/// <summary>The aggregator's fan-out state: what the parent learned before fanning out (rows, shards, codebook, which tokenizer).</summary>
public sealed record EvalReconFanIn
{
    public long Count { get; init; }
    public int Shards { get; init; }
    public int CodebookSize { get; init; }
    public string Tokenizer { get; init; } = "";
}

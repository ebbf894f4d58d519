using ReTok.Models.Tokenizer;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ReTok.Models.Training;

/// <summary>
/// <see cref="ReTokTokenizer"/> as the trainer sees it. One training forward (VQVitModelPlus.forward with the decode length
/// made explicit): encode all N+M = 480 queries, quantize them (rotation trick, VQ + commitment losses over all 480),
/// decode image b from its first K_b tokens. A batch with one K is decoded by slicing (num_tokens = K, the reference's own
/// hook); mixed K adds a key-padding mask (the reference decoder's memory_key_padding_mask). Semantic features are
/// distill_mlp(decoder queries after layer distill_depth), [B, 256, out_inner_dim]. Extra semantic prefixes
/// (<see cref="TokenizerStepInput.SemanticPrefixes"/>) decode the same quantized tokens again, through the ViT decoder only.
/// </summary>
public sealed class ReTokTrainable : ITrainableTokenizer
{
    public ReTokTokenizer Model { get; }
    public nn.Module Module => Model;
    private readonly Parameter lastLayer;

    /// <summary>Debug hook: when set, the next forward's reconstruction is multiplied by NaN (then cleared).</summary>
    public bool InjectNanOnce { get; set; }

    public ReTokTrainable(ReTokTokenizer model)
    {
        Model = model;
        lastLayer = model.named_parameters().First(p => p.name == "decoder.conv_out.weight").parameter;
    }

    public TokenizerStepOutput Forward(TokenizerStepInput input)
    {
        var k = input.TokensPerSample;
        var prefixes = input.SemanticPrefixes ?? Array.Empty<Tensor>();
        foreach (var kk in prefixes.Prepend(k))
        {
            long lo = kk.min().item<long>(), hi = kk.max().item<long>();
            if (lo < 1 || hi > Model.TotalTokens)
                throw new ArgumentOutOfRangeException(nameof(input), $"K must lie in 1..{Model.TotalTokens}, got {lo}..{hi}");
        }
        if ((input.ReturnSemanticFeatures || prefixes.Count > 0) && !Model.HasDistillMlp)
            throw new InvalidOperationException("the semantic loss needs distill_mlp, but the tokenizer config has distill_depth: null");
        if (prefixes.Count > 0 && !input.ReturnSemanticFeatures)
            throw new ArgumentException("semantic prefixes are decoded for the semantic loss only: ReturnSemanticFeatures must be true", nameof(input));
        long min = k.min().item<long>(), max = k.max().item<long>();
        var (recon, losses, semantic, prefixFeatures, direct) = Model.Forward(input.Images, (int)max, min == max ? null : k,
            input.ComputeFeatureRecLoss, input.ReturnSemanticFeatures, prefixes, input.DirectReconstruction);
        if (InjectNanOnce)
        {
            InjectNanOnce = false;
            recon = recon * float.NaN;
        }
        var metrics = new Dictionary<string, double>
        {
            ["codebook_usage"] = losses.Usage,   // distinct codes in the reference's 65536-index window / codebook size
            ["codebook_usage_batch"] = losses.Indices.flatten().unique().Item1.shape[0] / (double)Model.Config.CodebookSize,
        };
        return new TokenizerStepOutput(recon, new CodebookLosses(losses.Codebook, losses.Commitment, losses.Entropy),
            losses.FeatureRec, semantic, losses.Indices, lastLayer, metrics, prefixes.Count > 0 ? prefixFeatures : null, direct);
    }
}

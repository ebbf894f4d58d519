using ReTok.Models.Tokenizer;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ReTok.Models.Training;

/// <summary>
/// <see cref="ReTokTokenizer"/> as the trainer sees it. One training forward (VQVitModelPlus.forward with the decode length
/// made explicit): encode all N+M = 480 queries, quantize them (rotation trick, VQ + commitment losses over all 480),
/// decode image b from its first K_b tokens. A batch with one K is decoded by slicing (num_tokens = K, the reference's own
/// hook); mixed K adds a key-padding mask (the reference decoder's memory_key_padding_mask). Semantic features are
/// distill_mlp(decoder queries after layer distill_depth), [B, 256, out_inner_dim].
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
        long min = k.min().item<long>(), max = k.max().item<long>();
        if (min < 1 || max > Model.TotalTokens)
            throw new ArgumentOutOfRangeException(nameof(input), $"K must lie in 1..{Model.TotalTokens}, got {min}..{max}");
        if (input.ReturnSemanticFeatures && !Model.HasDistillMlp)
            throw new InvalidOperationException("the semantic loss needs distill_mlp, but the tokenizer config has distill_depth: null");
        var (recon, losses, semantic) = min == max
            ? Model.Forward(input.Images, tokens: (int)max, featureRecLoss: input.ComputeFeatureRecLoss, semantic: input.ReturnSemanticFeatures)
            : Model.Forward(input.Images, tokenCounts: k, featureRecLoss: input.ComputeFeatureRecLoss, semantic: input.ReturnSemanticFeatures);
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
            losses.FeatureRec, semantic, losses.Indices, lastLayer, metrics);
    }
}

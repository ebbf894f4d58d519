using ReTok.Models.Tokenizer;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

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
    // the tokenizer's stages by their state-dict names, for the multi-prefix forward (encode once, decode 1 + P times)
    private readonly nn.Module<Tensor, Tensor> encoder, s2to1encoder;
    private readonly Conv2d quantConv, postQuantConv;
    private readonly ViTQFormerDecoder s1to2decoder;

    /// <summary>Debug hook: when set, the next forward's reconstruction is multiplied by NaN (then cleared).</summary>
    public bool InjectNanOnce { get; set; }

    public ReTokTrainable(ReTokTokenizer model)
    {
        Model = model;
        lastLayer = model.named_parameters().First(p => p.name == "decoder.conv_out.weight").parameter;
        var stages = model.named_children().ToDictionary(c => c.name, c => c.module);
        encoder = (nn.Module<Tensor, Tensor>)stages["encoder"];
        s2to1encoder = (nn.Module<Tensor, Tensor>)stages["s2to1encoder"];
        quantConv = (Conv2d)stages["quant_conv"];
        postQuantConv = (Conv2d)stages["post_quant_conv"];
        s1to2decoder = (ViTQFormerDecoder)stages["s1to2decoder"];
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
        Tensor recon;
        Tensor? semantic;
        TokenizerLosses losses;
        Tensor[]? prefixFeatures = null;
        if (prefixes.Count > 0)
            (recon, losses, semantic, prefixFeatures) = ForwardPrefixes(input.Images, k, input.ComputeFeatureRecLoss, prefixes);
        else
            (recon, losses, semantic) = min == max
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
            losses.FeatureRec, semantic, losses.Indices, lastLayer, metrics, prefixFeatures);
    }

    /// <summary>
    /// <see cref="ReTokTokenizer.Forward"/>'s stages in its order (encode, quantize, decode K, feature-rec; a test holds the
    /// two bit-identical), keeping the quantized tokens so that each extra prefix only runs the ViT decoder up to its
    /// semantic features (its pixels are never used): the encoder and quantizer run once and every prefix's gradient
    /// reaches them through the same tokens.
    /// </summary>
    (Tensor Recon, TokenizerLosses Losses, Tensor? Semantic, Tensor[] PrefixFeatures) ForwardPrefixes(
        Tensor images, Tensor k, bool featureRecLoss, IReadOnlyList<Tensor> prefixes)
    {
        images = images.to(Model.Device);
        var s = encoder.call(images);
        var h = Amp.F32(Amp.Conv(quantConv, s2to1encoder.call(s)));
        var (quant, vq, commit, entropy, usage, idx) = Model.Quantizer.forward(h);
        var (tokens, mask) = Plan(k);
        var (recon, spatial, semantic) = Model.DecodeQuant(quant, tokens, mask, semantic: true);
        Tensor? fea = null;
        if (featureRecLoss)
            fea = Model.Config.FeaRecLossWeight * (Model.Config.FeaRecLossType == "mse"
                ? F.mse_loss(Amp.F32(spatial), Amp.F32(s).detach())
                : (1 - F.cosine_similarity(Amp.F32(s).detach(), Amp.F32(spatial), 1)).mean());
        var z = Amp.Conv(postQuantConv, quant);   // DecodeQuant's input stage, shared by the extra prefixes
        var features = prefixes.Select(kp =>
        {
            var (t, m) = Plan(kp);
            return Amp.F32(s1to2decoder.forward(z, t, m, inner: true).Inner!);
        }).ToArray();
        return (recon, new TokenizerLosses(vq, commit, entropy, fea, usage, idx), semantic, features);
    }

    /// <summary>Decode length and key mask of per-sample K, as <see cref="Forward"/> calls Model.Forward: one K slices, mixed K masks.</summary>
    (int Tokens, Tensor? Mask) Plan(Tensor k)
    {
        int max = (int)k.max().item<long>();
        return (max, k.min().item<long>() == max ? null : ReTokTokenizer.KeyMask(k.to(Model.Device), max));
    }
}

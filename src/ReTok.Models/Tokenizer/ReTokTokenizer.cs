using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ReTok.Models.Tokenizer;

// ReTok's 1-D tokenizer, VQVitModelPlus (zfu006/ReTok vq_vit_model.py L143-488, blocks.py): CNN encoder → ViT Q-Former
// encoder with 256 multi-level queries + 224 redundant padding queries → 480 codes from an L2-normalised 16384x8
// codebook (rotation trick) → ViT Q-Former decoder that reads the first K codes → adaptive-GN pixel decoder.
// Module and parameter names are the reference state-dict names (tokenizer.md §2), so checkpoints load 1:1.

/// <summary>
/// nn.MultiheadAttention's math (batch_first False, packed `in_proj_weight` rows q|k|v, `out_proj` a Linear), written
/// out like PyTorch 1.13's F.multi_head_attention_forward: q scaled by 1/√d, then bmm / softmax / bmm.
/// </summary>
public sealed class PackedAttention : nn.Module
{
    readonly Parameter in_proj_weight, in_proj_bias;
    readonly Linear out_proj;
    readonly int heads;

    public PackedAttention(int width, int heads) : base(nameof(PackedAttention))
    {
        this.heads = heads;
        in_proj_weight = new Parameter(torch.empty(3 * width, width));
        in_proj_bias = new Parameter(torch.zeros(3 * width));
        out_proj = nn.Linear(width, width);
        using (torch.no_grad()) { nn.init.xavier_uniform_(in_proj_weight); out_proj.bias!.zero_(); }
        RegisterComponents();
    }

    /// <param name="q">(Lq, B, E)</param><param name="k">(Lk, B, E)</param><param name="v">(Lk, B, E)</param>
    /// <param name="keyMask">optional additive mask (B, 1, Lk): 0 = attend, -inf = ignore.</param>
    public Tensor forward(Tensor q, Tensor k, Tensor v, Tensor? keyMask = null)
    {
        long lq = q.shape[0], b = q.shape[1], e = q.shape[2], lk = k.shape[0], d = e / heads;
        var w = in_proj_weight.chunk(3);
        var bias = in_proj_bias.chunk(3);
        var qh = Amp.Linear(q, w[0], bias[0]).contiguous().view(lq, b * heads, d).transpose(0, 1);
        var kh = Amp.Linear(k, w[1], bias[1]).contiguous().view(lk, b * heads, d).transpose(0, 1);
        var vh = Amp.Linear(v, w[2], bias[2]).contiguous().view(lk, b * heads, d).transpose(0, 1);
        qh = qh / Math.Sqrt(d);
        var scores = Amp.Bmm(qh, kh.transpose(-2, -1));
        if (keyMask is not null)   // PyTorch adds the -inf mask through baddbmm; adding 0 / -inf is exact either way
            scores = scores + keyMask.view(b, 1, 1, lk).expand(b, heads, 1, lk).reshape(b * heads, 1, lk);
        var o = Amp.Bmm(F.softmax(Amp.F32(scores), -1), vh);   // Amp: softmax in fp32, bmm in the compute dtype
        return Amp.Linear(out_proj, o.transpose(0, 1).contiguous().view(lq * b, e)).view(lq, b, e);
    }
}

/// <summary>
/// The DETR-style pre-norm Q-Former layer (blocks.py L571-747, forward_pre): self-attention over the queries,
/// cross-attention to the memory, GELU MLP. Positions are added to queries and keys only, never to values; the
/// memory is not normalised inside the layer.
/// </summary>
public sealed class QFormerLayer : nn.Module
{
    readonly PackedAttention self_attn, multihead_attn;
    readonly Linear linear1, linear2;
    readonly LayerNorm norm1, norm2, norm3;

    public QFormerLayer(int width, int heads) : base(nameof(QFormerLayer))
    {
        self_attn = new PackedAttention(width, heads);
        multihead_attn = new PackedAttention(width, heads);
        linear1 = nn.Linear(width, 4 * width);
        linear2 = nn.Linear(4 * width, width);
        norm1 = nn.LayerNorm(width);
        norm2 = nn.LayerNorm(width);
        norm3 = nn.LayerNorm(width);
        RegisterComponents();
    }

    public Tensor forward(Tensor tgt, Tensor memory, Tensor pos, Tensor queryPos, Tensor? keyMask = null)
    {
        var t = norm1.call(Amp.F32(tgt));
        var qk = t + queryPos;
        tgt = tgt + self_attn.forward(qk, qk, t);
        t = norm2.call(Amp.F32(tgt));
        tgt = tgt + multihead_attn.forward(t + queryPos, memory + pos, memory, keyMask);
        return tgt + Amp.Linear(linear2, F.gelu(Amp.Linear(linear1, norm3.call(Amp.F32(tgt)))));
    }
}

/// <summary>
/// `s2to1encoder` (blocks.py L1017-1204): 256 image tokens are the memory; the queries are the 9 multi-level average
/// pools of the embedded image tokens (coarse to fine, 1+1+2+…+128 = 256) plus a copy of queries 32…255 (M = 224
/// padding queries), 480 in all, attending to each other without a mask. Output B x z x 1 x 480.
/// </summary>
public sealed class ViTQFormerEncoder : nn.Module<Tensor, Tensor>
{
    readonly Parameter positional_embedding, latent_token_positional_embedding, latent_token_positional_embedding_comp;
    readonly Linear encoder_embed, global_proj;
    readonly LayerNorm ln_pre, ln_post;
    readonly ModuleList<QFormerLayer> transformer = new();
    readonly Conv2d conv_out;
    readonly int width, grid, numLatent;

    public ViTQFormerEncoder(TokenizerConfig c) : base(nameof(ViTQFormerEncoder))
    {
        var (w, layers, heads) = c.EncoderVit;
        (width, grid, numLatent) = (w, c.GridSize, c.NumLatentTokens);
        double scale = Math.Pow(w, -0.5);
        positional_embedding = new Parameter(scale * torch.randn(grid * grid, 1, w));
        latent_token_positional_embedding = new Parameter(scale * torch.randn(numLatent, 1, w));
        latent_token_positional_embedding_comp = new Parameter(scale * torch.randn(c.NumPaddingTokens, 1, w));
        encoder_embed = nn.Linear(c.ZChannels, w);
        ln_pre = nn.LayerNorm(c.ZChannels);
        global_proj = nn.Linear(w, w);
        for (int i = 0; i < layers; i++) transformer.Add(new QFormerLayer(w, heads));
        ln_post = nn.LayerNorm(w);
        conv_out = nn.Conv2d(w, c.ZChannels, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor s)
    {
        long b = s.shape[0];
        var x = Amp.Linear(encoder_embed, ln_pre.call(Amp.F32(s).reshape(b, s.shape[1], -1).permute(2, 0, 1)));   // (256, B, E)
        var q = MultiLevelQueries(x.permute(1, 2, 0).reshape(b, width, grid, grid)).permute(1, 0, 2);  // (256, B, E)
        q = Amp.Linear(global_proj, torch.cat(new[] { q, q.narrow(0, 32, q.shape[0] - 32) }, 0));                                 // (480, B, E)
        var queryPos = torch.cat(new Tensor[] { latent_token_positional_embedding, latent_token_positional_embedding_comp }, 0);
        foreach (var layer in transformer) q = layer.forward(q, x, positional_embedding, queryPos);
        q = ln_post.call(Amp.F32(q)).permute(1, 2, 0).reshape(b, width, 1, q.shape[0]);
        return Amp.Conv(conv_out, q);
    }

    /// <summary>sample_multi_level_1d_tokens (blocks.py L47-91), first_grow "row": group g pools to 2^⌊l/2⌋ x 2^⌊(l+1)/2⌋ cells, l = max(g−1, 0).</summary>
    Tensor MultiLevelQueries(Tensor x)
    {
        var groups = new List<Tensor>();
        foreach (var (_, hBlocks, wBlocks) in Levels(numLatent))
        {
            var k = new long[] { grid / hBlocks, grid / wBlocks };
            groups.Add(F.avg_pool2d(x, k, k).flatten(2).transpose(1, 2));
        }
        return torch.cat(groups, 1);
    }

    /// <summary>The token groups of the multi-level layout, coarse to fine: first token, hBlocks x wBlocks cells (row-major).
    /// The decoder's 2-D query init inverts the same layout.</summary>
    public static IEnumerable<(int Start, int HBlocks, int WBlocks)> Levels(int numLatent)
    {
        int levels = (int)Math.Round(Math.Log2(numLatent)), start = 0;
        for (int g = 0; g <= levels; g++)
        {
            int l = Math.Max(g - 1, 0), wBlocks = 1 << ((l + 1) / 2), hBlocks = 1 << (l / 2);
            yield return (start, hBlocks, wBlocks);
            start += hBlocks * wBlocks;
        }
    }
}

/// <summary>
/// `s1to2decoder` (blocks.py L1449-1648): 256 2-D queries, all initialised to the embedding of 1-D token 0 and told
/// apart by `positional_embedding`, read the first K 1-D tokens (keys get `latent_token_positional_embedding` ‖ `_comp`).
/// Optional per-sample key mask; optional `distill_mlp` tap after layer distill_depth (the semantic features).
/// </summary>
public sealed class ViTQFormerDecoder : nn.Module
{
    readonly Parameter positional_embedding, latent_token_positional_embedding, latent_token_positional_embedding_comp;
    readonly Linear decoder_embed;
    readonly LayerNorm ln_pre, ln_post;
    readonly ModuleList<QFormerLayer> transformer = new();
    readonly Conv2d conv_out;
    readonly Sequential? distill_mlp;
    readonly int width, grid, distillDepth, numLatent;
    readonly bool multiLevel2d;

    public ViTQFormerDecoder(TokenizerConfig c) : base(nameof(ViTQFormerDecoder))
    {
        var (w, layers, heads) = c.DecoderVit;
        (width, grid, distillDepth, numLatent, multiLevel2d) = (w, c.GridSize, c.DistillDepth ?? -1, c.NumLatentTokens, c.MultiLevel2dQueryInit);
        double scale = Math.Pow(w, -0.5);
        decoder_embed = nn.Linear(c.ZChannels, w);
        ln_pre = nn.LayerNorm(c.ZChannels);
        positional_embedding = new Parameter(scale * torch.randn(grid * grid, 1, w));
        latent_token_positional_embedding = new Parameter(scale * torch.randn(c.NumLatentTokens, 1, w));
        latent_token_positional_embedding_comp = new Parameter(scale * torch.randn(c.NumPaddingTokens, 1, w));
        for (int i = 0; i < layers; i++) transformer.Add(new QFormerLayer(w, heads));
        ln_post = nn.LayerNorm(w);
        conv_out = nn.Conv2d(w, c.ZChannels, 3, padding: 1);
        if (c.DistillDepth != null)
            distill_mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, 4 * w), nn.SiLU(), nn.Linear(4 * w, c.OutInnerDim));
        RegisterComponents();
    }

    public bool HasDistillMlp => distill_mlp != null;

    /// <param name="z">post_quant_conv output, B x z x 1 x W with W ≥ tokens.</param>
    /// <param name="tokens">K: how many leading 1-D tokens the queries read.</param>
    /// <param name="keyMask">optional additive (B, 1, K) mask, -inf at ignored tokens (per-sample K).</param>
    /// <param name="inner">also return distill_mlp(layer-`distill_depth` queries), B x 256 x out_inner_dim.</param>
    public (Tensor Spatial, Tensor? Inner) forward(Tensor z, int tokens, Tensor? keyMask = null, bool inner = false)
    {
        long b = z.shape[0];
        var x = Amp.Linear(decoder_embed, ln_pre.call(Amp.F32(z).reshape(b, z.shape[1] * z.shape[2], z.shape[3]).permute(2, 0, 1)));  // (W, B, E)
        var q = multiLevel2d ? MultiLevel2dQueries(x, grid, numLatent, tokens, keyMask) : x.narrow(0, 0, 1).repeat(grid * grid, 1, 1);
        var pos = torch.cat(new Tensor[] { latent_token_positional_embedding, latent_token_positional_embedding_comp }, 0).narrow(0, 0, tokens);
        x = x.narrow(0, 0, tokens);
        Tensor? feat = null;
        for (int i = 0; i < transformer.Count; i++)
        {
            q = transformer[i].forward(q, x, pos, positional_embedding, keyMask);
            if (inner && i + 1 == distillDepth) feat = Amp.Sequential(distill_mlp!, q).permute(1, 0, 2);
        }
        if (inner && feat is null) throw new InvalidOperationException("semantic features requested but the config has no distill_depth/distill_mlp");
        q = ln_post.call(Amp.F32(q)).permute(1, 2, 0).reshape(b, width, grid, grid);
        return (Amp.Conv(conv_out, q), feat);
    }

    /// <summary>
    /// `multi_level_2d_query_init`, K-aware (ours): each 2-D query starts as the mean, over the levels complete within the
    /// sample's first min(K, N) tokens, of the level's token whose cell covers it (the inverse of the encoder's multi-level
    /// pooling), so the queries carry the layout in their values from step 0 instead of learning DETR-style routing. The
    /// reference's multi_level_1d_features_to_2d_maps_avg (blocks.py L126) reads every level from token 0 (its start index
    /// is reset per level), needs all 2^n tokens and is marked deprecated; with K = 1 this is the default init (token 0).
    /// </summary>
    /// <param name="x">embedded 1-D tokens (W, B, E), W ≥ <paramref name="tokens"/>.</param>
    /// <returns>(grid², B, E) 2-D queries, row-major cells.</returns>
    public static Tensor MultiLevel2dQueries(Tensor x, int grid, int numLatent, int tokens, Tensor? keyMask = null)
    {
        long b = x.shape[1], width = x.shape[2];
        Tensor? sum = null, count = null;
        foreach (var (start, hBlocks, wBlocks) in ViTQFormerEncoder.Levels(numLatent))
        {
            int end = start + wBlocks * hBlocks;
            if (end > tokens) break;
            var cells = x.narrow(0, start, end - start).permute(1, 2, 0).reshape(b, width, hBlocks, wBlocks);
            var map = cells.repeat_interleave(grid / hBlocks, 2).repeat_interleave(grid / wBlocks, 3);
            // per-sample K: a level counts only for the samples whose mask keeps its last token
            var keep = keyMask is null ? torch.ones(b, 1, 1, 1, dtype: map.dtype, device: map.device)
                : keyMask.select(2, end - 1).eq(0).to(map.dtype).view(b, 1, 1, 1);
            sum = sum is null ? map * keep : sum + map * keep;
            count = count is null ? keep : count + keep;
        }
        return (sum! / count!).flatten(2).permute(2, 0, 1);
    }
}

/// <summary>
/// VectorQuantizer (vq_vit_model.py L731-928) with l2_norm and the rotation trick. Buffer `codebook_used` is the
/// sliding window of the last 65536 indices (logging only), updated in training mode.
/// </summary>
public sealed class VectorQuantizer : nn.Module
{
    readonly Tensor codebook_used;
    readonly Embedding embedding;
    readonly int n, dim;
    readonly double beta, entropyRatio;

    public VectorQuantizer(TokenizerConfig c) : base(nameof(VectorQuantizer))
    {
        (n, dim, beta, entropyRatio) = (c.CodebookSize, c.CodebookEmbedDim, c.CommitLossBeta, c.EntropyLossRatio);
        codebook_used = torch.zeros(65536);
        register_buffer(nameof(codebook_used), codebook_used);
        embedding = nn.Embedding(n, dim);
        using (torch.no_grad())
        {
            embedding.weight!.uniform_(-1.0 / n, 1.0 / n);
            embedding.weight!.copy_(F.normalize(embedding.weight!, 2, -1));
        }
        RegisterComponents();
    }

    public Tensor Codebook => F.normalize(embedding.weight!, 2, -1);

    /// <summary>Maps the nearest-code indices to the ones used. Parity tests give the reference's codes here: a float32
    /// near-tie may break either way on another CPU, and one flipped code makes the comparison discrete.</summary>
    internal Func<Tensor, Tensor>? IndexOverride { get; set; }

    /// <summary>Nearest unit code by the reference's expanded L2 distance (first minimum on ties). z: (T, dim), unnormalised.</summary>
    public (Tensor Indices, Tensor Distances) Lookup(Tensor zFlat)
    {
        var zn = F.normalize(zFlat, 2, -1);
        var e = Codebook;
        var d = zn.pow(2).sum(1, keepdim: true) + e.pow(2).sum(1) - 2 * zn.matmul(e.t());
        return (d.argmin(1), d);
    }

    /// <summary>z: B x dim x 1 x W → (rotated quant B x dim x 1 x W, losses, indices B x W).</summary>
    public (Tensor Quant, Tensor Codebook, Tensor Commit, Tensor Entropy, double Usage, Tensor Indices) forward(Tensor z)
    {
        var zp = z.permute(0, 2, 3, 1).contiguous();                  // B, 1, W, dim
        var (idx, d) = Lookup(zp.view(-1, dim));
        if (IndexOverride is not null) idx = IndexOverride(idx);
        var zn = F.normalize(zp, 2, -1);
        var zq = Codebook.index_select(0, idx).view(zp.shape);
        var vq = (zq - zn.detach()).pow(2).mean();
        var commit = beta * (zq.detach() - zn).pow(2).mean();
        var entropy = entropyRatio > 0 ? entropyRatio * EntropyLoss(-d) : torch.zeros(new long[0], device: z.device);
        double usage = 0;
        if (training && idx.shape[0] <= codebook_used.shape[0])
            using (torch.no_grad())
            {
                long t = idx.shape[0], len = codebook_used.shape[0];
                codebook_used.narrow(0, 0, len - t).copy_(codebook_used.narrow(0, t, len - t).clone());
                codebook_used.narrow(0, len - t, t).copy_(idx.to(codebook_used.dtype));
                usage = (torch.bincount(codebook_used.to(ScalarType.Int64), minlength: n) > 0).sum().item<long>() / (double)n;
            }
        var quant = Rotate(zn.view(-1, dim), zq.view(-1, dim)).view(zp.shape).permute(0, 3, 1, 2);
        return (quant, vq, commit, entropy, usage, idx.view(z.shape[0], -1));
    }

    /// <summary>
    /// Rotation trick (L883-896, from cfifty/rotation_trick): forward value ≈ q, gradient through a fixed rotation
    /// that takes z onto q instead of the identity.
    /// </summary>
    static Tensor Rotate(Tensor z, Tensor q)
    {
        z = z / z.norm(1, keepdim: true);
        var u = z / (z.norm(1, keepdim: true) + 1e-6);
        var qn = q / (q.norm(1, keepdim: true) + 1e-6);
        var w = ((u + qn) / (u + qn).norm(1, keepdim: true)).detach();
        var e = z.unsqueeze(1);
        e = e - 2 * torch.bmm(torch.bmm(e, w.unsqueeze(-1)), w.unsqueeze(1))
              + 2 * torch.bmm(torch.bmm(e, u.unsqueeze(-1).detach()), qn.unsqueeze(1).detach());
        return e.squeeze(1) * (q.norm(1, keepdim: true) / (z.norm(1, keepdim: true) + 1e-6)).detach();
    }

    /// <summary>compute_entropy_loss (L1334-1359), temperature 0.01; off in both configs (ratio 0).</summary>
    static Tensor EntropyLoss(Tensor affinity)
    {
        var a = affinity.reshape(-1, affinity.shape[^1]) / 0.01;
        var p = F.softmax(a, -1);
        var logp = F.log_softmax(a + 1e-5, -1);
        var avg = p.mean(new long[] { 0 });
        return -(p * logp).sum(-1).mean() + (avg * torch.log(avg + 1e-5)).sum();
    }

    /// <summary>get_codebook_entry (L912-928) for codes B x K → B x dim x 1 x K, no rotation.</summary>
    public Tensor Entry(Tensor codes)
    {
        if (codes.min().item<long>() < 0 || codes.max().item<long>() >= n)
            throw new ArgumentOutOfRangeException(nameof(codes), $"codes must lie in 0..{n - 1}, got {codes.min().item<long>()}..{codes.max().item<long>()}");
        return Codebook.index_select(0, codes.reshape(-1)).view(codes.shape[0], 1, codes.shape[1], dim).permute(0, 3, 1, 2);
    }
}

/// <summary>Quantizer and auxiliary losses of one training forward (tokenizer-training.md §2.1).</summary>
/// <param name="Codebook">mean((q − sg(ẑ))²) over all 480 tokens.</param>
/// <param name="Commitment">β·mean((sg(q) − ẑ)²).</param>
/// <param name="Entropy">entropy_loss_ratio·H (0 in both configs).</param>
/// <param name="FeatureRec">fea_rec_loss_weight·mse(sg(CNN features), ViT-decoder conv_out); null unless requested.</param>
/// <param name="Usage">distinct codes in the 65536-index window / codebook size (training mode only, else 0).</param>
/// <param name="Indices">codes B x 480.</param>
public sealed record TokenizerLosses(Tensor Codebook, Tensor Commitment, Tensor Entropy, Tensor? FeatureRec, double Usage, Tensor Indices)
{
    /// <summary>codebook + commitment + entropy: what VQLoss adds as `codebook_loss_sum`.</summary>
    public Tensor Quantizer => Codebook + Commitment + Entropy;
}

public sealed class ReTokTokenizer : nn.Module
{
    readonly CnnEncoder encoder;
    readonly ViTQFormerEncoder s2to1encoder;
    readonly ViTQFormerDecoder s1to2decoder;
    readonly CnnDecoder decoder;
    readonly VectorQuantizer quantize;
    internal VectorQuantizer Quantizer => quantize;
    readonly Conv2d quant_conv, post_quant_conv;

    public TokenizerConfig Config { get; }

    /// <summary>Builds and initialises the tokenizer as the reference does (tokenizer.md §9).</summary>
    public ReTokTokenizer(TokenizerConfig cfg) : base(nameof(ReTokTokenizer))
    {
        Config = cfg.Validate();
        encoder = new CnnEncoder(cfg);
        s2to1encoder = new ViTQFormerEncoder(cfg);
        s1to2decoder = new ViTQFormerDecoder(cfg);
        decoder = new CnnDecoder(cfg);
        foreach (var m in new nn.Module[] { encoder, s2to1encoder, s1to2decoder, decoder }) InitWeights(m);
        // built after _init_weights, as in the reference: default PyTorch init for these three
        quantize = new VectorQuantizer(cfg);
        quant_conv = nn.Conv2d(cfg.ZChannels, cfg.CodebookEmbedDim, 1);
        post_quant_conv = nn.Conv2d(cfg.CodebookEmbedDim, cfg.ZChannels, 1);
        RegisterComponents();
    }

    /// <summary>_init_weights (vq_vit_model.py L336-349): Linear/Conv weight ~ trunc_normal(0, 0.02), bias 0; LayerNorm 1/0.</summary>
    static void InitWeights(nn.Module root)
    {
        using var _ = torch.no_grad();
        foreach (var (_, m) in root.named_modules())
            switch (m)
            {
                case Linear l: TruncNormal(l.weight!, 0.02); l.bias?.zero_(); break;
                case Conv2d c: TruncNormal(c.weight!, 0.02); c.bias?.zero_(); break;
                case Layers.SafeConv2d c: TruncNormal(c.Weight, 0.02); c.Bias?.zero_(); break;
                case LayerNorm n: n.weight!.fill_(1); n.bias!.zero_(); break;
            }
    }

    /// <summary>
    /// nn.init.trunc_normal_(mean 0, std, a = −2, b = 2) as PyTorch computes it (inverse-CDF sampling). TorchSharp
    /// 0.107's own trunc_normal_ returns zeros for std 0.02, so it is not used.
    /// </summary>
    static void TruncNormal(Tensor w, double std, double a = -2, double b = 2)
    {
        static double Cdf(double x) => (1 + Erf(x / Math.Sqrt(2))) / 2;
        double l = Cdf(a / std), u = Cdf(b / std);
        w.uniform_(2 * l - 1, 2 * u - 1).erfinv_().mul_(std * Math.Sqrt(2)).clamp_(a, b);
    }

    /// <summary>erf by Abramowitz–Stegun 7.1.26 (|error| &lt; 1.5e-7): only used for the truncation bounds' CDF.</summary>
    static double Erf(double x)
    {
        double t = 1 / (1 + 0.3275911 * Math.Abs(x));
        double y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.Exp(-x * x);
        return Math.Sign(x) * y;
    }

    public int TotalTokens => Config.TotalTokens;
    public bool HasDistillMlp => s1to2decoder.HasDistillMlp;
    public Device Device => quant_conv.weight!.device;

    /// <summary>Images B x 3 x 256 x 256 in [-1, 1] → codes int64 B x 480 (256 real + 224 padding). Runs without grad.</summary>
    public Tensor Encode(Tensor images)
    {
        CheckImages(images);
        using var _ = torch.no_grad();
        var h = Amp.F32(Amp.Conv(quant_conv, s2to1encoder.call(encoder.call(images.to(Device)))));
        return quantize.Lookup(h.permute(0, 2, 3, 1).reshape(-1, Config.CodebookEmbedDim)).Indices.view(images.shape[0], -1);
    }

    /// <summary>Codes B x W (W ≥ K) → images B x 3 x 256 x 256 decoded from the first K codes. Runs without grad.</summary>
    public Tensor Decode(Tensor codes, int tokens)
    {
        CheckCodes(codes, tokens);
        using var _ = torch.no_grad();
        return DecodeQuant(quantize.Entry(codes.narrow(1, 0, tokens).to(Device)), tokens).Pixels;
    }

    /// <summary>Per-sample K (nested dropout granularity "per sample"): sample b reads its first tokenCounts[b] codes.</summary>
    public Tensor Decode(Tensor codes, Tensor tokenCounts)
    {
        int kmax = (int)tokenCounts.max().item<long>();
        CheckCodes(codes, kmax);
        using var _ = torch.no_grad();
        return DecodeQuant(quantize.Entry(codes.narrow(1, 0, kmax).to(Device)), kmax, KeyMask(tokenCounts.to(Device), kmax)).Pixels;
    }

    /// <summary>
    /// Quantized vectors B x dim x 1 x W → (pixels, ViT-decoder spatial output, semantic features?). `keyMask` is an
    /// additive (B, 1, K) mask (see <see cref="KeyMask"/>); equivalent to memory_key_padding_mask in the reference.
    /// </summary>
    public (Tensor Pixels, Tensor Spatial, Tensor? Semantic) DecodeQuant(Tensor quant, int tokens, Tensor? keyMask = null, bool semantic = false)
    {
        var (spatial, inner) = s1to2decoder.forward(Amp.Conv(post_quant_conv, quant), tokens, keyMask, semantic);
        return (Amp.F32(decoder.call(spatial)), spatial, inner is null ? null : Amp.F32(inner));
    }

    /// <summary>Additive key mask (B, 1, K): 0 for positions &lt; tokenCounts[b], −inf after.</summary>
    public static Tensor KeyMask(Tensor tokenCounts, int k)
    {
        var counts = tokenCounts.to(ScalarType.Int64);
        if (counts.min().item<long>() < 1) throw new ArgumentOutOfRangeException(nameof(tokenCounts), "every per-sample token count must be ≥ 1");
        var ignore = torch.arange(k, device: counts.device).unsqueeze(0) >= counts.unsqueeze(1);
        return torch.zeros(ignore.shape, device: counts.device).masked_fill(ignore, float.NegativeInfinity).unsqueeze(1);
    }

    /// <summary>
    /// Training forward (VQVitModelPlus.forward, L437-488, with decode length made explicit): encode, quantize with the
    /// rotation trick, decode from the first <paramref name="tokens"/> tokens (or per sample with
    /// <paramref name="tokenCounts"/>, shape B, which then overrides tokens). Returns the reconstruction, the quantizer
    /// and feature-reconstruction losses, and distill_mlp's features B x 256 x out_inner_dim when
    /// <paramref name="semantic"/> (null otherwise). The released training always uses tokens = 256.
    /// </summary>
    public (Tensor recon, TokenizerLosses losses, Tensor? semanticFeatures) Forward(
        Tensor images, int tokens = 256, Tensor? tokenCounts = null, bool featureRecLoss = false, bool semantic = true)
    {
        var (recon, losses, inner, _, _) = Forward(images, tokens, tokenCounts, featureRecLoss, semantic, Array.Empty<Tensor>());
        return (recon, losses, inner);
    }

    /// <summary>
    /// <see cref="Forward(Tensor, int, Tensor?, bool, bool)"/> plus the semantic features of extra prefixes (multi-prefix
    /// HSR): each entry of <paramref name="semanticPrefixes"/> is a per-sample K (shape B) decoded from the same quantized
    /// tokens through the ViT decoder only (its pixels would be unused), so the encoder and quantizer run once and every
    /// prefix's gradient reaches them through the same tokens. One K slices, mixed K masks. With
    /// <paramref name="direct"/> it also returns dir_dec = decoder(S_cnn), the pixel decoder on the CNN features with the
    /// 1-D bottleneck skipped (vq_vit_model.py L478-482), which VQLoss's use_direct_rec_loss terms read.
    /// </summary>
    public (Tensor recon, TokenizerLosses losses, Tensor? semanticFeatures, Tensor[] prefixFeatures, Tensor? directRecon) Forward(
        Tensor images, int tokens, Tensor? tokenCounts, bool featureRecLoss, bool semantic, IReadOnlyList<Tensor> semanticPrefixes, bool direct = false)
    {
        CheckImages(images);
        if (semanticPrefixes.Count > 0 && !HasDistillMlp)
            throw new InvalidOperationException("semantic prefixes need distill_mlp, but the tokenizer config has distill_depth: null");
        Tensor? mask = null;
        if (tokenCounts is not null)
        {
            if (tokenCounts.dim() != 1 || tokenCounts.shape[0] != images.shape[0])
                throw new ArgumentException($"tokenCounts must have one entry per image ({images.shape[0]}), got [{string.Join(", ", tokenCounts.shape)}]");
            tokens = (int)tokenCounts.max().item<long>();
        }
        if (tokens < 1 || tokens > TotalTokens) throw new ArgumentOutOfRangeException(nameof(tokens), $"tokens must be 1..{TotalTokens}, got {tokens}");
        if (tokenCounts is not null) mask = KeyMask(tokenCounts.to(Device), tokens);
        images = images.to(Device);
        var s = encoder.call(images);
        // Amp: the quantizer (unit-norm distances over the codebook, losses) stays fp32 even under bf16 compute: bf16
        // distances would flip near-tie codes; the conv/attention stacks around it run in the compute dtype
        var h = Amp.F32(Amp.Conv(quant_conv, s2to1encoder.call(s)));
        var (quant, vq, commit, entropy, usage, idx) = quantize.forward(h);
        var (spatial, inner) = s1to2decoder.forward(Amp.Conv(post_quant_conv, quant), tokens, mask, semantic && HasDistillMlp);
        if (inner is not null) inner = Amp.F32(inner);
        Tensor recon;
        Tensor? directRecon = null;
        // dir_dec: one pixel-decoder pass over [S_vit; S_cnn] instead of two. Every decoder op is per sample (convs,
        // GroupNorm, AdaptiveGroupNorm styled by its own input), so both halves equal the separate passes up to float
        // order, and the larger batch keeps the cores busier (the decoder is most of a quickstart step)
        if (direct)
        {
            var both = Amp.F32(decoder.call(torch.cat([spatial, s.to(spatial.dtype)], 0)));
            recon = both.narrow(0, 0, spatial.shape[0]);
            directRecon = both.narrow(0, spatial.shape[0], s.shape[0]);
        }
        else recon = Amp.F32(decoder.call(spatial));
        Tensor? fea = null;
        if (featureRecLoss)
            fea = Config.FeaRecLossWeight * (Config.FeaRecLossType == "mse"
                ? F.mse_loss(Amp.F32(spatial), Amp.F32(s).detach())
                : (1 - F.cosine_similarity(Amp.F32(s).detach(), Amp.F32(spatial), 1)).mean());
        var prefixFeatures = Array.Empty<Tensor>();
        if (semanticPrefixes.Count > 0)
        {
            var z = Amp.Conv(post_quant_conv, quant);
            prefixFeatures = semanticPrefixes.Select(k =>
            {
                int kmax = (int)k.max().item<long>();
                var m = k.min().item<long>() == kmax ? null : KeyMask(k.to(Device), kmax);
                return Amp.F32(s1to2decoder.forward(z, kmax, m, inner: true).Inner!);
            }).ToArray();
        }
        return (recon, new TokenizerLosses(vq, commit, entropy, fea, usage, idx), inner, prefixFeatures, directRecon);
    }

    /// <summary>uint8 B x H x W x 3 → float B x 3 x H x W in [-1, 1], as torchvision ToTensor + Normalize(0.5, 0.5).</summary>
    public static Tensor ImagesFromUint8(Tensor nhwc)
    {
        if (nhwc.dtype != ScalarType.Byte || nhwc.dim() != 4 || nhwc.shape[3] != 3)
            throw new ArgumentException($"expected uint8 images B x H x W x 3, got {nhwc.dtype} [{string.Join(", ", nhwc.shape)}]");
        var x = nhwc.permute(0, 3, 1, 2).to(ScalarType.Float32) / 255;
        return (x - 0.5) / 0.5;
    }

    /// <summary>Reference post-processing: clamp(127.5·x + 128, 0, 255) cast to uint8 (truncation), B x H x W x 3.</summary>
    public static Tensor ImagesToUint8(Tensor x) =>
        torch.clamp(127.5 * x.detach() + 128.0, 0, 255).permute(0, 2, 3, 1).to(ScalarType.Byte).contiguous();

    /// <summary>Parameters of the training-only `distill_mlp` (may be absent from inference checkpoints).</summary>
    public static bool IsTrainingOnlyKey(string key) => key.StartsWith("s1to2decoder.distill_mlp.");

    /// <summary>Builds the tokenizer for <paramref name="cfg"/> and loads a checkpoint (.pt zip or .safetensors; ema preferred).</summary>
    public static ReTokTokenizer FromCheckpoint(TokenizerConfig cfg, string path, string prefer = "ema")
    {
        var model = new ReTokTokenizer(cfg);
        var sd = IO.StateDictFile.Read(path, prefer);
        try { model.LoadWeights(sd, path); }
        finally { foreach (var t in sd.Values) t.Dispose(); }
        return model;
    }

    /// <summary>
    /// Strict load (StateDictFile.LoadInto) after an architecture check that names what differs, e.g. an SB checkpoint
    /// given with the SS config. `distill_mlp` may be missing (training-only); its current values are kept.
    /// </summary>
    public void LoadWeights(IReadOnlyDictionary<string, Tensor> sd, string source)
    {
        TokenizerConfig guess;
        try { guess = TokenizerConfig.Guess(sd); }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"checkpoint {source} is not a ReTok/GigaTok VQVitModelPlus state dict ({e.Message}); " +
                $"first keys: {string.Join(", ", sd.Keys.Take(5))}", e);
        }
        var diffs = new List<string>();
        void Diff(string what, object a, object b) { if (!Equals(a, b)) diffs.Add($"{what}: checkpoint {a}, config {b}"); }
        Diff("encoder ViT width", guess.EncoderVit.Width, Config.EncoderVit.Width);
        Diff("encoder ViT layers", guess.EncoderVit.Layers, Config.EncoderVit.Layers);
        Diff("decoder ViT width", guess.DecoderVit.Width, Config.DecoderVit.Width);
        Diff("decoder ViT layers", guess.DecoderVit.Layers, Config.DecoderVit.Layers);
        Diff("CNN ch", guess.Ch, Config.Ch);
        Diff("encoder_ch_mult", string.Join(",", guess.EncoderChMult), string.Join(",", Config.EncoderChMult));
        Diff("decoder_ch_mult", string.Join(",", guess.DecoderChMult), string.Join(",", Config.DecoderChMult));
        Diff("num_res_blocks", guess.NumResBlocks, Config.NumResBlocks);
        Diff("z_channels", guess.ZChannels, Config.ZChannels);
        Diff("codebook", $"{guess.CodebookSize}x{guess.CodebookEmbedDim}", $"{Config.CodebookSize}x{Config.CodebookEmbedDim}");
        if (guess.DistillDepth != null && HasDistillMlp) Diff("out_inner_dim", guess.OutInnerDim, Config.OutInnerDim);
        if (guess.DistillDepth != null && !HasDistillMlp) diffs.Add("checkpoint has distill_mlp but the config has distill_depth: null");
        if (diffs.Count > 0)
            throw new InvalidDataException($"checkpoint {source} is a different tokenizer architecture " +
                $"({guess.PresetName ?? "custom"}) than the config ({Config.PresetName ?? "custom"}): {string.Join("; ", diffs)}");
        IO.StateDictFile.LoadInto(this, sd, source, mayBeMissing: IsTrainingOnlyKey);
    }

    /// <summary>
    /// Warm start from a GigaTok checkpoint, which has no Redundant Token Padding: every `*_comp` padding positional
    /// embedding the file lacks is filled with the last M rows of its `latent_token_positional_embedding` (padding query
    /// j replicates query 32 + j, as the queries themselves do, paper.md §1.4); everything else loads strictly.
    /// Returns the keys it filled.
    /// </summary>
    public IReadOnlyList<string> LoadWeightsGigaTok(IReadOnlyDictionary<string, Tensor> sd, string source)
    {
        var filled = new Dictionary<string, Tensor>(sd);
        var keys = new List<string>();
        foreach (var (key, own) in state_dict())
        {
            if (!key.EndsWith("_comp", StringComparison.Ordinal) || sd.ContainsKey(key)) continue;
            var baseKey = key[..^"_comp".Length];
            if (!sd.TryGetValue(baseKey, out var q)) continue;   // the strict load below names both as missing
            long m = own.shape[0];
            filled[key] = q.narrow(0, q.shape[0] - m, m);
            keys.Add(key);
        }
        LoadWeights(filled, source);
        return keys;
    }

    void CheckImages(Tensor x)
    {
        if (x.dim() != 4 || x.shape[1] != 3 || x.shape[2] != Config.ImageSize || x.shape[3] != Config.ImageSize)
            throw new ArgumentException($"images must be B x 3 x {Config.ImageSize} x {Config.ImageSize} in [-1, 1] (the config's image_size), got [{string.Join(", ", x.shape)}]");
    }

    void CheckCodes(Tensor codes, int tokens)
    {
        if (codes.dim() != 2) throw new ArgumentException($"codes must be B x W int64, got [{string.Join(", ", codes.shape)}]");
        if (tokens < 1 || tokens > Math.Min(codes.shape[1], TotalTokens))
            throw new ArgumentOutOfRangeException(nameof(tokens), $"tokens (K) must be 1..{Math.Min(codes.shape[1], TotalTokens)} for codes of width {codes.shape[1]}, got {tokens}");
    }
}

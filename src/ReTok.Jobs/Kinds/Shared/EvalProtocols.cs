using ReTok.Engine;

namespace ReTok.Jobs.Kinds.Shared;

/// <summary>
/// The evaluation protocols our jobs record as metric provenance (docs/evaluation.md "Provenance"). Bump a version when a
/// change moves the numbers it produces: the results table then keeps old and new numbers out of one column.
/// </summary>
public static class EvalProtocols
{
    public const string Adm = "ADM evaluator (guided-diffusion evaluations/evaluator.py) port";
    public const string AdmVersion = "1";
    public const string Pixel = "reconstruction_ddp.py port (PSNR/SSIM on uint8, LPIPS-VGG on the raw decoder output)";
    public const string PixelVersion = "1";
    /// <summary>What the Inception metrics see: 256x256 images as extract-dataset wrote them, then the network's own resize.</summary>
    public const string InceptionPreprocess = "ADM centre crop 256 (extract-dataset, PIL bicubic), uint8 NHWC; Inception: TF1 bilinear resize to 299";
    public const string PixelPreprocess = "ADM centre crop 256 (extract-dataset, PIL bicubic), uint8 NHWC";

    /// <summary>The sha256 of an artifact (its row), or null when it is gone.</summary>
    public static async Task<string?> ShaAsync(JobContext ctx, long runId, string name) =>
        (await ctx.Tracker.GetArtifactAsync(runId, name, ctx.CancellationToken))?.Sha256;
}

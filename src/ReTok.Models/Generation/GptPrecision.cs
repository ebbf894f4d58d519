using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.Generation;

/// <summary>
/// The reference scripts' --precision for the GPT (sample_c2i.py, val_loss_cal.py): none/fp32 = float32, bf16, fp16
/// (autocast over fp32 weights); ours adds auto = bf16 on CUDA, fp32 on CPU.
/// </summary>
public static class GptPrecision
{
    public static string? Validate(string precision) =>
        precision is "auto" or "none" or "fp32" or "bf16" or "fp16" ? null : $"precision: expected auto, none, fp32, bf16 or fp16, got '{precision}'";

    /// <summary>The autocast dtype on <paramref name="device"/>; null = float32 (no autocast).</summary>
    public static ScalarType? Autocast(string precision, DeviceType device) => precision switch
    {
        "bf16" => ScalarType.BFloat16,
        "fp16" => ScalarType.Float16,
        "auto" when device == DeviceType.CUDA => ScalarType.BFloat16,
        _ => null,
    };
}

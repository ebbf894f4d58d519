using System.Diagnostics;
using System.Globalization;
using ReTok.Models;
using ReTok.Models.Tokenizer;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Bench;

/// <summary>`retok tokenizer bench`: images/s of encode and decode(K) with freshly initialised weights (the CLI registers the command).</summary>
public static class TokenizerBench
{
    public static int Run(TokenizerConfig cfg, int batch, int iters, int tokens, string device, TextWriter log)
    {
        torch.manual_seed(0);
        using var model = new ReTokTokenizer(cfg);
        var dev = Devices.Resolve(device);
        model.to(dev).eval();
        var x = (torch.rand(new long[] { batch, 3, 256, 256 }) * 2 - 1).to(dev);
        using (var _ = NewDisposeScope()) model.Decode(model.Encode(x.narrow(0, 0, 1)), tokens);   // warm-up at batch 1
        var codes = torch.randint(0, cfg.CodebookSize, new long[] { batch, model.TotalTokens }, dtype: ScalarType.Int64);  // decode cost does not depend on the values
        double Time(Action a)
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < iters; i++) { using var s = NewDisposeScope(); a(); }
            return sw.Elapsed.TotalSeconds / iters;
        }
        double enc = Time(() => model.Encode(x)), dec = Time(() => model.Decode(codes, tokens));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"ours {cfg.PresetName ?? "custom"} batch {batch} on {Devices.Describe(dev)}: encode {batch / enc:F3} img/s ({enc:F2}s/batch), decode K={tokens} {batch / dec:F3} img/s ({dec:F2}s/batch)"));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"BENCH_JSON {{\"encode_img_s\": {batch / enc:F4}, \"decode_img_s\": {batch / dec:F4}}}"));
        return 0;
    }
}

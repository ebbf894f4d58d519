using ReTok.Models.Images;
using ReTok.Models.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Tests.Training;

public class DataTests
{
    private static Tensor U8(Tensor t) => t.to(ScalarType.Byte);

    [Fact]
    public void PilResizeIsBitExact()
    {
        var fx = TrainingFixtures.Load("data.npz");
        var odd = RgbImage.FromTensor(fx["odd"]);
        foreach (var (w, h, tag) in new[] { (40, 31, "down"), (150, 120, "up"), (48, 41, "half") })
        {
            Assert.Equal(0.0, TrainingFixtures.MaxDiff(PilResize.Resize(odd, w, h, PilFilter.Bicubic).ToTensor(), fx[$"odd.bicubic.{tag}"]));
            Assert.Equal(0.0, TrainingFixtures.MaxDiff(PilResize.Resize(odd, w, h, PilFilter.Box).ToTensor(), fx[$"odd.box.{tag}"]));
        }
    }

    /// <summary>The 700x530 source of the crop fixtures, rebuilt exactly as training.py makes it.</summary>
    private static Tensor BigImage(Dictionary<string, Tensor> fx)
    {
        var big = PilResize.Resize(RgbImage.FromTensor(fx["small"]), 700, 530, PilFilter.Bicubic).ToTensor();
        big[TensorIndex.Slice(null, null, 37), TensorIndex.Slice(null, null, 11)] = tensor((byte)255);
        Assert.Equal(fx["image.sum"].item<long>(), big.to(int64).sum().item<long>());
        return big;
    }

    [Fact]
    public void RandomAndCenterCropsMatchReferenceGivenTheSameDraws()
    {
        var fx = TrainingFixtures.Load("data.npz");
        var big = BigImage(fx);
        bool halvingSeen = false;
        for (int i = 0; i < 4; i++)
        {
            var draws = new Queue<long>(fx[$"crop{i}.draws"].data<long>().ToArray());
            long s = draws.Peek();
            halvingSeen |= 530 >= 2 * s;
            var calls = new List<(long, long)>();
            var crop = AdmCrop.RandomCropArr(RgbImage.FromTensor(big), 256, (lo, hi) => { calls.Add((lo, hi)); return draws.Dequeue(); }).ToTensor();
            Assert.Equal((256L, 321L), calls[0]);   // S = randrange(256, 321)
            Assert.Empty(draws);
            Assert.Equal(0.0, TrainingFixtures.MaxDiff(crop, fx[$"crop{i}"]));
        }
        Assert.True(halvingSeen, "fixture must cover the BOX-halving branch");
        Assert.Equal(0.0, TrainingFixtures.MaxDiff(AdmCrop.CenterCropArr(RgbImage.FromTensor(big), 256).ToTensor(), fx["center"]));
    }

    [Fact]
    public void EpochOrderIsDistributedSamplerOrder()
    {
        var fx = TrainingFixtures.Load("data.npz");
        foreach (var e in new[] { 0, 1, 7 })
            Assert.Equal(fx[$"order.epoch{e}"].data<long>().ToArray(), EpochOrder.Permutation(1000, 0, e));
    }

    [Fact]
    public void LoaderIsDeterministicAndResumesAtAPosition()
    {
        var g = new torch.Generator(2);
        var images = new TensorImageSource(U8(randint(0, 256, new long[] { 10, 40, 50, 3 }, generator: g)));
        var cfg = new DataConfig(BatchSize: 3, ImageSize: 32, Seed: 4);
        var a = new TrainingDataLoader(images, cfg);
        Assert.Equal(3, a.BatchesPerEpoch);
        var batches = Enumerable.Range(0, 7).Select(_ => a.Next()).ToList();   // crosses two epoch boundaries
        Assert.Equal(new DataPosition(2, 1), a.Position);
        Assert.Equal(new long[] { 3, 3, 32, 32 }, batches[0].shape);
        Assert.InRange(batches[0].min().item<float>(), -1f, -0.5f);
        Assert.InRange(batches[0].max().item<float>(), 0.5f, 1f);
        var b = new TrainingDataLoader(images, cfg with { Workers = 2 }, new DataPosition(0, 2));
        for (int i = 2; i < 7; i++) Assert.Equal(0.0, TrainingFixtures.MaxDiff(b.Next(), batches[i]));
        // epochs differ (new permutation and new crops), seeds differ
        Assert.NotEqual(0.0, TrainingFixtures.MaxDiff(batches[0], batches[3]));
        var c = new TrainingDataLoader(images, cfg with { Seed = 5 });
        Assert.NotEqual(0.0, TrainingFixtures.MaxDiff(c.Next(), batches[0]));
        // flips happen at roughly half the rate: the same image with flip on/off
        int flips = 0;
        var noFlip = new TrainingDataLoader(images, cfg with { HorizontalFlip = false });
        for (int i = 0; i < 10; i++)
            if (TrainingFixtures.MaxDiff(a.Sample(i, 0), noFlip.Sample(i, 0)) > 0) flips++;
        Assert.InRange(flips, 1, 9);
    }

    [Fact]
    public void BadInputsGiveClearErrors()
    {
        Assert.Contains("uint8 [N,H,W,3]", Assert.Throws<ArgumentException>(() => new TensorImageSource(zeros(2, 4, 4, 3))).Message);
        var few = new TensorImageSource(zeros(new long[] { 2, 8, 8, 3 }, ScalarType.Byte));
        Assert.Contains("fewer than one batch", Assert.Throws<ArgumentException>(() => new TrainingDataLoader(few, new DataConfig(4))).Message);
    }
}

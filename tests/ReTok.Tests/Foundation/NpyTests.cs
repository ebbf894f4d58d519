using ReTok.Models.IO;
using TorchSharp;

namespace ReTok.Tests.Foundation;

public class NpyTests
{
    [Fact]
    public void RoundTripsTensorsThroughNpyAndNpz()
    {
        var dir = Directory.CreateTempSubdirectory("npy").FullName;
        var f = torch.arange(24, torch.float32).reshape(2, 3, 4) / 7;
        var u = torch.randint(0, 255, new long[] { 2, 5, 5, 3 }, torch.uint8);
        Npy.Save(Path.Combine(dir, "f.npy"), f);
        Assert.True(f.eq(Npy.Load(Path.Combine(dir, "f.npy")).ToTensor()).all().item<bool>());
        Npz.Save(Path.Combine(dir, "a.npz"), new Dictionary<string, NpyArray> { ["arr_0"] = NpyArray.FromTensor(u), ["labels"] = NpyArray.Of(new long[] { 3, 9 }) });
        var back = Npz.Load(Path.Combine(dir, "a.npz"));
        Assert.True(u.eq(back["arr_0"].ToTensor()).all().item<bool>());
        Assert.Equal(new long[] { 3, 9 }, back["labels"].As<long>());
        Assert.Equal(new long[] { 2, 5, 5, 3 }, Npz.Header(Path.Combine(dir, "a.npz"), "arr_0").Shape);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReadRowsFromARowSkipsTheRowsBefore(bool compress)
    {
        // stored entries seek, deflated ones read and discard: both must give the same rows as a full read
        var path = Path.Combine(Directory.CreateTempSubdirectory("npz").FullName, "rows.npz");
        var x = torch.randint(0, 255, new long[] { 23, 4, 4, 3 }, torch.uint8);
        Npz.Save(path, new Dictionary<string, NpyArray> { ["arr_0"] = NpyArray.FromTensor(x) }, compress);
        var chunks = Npz.ReadRows(path, "arr_0", 5, fromRow: 7).ToList();
        Assert.Equal(new long[] { 7, 12, 17, 22 }, chunks.Select(c => c.Start));
        Assert.Equal(new long[] { 5, 5, 5, 1 }, chunks.Select(c => c.Chunk.Shape[0]));
        var tail = torch.cat(chunks.Select(c => c.Chunk.ToTensor()).ToList(), 0);
        Assert.True(x.narrow(0, 7, 16).eq(tail).all().item<bool>());
        Assert.Empty(Npz.ReadRows(path, "arr_0", 5, fromRow: 23));
        Assert.Equal(23, Npz.ReadRows(path, "arr_0", 5).Sum(c => c.Chunk.Shape[0]));
        Assert.Throws<ArgumentOutOfRangeException>(() => Npz.ReadRows(path, "arr_0", 5, fromRow: -1).ToList());
    }

    [Fact]
    public void TruncatedFileGivesErrorNamingTheFile()
    {
        var path = Path.Combine(Directory.CreateTempSubdirectory("npy").FullName, "bad.npy");
        Npy.Save(path, torch.ones(100));
        File.WriteAllBytes(path, File.ReadAllBytes(path)[..200]);
        var ex = Assert.Throws<InvalidDataException>(() => Npy.Load(path));
        Assert.Contains("bad.npy", ex.Message);
        Assert.Contains("truncated", ex.Message);
    }
}

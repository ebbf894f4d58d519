using System.Net;
using System.Text.Json;
using ReTok.Tracking;

namespace ReTok.Tests.Dashboard;

/// <summary>/compare/images and GET /api/compare/images: tiles of eval-reconstruction (per K) and sample-gfid (per class) runs side by side.</summary>
public sealed class CompareImagesTests(DashboardFixture f) : IClassFixture<DashboardFixture>
{
    /// <summary>Two eval-reconstruction runs with different K sets (2 images each) and one sample-gfid run with two classes.</summary>
    public static async Task<(long A, long B, long S)> SeedAsync(Tracker t)
    {
        async Task<long> Run(string kind, string name, params string[] tiles)
        {
            var id = (await t.Runs.InsertAsync(new Run { Kind = kind, Name = name, Status = RunStatus.Succeeded })).Id;
            foreach (var tile in tiles)
                await t.SaveArtifactAsync(id, tile, new MemoryStream(TestPng.Grid(32, 32)), new ArtifactSaveOptions { Kind = "image", ContentType = "image/png" });
            return id;
        }
        var a = await Run("eval-reconstruction", "rec-a", "recon/original/0.png", "recon/original/1.png", "recon/k32/0.png", "recon/k32/1.png", "recon/k64/0.png", "recon/k64/1.png");
        var b = await Run("eval-reconstruction", "rec-b", "recon/original/0.png", "recon/original/1.png", "recon/k64/0.png", "recon/k64/1.png", "recon/k128/0.png", "recon/k128/1.png");
        var s = await Run("sample-gfid-aggregate", "samples", "samples/class3.png", "samples/class7.png");
        return (a, b, s);
    }

    [Fact]
    public async Task Api_gives_the_union_of_K_and_tile_urls_that_resolve_and_the_page_has_the_slider()
    {
        var (a, b, s) = await SeedAsync(f.Tracker);
        using var c = f.Client(UserRole.Viewer);
        var res = await c.GetAsync($"/api/compare/images?ids={a},{b},{s}");
        Assert.Equal(HttpStatusCode.OK, res.StatusCode);
        var j = JsonDocument.Parse(await res.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal(new[] { 32, 64, 128 }, j.GetProperty("ks").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(2, j.GetProperty("images").GetInt32());
        Assert.Equal(new[] { 3, 7 }, j.GetProperty("classes").EnumerateArray().Select(x => x.GetInt32()));
        var runs = j.GetProperty("runs");
        Assert.Equal(new[] { 32, 64 }, runs[0].GetProperty("ks").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal(new[] { 64, 128 }, runs[1].GetProperty("ks").EnumerateArray().Select(x => x.GetInt32()));
        var urls = new List<string> { runs[0].GetProperty("originals")[1].GetString()!, runs[1].GetProperty("recon").GetProperty("128")[0].GetString()!,
            runs[2].GetProperty("samples").GetProperty("7").GetString()! };
        Assert.Equal($"/api/runs/{b}/artifacts/recon/k128/0.png", urls[1]);
        foreach (var u in urls)
        {
            var img = await c.GetAsync(u);
            Assert.Equal(HttpStatusCode.OK, img.StatusCode);
            Assert.Equal("image/png", img.Content.Headers.ContentType!.MediaType);
        }

        var page = await c.GetStringAsync($"/compare/images?ids={a},{b},{s}");
        Assert.Contains("id=\"k-slider\"", page);
        Assert.Contains("data-ks=\"32,64,128\"", page);
        Assert.Contains($"/runs/{a}/artifacts/recon/k32/1.png?inline=true", page);
        Assert.Contains($"/runs/{s}/artifacts/samples/class3.png?inline=true", page);
        Assert.Contains($"href=\"/compare/images?ids={a},{b}\"", await c.GetStringAsync($"/compare?ids={a},{b}"));
    }
}

using System.Globalization;
using System.Text.RegularExpressions;

namespace ReTok.Dashboard;

/// <summary>One run's image tiles: per K the reconstructions of the grid's source images, and sample tiles per class.</summary>
public sealed record RunImagesDto(long Id, string? Name, string Kind, IReadOnlyList<int> Ks, IReadOnlyList<string?> Originals,
    IReadOnlyDictionary<string, IReadOnlyList<string?>> Recon, IReadOnlyDictionary<string, string> Samples);

/// <summary>Images side by side across runs: the union of the runs' K values, source images and sample classes.</summary>
public sealed record CompareImagesDto(IReadOnlyList<int> Ks, int Images, IReadOnlyList<int> Classes, IReadOnlyList<RunImagesDto> Runs);

/// <summary>
/// Reads the tiles eval-reconstruction writes (<c>recon/original/{i}.png</c>, <c>recon/k{K}/{i}.png</c>, the first
/// grid_images images) and sample-gfid writes (<c>samples/class{C}.png</c>: the first sample of class C) for
/// <c>/compare/images</c> and <c>GET /api/compare/images</c>. URLs are the API's artifact downloads.
/// </summary>
public static partial class CompareImages
{
    [GeneratedRegex(@"^recon/(?:original|k(?<k>\d+))/(?<i>\d+)\.png$")]
    private static partial Regex ReconTile();

    [GeneratedRegex(@"^samples/class(?<c>\d+)\.png$")]
    private static partial Regex SampleTile();

    public static async Task<CompareImagesDto> BuildAsync(DashboardData data, IReadOnlyList<long> ids, CancellationToken ct)
    {
        var runs = await data.GetRunsAsync(ids, ct);
        var tiles = new List<(Tracking.Run Run, Dictionary<int, Dictionary<int, string>> Recon, Dictionary<int, string> Originals, Dictionary<int, string> Samples)>();
        foreach (var r in ids.Select(id => runs.FirstOrDefault(x => x.Id == id)).OfType<Tracking.Run>())
        {
            var recon = new Dictionary<int, Dictionary<int, string>>();
            var originals = new Dictionary<int, string>();
            var samples = new Dictionary<int, string>();
            foreach (var a in await data.Tracker.ListArtifactsAsync(r.Id, ct))
            {
                var url = $"/api/runs/{r.Id}/artifacts/{a.Name}";
                if (ReconTile().Match(a.Name) is { Success: true } m)
                {
                    var i = int.Parse(m.Groups["i"].Value, CultureInfo.InvariantCulture);
                    if (!m.Groups["k"].Success) originals[i] = url;
                    else if (int.TryParse(m.Groups["k"].Value, CultureInfo.InvariantCulture, out var k))
                        (recon.TryGetValue(k, out var per) ? per : recon[k] = [])[i] = url;
                }
                else if (SampleTile().Match(a.Name) is { Success: true } sm && int.TryParse(sm.Groups["c"].Value, CultureInfo.InvariantCulture, out var c)) samples[c] = url;
            }
            tiles.Add((r, recon, originals, samples));
        }
        var ks = tiles.SelectMany(t => t.Recon.Keys).Distinct().Order().ToList();
        var images = tiles.Select(t => t.Originals.Keys.Concat(t.Recon.Values.SelectMany(v => v.Keys)).DefaultIfEmpty(-1).Max() + 1).DefaultIfEmpty(0).Max();
        var classes = tiles.SelectMany(t => t.Samples.Keys).Distinct().Order().ToList();
        return new CompareImagesDto(ks, images, classes, tiles.Select(t => new RunImagesDto(t.Run.Id, t.Run.Name, t.Run.Kind, t.Recon.Keys.Order().ToList(),
            Enumerable.Range(0, images).Select(i => t.Originals.GetValueOrDefault(i)).ToList(),
            t.Recon.OrderBy(kv => kv.Key).ToDictionary(kv => kv.Key.ToString(CultureInfo.InvariantCulture),
                kv => (IReadOnlyList<string?>)Enumerable.Range(0, images).Select(i => kv.Value.GetValueOrDefault(i)).ToList()),
            t.Samples.OrderBy(kv => kv.Key).ToDictionary(kv => kv.Key.ToString(CultureInfo.InvariantCulture), kv => kv.Value))).ToList());
    }

    /// <summary>The page's inline-image URL for an API download URL.</summary>
    public static string Inline(string apiUrl) => apiUrl["/api".Length..] + "?inline=true";
}

using System.Text.RegularExpressions;
using ReTok.Tests.Infra;

namespace ReTok.Tests.Foundation;

/// <summary>
/// Every image that README.md and docs/*.md show (`![alt](path)` or `&lt;img src="path"&gt;`) exists next to the page and is
/// the image its extension says; docs/dashboard.md shows a screenshot of each page (issue 19), and no screenshot in
/// docs/img/dashboard/ is left unreferenced. A renamed or forgotten PNG fails here instead of as a broken image on GitHub.
/// </summary>
public sealed partial class DocsImagesTests
{
    [GeneratedRegex(@"!\[[^\]]*\]\(\s*([^)\s]+)(?:\s+""[^""]*"")?\s*\)|<img\s[^>]*src=""([^""]+)""")]
    private static partial Regex ImageRef();

    /// <summary>(line number, target) of each image reference in a Markdown text; external URLs excluded.</summary>
    public static List<(int Line, string Target)> Images(string markdown)
    {
        var result = new List<(int, string)>();
        var lines = markdown.Split('\n');
        for (var i = 0; i < lines.Length; i++)
            foreach (Match m in ImageRef().Matches(lines[i]))
            {
                var target = m.Groups[1].Success ? m.Groups[1].Value : m.Groups[2].Value;
                if (!Regex.IsMatch(target, "^[a-z][a-z0-9+.-]*:", RegexOptions.IgnoreCase)) result.Add((i + 1, target));
            }
        return result;
    }

    static IEnumerable<string> DocFiles() =>
        new[] { Path.Combine(Proc.Root, "README.md") }.Concat(Directory.GetFiles(Path.Combine(Proc.Root, "docs"), "*.md", SearchOption.AllDirectories)).Order(StringComparer.Ordinal);

    /// <summary>The problems of the references in <paramref name="file"/>: missing files and files that are not the image their name says.</summary>
    static List<string> Problems(string file)
    {
        var problems = new List<string>();
        foreach (var (line, target) in Images(File.ReadAllText(file)))
        {
            var rel = Uri.UnescapeDataString(target.Split('#', '?')[0]);
            var path = Path.GetFullPath(rel.StartsWith('/') ? Path.Combine(Proc.Root, rel.TrimStart('/')) : Path.Combine(Path.GetDirectoryName(file)!, rel));
            var where = $"{Path.GetRelativePath(Proc.Root, file)}:{line} {target}";
            if (!File.Exists(path)) { problems.Add($"{where}: no such file"); continue; }
            var head = new byte[8];
            using (var s = File.OpenRead(path)) s.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            var ok = Path.GetExtension(path).ToLowerInvariant() switch
            {
                ".png" => head.AsSpan().SequenceEqual(new byte[] { 137, 80, 78, 71, 13, 10, 26, 10 }),
                ".jpg" or ".jpeg" => head[0] == 0xFF && head[1] == 0xD8,
                ".svg" => File.ReadAllText(path).Contains("<svg", StringComparison.Ordinal),
                _ => true,
            };
            if (!ok) problems.Add($"{where}: not a {Path.GetExtension(path)} image (a Git LFS pointer or an HTML error page?)");
        }
        return problems;
    }

    [Fact]
    public void Every_image_the_docs_show_exists()
    {
        var problems = DocFiles().SelectMany(Problems).ToList();
        Assert.True(problems.Count == 0, "broken image references:\n" + string.Join("\n", problems));
    }

    [Fact]
    public void The_dashboard_doc_shows_every_page_and_every_screenshot_is_shown()
    {
        var doc = Path.Combine(Proc.Root, "docs", "dashboard.md");
        var shown = Images(File.ReadAllText(doc)).Select(i => Path.GetFileName(i.Target)).ToHashSet();
        // one per page (PageEndpoints.cs): login, runs, run, compare, compare/images, experiments, experiment, submit, workers, hangfire
        string[] pages = ["login.png", "runs.png", "run.png", "compare.png", "compare-images.png", "experiments.png", "experiment.png", "submit-error.png", "workers.png", "hangfire.png"];
        Assert.Empty(pages.Except(shown));
        var files = Directory.GetFiles(Path.Combine(Proc.Root, "docs", "img", "dashboard")).Select(Path.GetFileName).ToList();
        Assert.Empty(files.Except(shown));
    }

    [Fact]
    public void The_check_finds_references_skips_urls_and_reports_a_missing_file()
    {
        var found = Images("text ![a](img/x.png) and ![b](img/w.png \"title\")\n<img src=\"img/z.png\" width=\"200\"> ![c](https://example.com/c.png)\n");
        Assert.Equal([(1, "img/x.png"), (1, "img/w.png"), (2, "img/z.png")], found);
        var dir = Directory.CreateTempSubdirectory("retok-docs-images").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "img"));
            File.WriteAllBytes(Path.Combine(dir, "img", "ok.png"), TestPngBytes());
            File.WriteAllText(Path.Combine(dir, "img", "lfs.png"), "version https://git-lfs.github.com/spec/v1\n");
            File.WriteAllText(Path.Combine(dir, "page.md"), "![ok](img/ok.png)\n![gone](img/gone.png)\n![lfs](img/lfs.png)\n");
            var problems = Problems(Path.Combine(dir, "page.md"));
            Assert.Equal(2, problems.Count);
            Assert.Contains("img/gone.png: no such file", problems[0]);
            Assert.Contains("img/lfs.png: not a .png image", problems[1]);
        }
        finally { Directory.Delete(dir, true); }
    }

    static byte[] TestPngBytes() => Dashboard.TestPng.Grid(4, 4);
}

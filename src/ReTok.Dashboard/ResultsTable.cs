using Microsoft.EntityFrameworkCore;
using ReTok.Tracking;

namespace ReTok.Dashboard;

public sealed record ResultCell(double Value, long RunId, string Key);

public sealed record ResultRow(string Tokenizer, string? Generator, int Tokens, string? Variant,
    ResultCell? RFid, ResultCell? GFid, ResultCell? IS, ResultCell? Precision, ResultCell? Recall);

/// <summary>
/// The paper's results table (tokenizer, rFID, generator, tokens, gFID, IS, precision, recall) built from tracked
/// metrics. Key convention (docs/dashboard.md): <c>NAME@k=K[,QUALIFIERS]</c> with NAME one of rfid, gfid, is, precision,
/// recall and K the number of tokens, e.g. <c>rfid@k=32</c>, <c>gfid@k=256,cfg=1.5</c>; the last step of each key
/// counts. Subjects come from run tags <c>tokenizer=NAME</c> / <c>generator=NAME</c>, else from lineage (the producing
/// run of an input whose role names a tokenizer or a generator/gpt), else the run's own name. Per tokenizer and K the
/// newest rFID is shown; per (tokenizer, generator, K) the best gFID over variants/runs (the paper reports the optimum
/// over with and without CFG), with IS/precision/recall of that same variant.
/// </summary>
public static class ResultsTable
{
    static readonly HashSet<string> Metrics = ["rfid", "gfid", "is", "precision", "recall"];

    public static bool TryParseKey(string key, out string metric, out int k, out string variant) =>
        KCurves.TryParseKey(key, out metric, out k, out variant) && Metrics.Contains(metric);

    sealed record Point(long RunId, string Metric, int K, string Variant, string Key, double Value);

    public static async Task<List<ResultRow>> BuildAsync(Tracker tracker, string? experiment, CancellationToken ct)
    {
        var ids = await tracker.Runs.ListIdsAsync(new RunFilter(Experiment: experiment, Limit: int.MaxValue), ct);
        return await FromLatestAsync(tracker, await tracker.GetLatestMetricsAsync(ids, ct), ct);
    }

    /// <summary>The table from the last point of each key of the runs in scope (a page that has them already passes them in).</summary>
    public static async Task<List<ResultRow>> FromLatestAsync(Tracker tracker, IEnumerable<MetricPoint> latest, CancellationToken ct)
    {
        var points = latest.Select(m => TryParseKey(m.Key, out var metric, out var k, out var v) ? new Point(m.RunId, metric, k, v, m.Key, m.Value) : null)
            .OfType<Point>().ToList();
        if (points.Count == 0) return new List<ResultRow>();

        var subjectIds = points.Select(p => p.RunId).Distinct().ToArray();
        var subjects = (await tracker.Runs.GetManyAsync(subjectIds, ct)).ToDictionary(r => r.Id);
        await using var db = tracker.CreateDb();
        var inputs = await db.ArtifactUses.AsNoTracking().Include(u => u.Artifact).Where(u => subjectIds.Contains(u.RunId)).ToListAsync(ct);
        var producerIds = inputs.Select(u => u.Artifact!.RunId).Distinct().ToArray();
        var producers = (await tracker.Runs.GetManyAsync(producerIds, ct)).ToDictionary(r => r.Id);

        string Label(Run r, string tagName) => Tag(r, tagName) ?? r.Name ?? $"{r.Kind} #{r.Id}";
        (string Tok, string? Gen) Subjects(Run r)
        {
            var tok = Tag(r, "tokenizer");
            var gen = Tag(r, "generator");
            foreach (var u in inputs.Where(u => u.RunId == r.Id))
            {
                var role = u.Role.ToLowerInvariant();
                if (!producers.TryGetValue(u.Artifact!.RunId, out var p)) continue;
                if (tok is null && (role.Contains("tokenizer") || role is "vq" or "vq_ckpt")) tok = Label(p, "tokenizer");
                if (gen is null && (role.Contains("generator") || role.Contains("gpt"))) gen = Label(p, "generator");
            }
            return (tok ?? r.Name ?? $"{r.Kind} #{r.Id}", gen);
        }
        var subjectOf = subjects.ToDictionary(kv => kv.Key, kv => Subjects(kv.Value));

        // rFID: newest run per (tokenizer, K), an unqualified key before a qualified one.
        var rfid = points.Where(p => p.Metric == "rfid")
            .GroupBy(p => (subjectOf[p.RunId].Tok, p.K))
            .ToDictionary(g => g.Key, g => g.OrderBy(p => p.Variant.Length == 0 ? 0 : 1).ThenByDescending(p => p.RunId).First());

        var rows = new List<ResultRow>();
        var covered = new HashSet<(string, int)>();
        foreach (var g in points.Where(p => p.Metric == "gfid").GroupBy(p => (subjectOf[p.RunId].Tok, Gen: subjectOf[p.RunId].Gen ?? "?", p.K)))
        {
            var best = g.OrderBy(p => double.IsNaN(p.Value) ? double.MaxValue : p.Value).ThenByDescending(p => p.RunId).First();
            ResultCell? Same(string metric) => points.FirstOrDefault(p => p.RunId == best.RunId && p.K == best.K && p.Variant == best.Variant && p.Metric == metric) is { } x
                ? new ResultCell(x.Value, x.RunId, x.Key) : null;
            var r = rfid.TryGetValue((g.Key.Tok, g.Key.K), out var rf) ? new ResultCell(rf.Value, rf.RunId, rf.Key) : null;
            rows.Add(new ResultRow(g.Key.Tok, g.Key.Gen, g.Key.K, best.Variant.Length > 0 ? best.Variant : null, r,
                new ResultCell(best.Value, best.RunId, best.Key), Same("is"), Same("precision"), Same("recall")));
            covered.Add((g.Key.Tok, g.Key.K));
        }
        foreach (var ((tok, k), p) in rfid)
            if (!covered.Contains((tok, k)))
                rows.Add(new ResultRow(tok, null, k, p.Variant.Length > 0 ? p.Variant : null, new ResultCell(p.Value, p.RunId, p.Key), null, null, null, null));
        return rows.OrderBy(r => r.Tokenizer, StringComparer.Ordinal).ThenBy(r => r.Generator ?? "", StringComparer.Ordinal).ThenBy(r => r.Tokens).ToList();
    }

    static string? Tag(Run r, string name) =>
        r.Tags.FirstOrDefault(t => t.StartsWith(name + "=", StringComparison.OrdinalIgnoreCase)) is { } t ? t[(name.Length + 1)..] : null;
}

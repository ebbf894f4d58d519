using Microsoft.EntityFrameworkCore;
using ReTok.Tracking;

namespace ReTok.Dashboard;

/// <summary>A number of the table: its run and key, and how it was evaluated (<see cref="Protocol"/>: 8 hex digits of the
/// protocol hash, null when the run recorded no provenance; <see cref="Provenance"/>: the whole record).</summary>
public sealed record ResultCell(double Value, long RunId, string Key, string? Protocol = null, EvalProvenance? Provenance = null);

/// <summary>
/// One row. <see cref="RFidOther"/>/<see cref="GFidOther"/> hold an rFID/gFID measured under another protocol than
/// the column's (its majority): such a number is never put in the rFID/gFID column (docs/dashboard.md "Protocols").
/// </summary>
public sealed record ResultRow(string Tokenizer, string? Generator, int Tokens, string? Variant,
    ResultCell? RFid, ResultCell? GFid, ResultCell? IS, ResultCell? Precision, ResultCell? Recall,
    ResultCell? RFidOther = null, ResultCell? GFidOther = null);

/// <summary>
/// The paper's results table (tokenizer, rFID, generator, tokens, gFID, IS, precision, recall) built from tracked
/// metrics. Key convention (docs/dashboard.md): <c>NAME@k=K[,QUALIFIERS]</c> with NAME one of rfid, gfid, is, precision,
/// recall and K the number of tokens, e.g. <c>rfid@k=32</c>, <c>gfid@k=256,cfg=1.5</c>; the last step of each key
/// counts. Subjects come from run tags <c>tokenizer=NAME</c> / <c>generator=NAME</c>, else from lineage (the producing
/// run of an input whose role names a tokenizer or a generator/gpt), else the run's own name. Per tokenizer and K the
/// newest rFID is shown; per (tokenizer, generator, K) the best gFID over variants/runs (the paper reports the optimum
/// over with and without CFG), with IS/precision/recall of that same variant. Each cell carries its evaluation protocol
/// (retok.metric_provenance); the rFID and gFID columns never mix protocols (<see cref="ColumnProtocol"/>).
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
        var provenance = (await tracker.GetProvenanceAsync(subjectIds, ct)).ToDictionary(m => (m.RunId, m.Key));
        ResultCell CellOf(Point p) => provenance.TryGetValue((p.RunId, p.Key), out var m)
            ? new ResultCell(p.Value, p.RunId, p.Key, EvalProvenance.Short(m.ProtocolHash), EvalProvenance.FromJson(m.Provenance))
            : new ResultCell(p.Value, p.RunId, p.Key);

        // Each column's protocol: the majority of its candidate numbers.
        string? Proto(Point p) => provenance.TryGetValue((p.RunId, p.Key), out var m) ? EvalProvenance.Short(m.ProtocolHash) : null;
        var rp = ColumnProtocol(points.Where(p => p.Metric == "rfid").Select(CellOf));
        var gp = ColumnProtocol(points.Where(p => p.Metric == "gfid").Select(CellOf));

        // rFID: newest run per (tokenizer, K), an unqualified key before a qualified one; under the column's protocol and,
        // apart, the newest under any other.
        static Point? Newest(IEnumerable<Point> ps) => ps.OrderBy(p => p.Variant.Length == 0 ? 0 : 1).ThenByDescending(p => p.RunId).FirstOrDefault();
        var rfid = points.Where(p => p.Metric == "rfid")
            .GroupBy(p => (subjectOf[p.RunId].Tok, p.K))
            .ToDictionary(g => g.Key, g => (Main: Newest(g.Where(p => Proto(p) == rp)), Other: Newest(g.Where(p => Proto(p) != rp))));

        var rows = new List<ResultRow>();
        var covered = new HashSet<(string, int)>();
        static Point? Best(IEnumerable<Point> ps) => ps.OrderBy(p => double.IsNaN(p.Value) ? double.MaxValue : p.Value).ThenByDescending(p => p.RunId).FirstOrDefault();
        foreach (var g in points.Where(p => p.Metric == "gfid").GroupBy(p => (subjectOf[p.RunId].Tok, Gen: subjectOf[p.RunId].Gen ?? "?", p.K)))
        {
            // the best gFID under the column's protocol; the best under another goes to "gFID, other protocol"
            var best = Best(g.Where(p => Proto(p) == gp));
            var other = Best(g.Where(p => Proto(p) != gp));
            ResultCell? Same(string metric) => best is not null && points.FirstOrDefault(p =>
                p.RunId == best.RunId && p.K == best.K && p.Variant == best.Variant && p.Metric == metric) is { } x ? CellOf(x) : null;
            var rf = rfid.GetValueOrDefault((g.Key.Tok, g.Key.K));
            var variant = (best ?? other)!.Variant;
            rows.Add(new ResultRow(g.Key.Tok, g.Key.Gen, g.Key.K, variant.Length > 0 ? variant : null, Cell(rf.Main),
                Cell(best), Same("is"), Same("precision"), Same("recall"), Cell(rf.Other), Cell(other)));
            covered.Add((g.Key.Tok, g.Key.K));
        }
        foreach (var ((tok, k), (main, oth)) in rfid)
            if (!covered.Contains((tok, k)))
                rows.Add(new ResultRow(tok, null, k, (main ?? oth)!.Variant is { Length: > 0 } v ? v : null, Cell(main), null, null, null, null, Cell(oth)));
        return rows.OrderBy(r => r.Tokenizer, StringComparer.Ordinal).ThenBy(r => r.Generator ?? "", StringComparer.Ordinal).ThenBy(r => r.Tokens).ToList();
        ResultCell? Cell(Point? p) => p is null ? null : CellOf(p);
    }

    /// <summary>
    /// The protocol of a column: the one most of its candidate numbers were measured under (a tie goes to a recorded
    /// protocol over none, then to the one of the newest run); null when none recorded provenance. A column never mixes
    /// protocols: numbers under another go to the row's rFID/gFID "other protocol" cell, and IS/precision/recall, from
    /// the gFID's own evaluation, follow only a gFID in the main column. Without any provenance nothing moves.
    /// </summary>
    public static string? ColumnProtocol(IEnumerable<ResultCell?> cells) =>
        cells.OfType<ResultCell>().GroupBy(c => c.Protocol)
            .OrderByDescending(g => g.Count()).ThenBy(g => g.Key is null ? 1 : 0).ThenByDescending(g => g.Max(c => c.RunId))
            .FirstOrDefault()?.Key;

    static string? Tag(Run r, string name) =>
        r.Tags.FirstOrDefault(t => t.StartsWith(name + "=", StringComparison.OrdinalIgnoreCase)) is { } t ? t[(name.Length + 1)..] : null;
}

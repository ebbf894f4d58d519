using System.Globalization;
using System.Text;
using ReTok.Tracking;

namespace ReTok.Dashboard;

/// <summary>Export formats of the results table (issue 19.7): CSV for tools, Markdown for notes, LaTeX for the paper.</summary>
public enum ResultsFormat { Csv, Markdown, Latex }

/// <summary>
/// The results table and a run's metrics as files. Hand-written: three small fixed layouts with the escaping rules
/// of each format (RFC 4180 quoting, '|' in Markdown, LaTeX specials) are shorter than wiring a library per format.
/// </summary>
public static class Exports
{
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static bool TryParseFormat(string? s, out ResultsFormat f)
    {
        f = ResultsFormat.Csv;
        switch ((s ?? "csv").ToLowerInvariant())
        {
            case "csv": return true;
            case "md" or "markdown": f = ResultsFormat.Markdown; return true;
            case "tex" or "latex": f = ResultsFormat.Latex; return true;
            default: return false;
        }
    }

    public static (string Body, string ContentType, string Extension) Results(IReadOnlyList<ResultRow> rows, ResultsFormat f) => f switch
    {
        ResultsFormat.Markdown => (Markdown(rows), "text/markdown; charset=utf-8", "md"),
        ResultsFormat.Latex => (Latex(rows), "application/x-tex; charset=utf-8", "tex"),
        _ => (Csv(rows), "text/csv; charset=utf-8", "csv"),
    };

    /// <summary>Full precision ("R") and the run id behind each number, so a spreadsheet can trace it back; then each
    /// rFID/gFID's protocol (8 hex digits) and the numbers measured under another protocol than their column's.</summary>
    public static string Csv(IReadOnlyList<ResultRow> rows)
    {
        var sb = new StringBuilder("tokenizer,rfid,rfid_run,generator,tokens,gfid,gfid_run,is,precision,recall,variant,");
        sb.Append("rfid_protocol,gfid_protocol,rfid_other,rfid_other_run,rfid_other_protocol,gfid_other,gfid_other_run,gfid_other_protocol\r\n");
        foreach (var r in rows)
            sb.AppendJoin(',', CsvText(r.Tokenizer), Raw(r.RFid), r.RFid?.RunId.ToString(Inv) ?? "", CsvText(r.Generator), r.Tokens.ToString(Inv),
                Raw(r.GFid), r.GFid?.RunId.ToString(Inv) ?? "", Raw(r.IS), Raw(r.Precision), Raw(r.Recall), CsvText(r.Variant),
                r.RFid?.Protocol ?? "", r.GFid?.Protocol ?? "", Raw(r.RFidOther), r.RFidOther?.RunId.ToString(Inv) ?? "", r.RFidOther?.Protocol ?? "",
                Raw(r.GFidOther), r.GFidOther?.RunId.ToString(Inv) ?? "", r.GFidOther?.Protocol ?? "").Append("\r\n");
        return sb.ToString();
    }

    /// <summary>The "other protocol" columns appear only when a row has one; a footnote names each column's protocol.</summary>
    public static string Markdown(IReadOnlyList<ResultRow> rows)
    {
        static string Md(string? s) => (s ?? "").Replace("\\", "\\\\").Replace("|", "\\|").Replace("\r", " ").Replace("\n", " ");
        var (ro, go) = (rows.Any(r => r.RFidOther is not null), rows.Any(r => r.GFidOther is not null));
        var sb = new StringBuilder("| Tokenizer | rFID↓ | Generator | Tokens | gFID↓ | IS↑ | Prec.↑ | Rec.↑ | Variant |")
            .Append(ro ? " rFID (other protocol) |" : "").Append(go ? " gFID (other protocol) |" : "")
            .Append("\n|---|--:|---|--:|--:|--:|--:|--:|---|").Append(ro ? "--:|" : "").Append(go ? "--:|" : "").Append('\n');
        foreach (var r in rows)
            sb.Append(Inv, $"| {Md(r.Tokenizer)} | {Fmt(r.RFid, "0.00")} | {Md(r.Generator)} | {r.Tokens} | {Fmt(r.GFid, "0.00")} | {Fmt(r.IS, "0.0")} | ")
              .Append(Inv, $"{Fmt(r.Precision, "0.00")} | {Fmt(r.Recall, "0.00")} | {Md(r.Variant)} |")
              .Append(ro ? $" {Other(r.RFidOther)} |" : "").Append(go ? $" {Other(r.GFidOther)} |" : "").Append('\n');
        if (ProtocolNote(rows) is { } note) sb.Append('\n').Append(note).Append('\n');
        return sb.ToString();
    }

    /// <summary>A booktabs tabular in the paper's Table 1 shape; paste under \usepackage{booktabs}. Protocols go in a comment.</summary>
    public static string Latex(IReadOnlyList<ResultRow> rows)
    {
        var (ro, go) = (rows.Any(r => r.RFidOther is not null), rows.Any(r => r.GFidOther is not null));
        var sb = new StringBuilder($"\\begin{{tabular}}{{lrlrrrrrl{(ro ? "r" : "")}{(go ? "r" : "")}}}\n\\toprule\n");
        sb.Append("Tokenizer & rFID$\\downarrow$ & Generator & Tokens & gFID$\\downarrow$ & IS$\\uparrow$ & Prec.$\\uparrow$ & Rec.$\\uparrow$ & Variant")
          .Append(ro ? " & rFID (other protocol)" : "").Append(go ? " & gFID (other protocol)" : "").Append(" \\\\\n\\midrule\n");
        foreach (var r in rows)
            sb.Append(Inv, $"{Tex(r.Tokenizer)} & {Fmt(r.RFid, "0.00")} & {Tex(r.Generator)} & {r.Tokens} & {Fmt(r.GFid, "0.00")} & {Fmt(r.IS, "0.0")} & ")
              .Append(Inv, $"{Fmt(r.Precision, "0.00")} & {Fmt(r.Recall, "0.00")} & {Tex(r.Variant)}")
              .Append(ro ? $" & {Tex(Other(r.RFidOther))}" : "").Append(go ? $" & {Tex(Other(r.GFidOther))}" : "").Append(" \\\\\n");
        sb.Append("\\bottomrule\n\\end{tabular}\n");
        if (ProtocolNote(rows) is { } note) sb.Append("% ").Append(note.Replace("\n", " ")).Append('\n');
        return sb.ToString();
    }

    static string Other(ResultCell? c) => c is null ? "" : $"{Fmt(c, "0.00")} [{c.Protocol ?? "unrecorded"}]";

    /// <summary>"Protocols: rFID abc12345 (ADM evaluator ...); gFID ..." or null when no cell recorded provenance.</summary>
    static string? ProtocolNote(IReadOnlyList<ResultRow> rows)
    {
        static string? One(string name, ResultCell? c) => c?.Protocol is { } p ? $"{name} {p} ({c.Provenance?.Describe()})" : null;
        var parts = new[] { One("rFID", rows.Select(r => r.RFid).FirstOrDefault(c => c is not null)), One("gFID", rows.Select(r => r.GFid).FirstOrDefault(c => c is not null)) }
            .OfType<string>().ToList();
        return parts.Count == 0 ? null : "Protocols: " + string.Join("; ", parts);
    }

    /// <summary>Every point of a run: key, step, value (full precision), time (ISO 8601, UTC).</summary>
    public static string MetricsCsv(IEnumerable<MetricPoint> points)
    {
        var sb = new StringBuilder("key,step,value,time\r\n");
        foreach (var m in points.OrderBy(m => m.Key, StringComparer.Ordinal).ThenBy(m => m.Step))
            sb.AppendJoin(',', CsvText(m.Key), m.Step.ToString(Inv), m.Value.ToString("R", Inv), m.Time.UtcDateTime.ToString("O", Inv)).Append("\r\n");
        return sb.ToString();
    }

    static string Raw(ResultCell? c) => c?.Value.ToString("R", Inv) ?? "";
    static string Fmt(ResultCell? c, string fmt) => c?.Value.ToString(fmt, Inv) ?? "";

    /// <summary>RFC 4180 quoting; text that a spreadsheet would run as a formula (=, +, -, @, tab, CR) gets a leading
    /// apostrophe (OWASP CSV injection): tokenizer names come from user-set run tags.</summary>
    static string CsvText(string? s)
    {
        s ??= "";
        if (s.Length > 0 && s[0] is '=' or '+' or '-' or '@' or '\t' or '\r') s = "'" + s;
        return s.IndexOfAny([',', '"', '\r', '\n']) >= 0 ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;
    }

    static string Tex(string? s)
    {
        var sb = new StringBuilder();
        foreach (var ch in s ?? "")
            sb.Append(ch switch
            {
                '\\' => "\\textbackslash{}", '&' => "\\&", '%' => "\\%", '$' => "\\$", '#' => "\\#", '_' => "\\_", '{' => "\\{", '}' => "\\}",
                '~' => "\\textasciitilde{}", '^' => "\\textasciicircum{}", '\r' or '\n' => " ", _ => ch.ToString(),
            });
        return sb.ToString();
    }
}

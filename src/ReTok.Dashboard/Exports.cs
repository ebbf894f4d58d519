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

    /// <summary>Full precision ("R") and the run id behind each number, so a spreadsheet can trace it back.</summary>
    public static string Csv(IReadOnlyList<ResultRow> rows)
    {
        var sb = new StringBuilder("tokenizer,rfid,rfid_run,generator,tokens,gfid,gfid_run,is,precision,recall,variant\r\n");
        foreach (var r in rows)
            sb.AppendJoin(',', CsvText(r.Tokenizer), Raw(r.RFid), r.RFid?.RunId.ToString(Inv) ?? "", CsvText(r.Generator), r.Tokens.ToString(Inv),
                Raw(r.GFid), r.GFid?.RunId.ToString(Inv) ?? "", Raw(r.IS), Raw(r.Precision), Raw(r.Recall), CsvText(r.Variant)).Append("\r\n");
        return sb.ToString();
    }

    public static string Markdown(IReadOnlyList<ResultRow> rows)
    {
        static string Md(string? s) => (s ?? "").Replace("\\", "\\\\").Replace("|", "\\|").Replace("\r", " ").Replace("\n", " ");
        var sb = new StringBuilder("| Tokenizer | rFID↓ | Generator | Tokens | gFID↓ | IS↑ | Prec.↑ | Rec.↑ | Variant |\n|---|--:|---|--:|--:|--:|--:|--:|---|\n");
        foreach (var r in rows)
            sb.Append(Inv, $"| {Md(r.Tokenizer)} | {Fmt(r.RFid, "0.00")} | {Md(r.Generator)} | {r.Tokens} | {Fmt(r.GFid, "0.00")} | {Fmt(r.IS, "0.0")} | ")
              .Append(Inv, $"{Fmt(r.Precision, "0.00")} | {Fmt(r.Recall, "0.00")} | {Md(r.Variant)} |\n");
        return sb.ToString();
    }

    /// <summary>A booktabs tabular in the paper's Table 1 shape; paste under \usepackage{booktabs}.</summary>
    public static string Latex(IReadOnlyList<ResultRow> rows)
    {
        var sb = new StringBuilder("\\begin{tabular}{lrlrrrrrl}\n\\toprule\n");
        sb.Append("Tokenizer & rFID$\\downarrow$ & Generator & Tokens & gFID$\\downarrow$ & IS$\\uparrow$ & Prec.$\\uparrow$ & Rec.$\\uparrow$ & Variant \\\\\n\\midrule\n");
        foreach (var r in rows)
            sb.Append(Inv, $"{Tex(r.Tokenizer)} & {Fmt(r.RFid, "0.00")} & {Tex(r.Generator)} & {r.Tokens} & {Fmt(r.GFid, "0.00")} & {Fmt(r.IS, "0.0")} & ")
              .Append(Inv, $"{Fmt(r.Precision, "0.00")} & {Fmt(r.Recall, "0.00")} & {Tex(r.Variant)} \\\\\n");
        return sb.Append("\\bottomrule\n\\end{tabular}\n").ToString();
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

using System.Text;

namespace ReTok.Tracking;

/// <summary>
/// Makes user-visible text storable and printable: PostgreSQL rejects NUL in text (SQLSTATE 22021, which once left a
/// run Running forever because its failure could not be recorded), lone UTF-16 surrogates do not encode, and other
/// control characters garble terminals and pages. Every write of free text (failure reasons, progress messages, log
/// lines, metric keys, names) goes through <see cref="Clean"/>.
/// </summary>
public static class SafeText
{
    /// <summary>Replaces control characters (except tab and newline; CR, NUL, ESC included) and lone surrogates with U+FFFD.</summary>
    public static string Clean(string text)
    {
        int i = 0;
        for (; i < text.Length; i++) if (Bad(text, i)) break;
        if (i == text.Length) return text;
        var sb = new StringBuilder(text.Length);
        sb.Append(text, 0, i);
        for (; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { sb.Append(text, i, 2); i++; }
            else sb.Append(Bad(text, i) ? '\uFFFD' : text[i]);
        }
        return sb.ToString();
    }

    public static string? CleanOrNull(string? text) => text is null ? null : Clean(text);

    static bool Bad(string s, int i)
    {
        var c = s[i];
        if (c is '\t' or '\n') return false;
        if (char.IsControl(c)) return true; // C0, DEL, C1
        if (char.IsHighSurrogate(c)) return i + 1 >= s.Length || !char.IsLowSurrogate(s[i + 1]);
        if (char.IsLowSurrogate(c)) return i == 0 || !char.IsHighSurrogate(s[i - 1]);
        return false;
    }
}

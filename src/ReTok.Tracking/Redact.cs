using System.Text.RegularExpressions;

namespace ReTok.Tracking;

/// <summary>
/// The one place that blanks credentials out of text bound for people: failure reasons and run logs (tracking),
/// worker and dashboard logs, and the CLI's error printer. Connection strings (Azure storage, PostgreSQL) and SAS
/// URLs travel in exception messages (e.g. a malformed RETOK_ARTIFACTS echoed by a parser), so every error path runs
/// through here before it is stored or printed.
/// </summary>
public static partial class Redact
{
    public const string Mask = "***";

    // A SAS inside a connection string is itself a query string (sv=…&ss=…&sig=…): its value runs to the next ';'.
    [GeneratedRegex("""(?<k>\bSharedAccessSignature\s*=\s*)(?<v>[^;\s"'<>]+)""", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex Sas();

    // key=value in connection strings (';'-separated) and query strings ('&'-separated); quoted values too.
    [GeneratedRegex("""(?<k>\b(?:AccountKey|SharedAccessKey|SharedAccessSignature|sig|Password|Pwd|ClientSecret|Client_Secret|Secret|Token|AccessToken|access_token)\s*=\s*)(?<v>"[^"]*"|'[^']*'|[^;&\s"'<>]+)""",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex KeyValue();

    // user:password@ in URLs (postgres://, https://).
    [GeneratedRegex("""(?<k>\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?<v>[^@/\s]+)(?=@)""", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex UserInfo();

    // our API tokens (rtk_ + 43 base64url characters).
    [GeneratedRegex("""\brtk_[A-Za-z0-9_-]{20,}""", RegexOptions.CultureInvariant)]
    private static partial Regex ApiToken();

    /// <summary><paramref name="text"/> with credential values replaced by <see cref="Mask"/> (the key names stay, so the message still says what was wrong).</summary>
    public static string Secrets(string text)
    {
        if (string.IsNullOrEmpty(text)) return text;
        var s = Sas().Replace(text, m => m.Groups["k"].Value + Mask);
        s = KeyValue().Replace(s, m => m.Groups["k"].Value + Mask);
        s = UserInfo().Replace(s, m => m.Groups["k"].Value + Mask);
        return ApiToken().Replace(s, "rtk_" + Mask);
    }

    /// <summary>An exception as text (type, message, stack, inner exceptions) with credentials blanked.</summary>
    public static string Exception(Exception ex) => Secrets(ex.ToString());
}

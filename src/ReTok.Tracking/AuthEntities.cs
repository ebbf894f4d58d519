namespace ReTok.Tracking;

/// <summary>Dashboard/API roles, ordered: each includes the rights of the ones before it.</summary>
public enum UserRole { Viewer, Operator, Admin }

/// <summary>A dashboard user. The password is stored as an ASP.NET Identity PasswordHasher (PBKDF2) hash, never in clear.</summary>
public class User
{
    public long Id { get; set; }
    public required string Name { get; set; }
    public required string PasswordHash { get; set; }
    public UserRole Role { get; set; } = UserRole.Viewer;
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
    public DateTimeOffset? DisabledAt { get; set; }
    /// <summary>
    /// Changes whenever the credentials do (password change, disable): cookies and API tokens carry the stamp they were
    /// issued under and stop working once it differs. Rows from before the column existed have "" (their tokens keep
    /// working until the next change).
    /// </summary>
    public string SecurityStamp { get; set; } = NewStamp();

    public static string NewStamp() => Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16));
}

/// <summary>
/// A signed-in browser session (one login). The cookie names it; logout revokes it server-side, so a copied cookie
/// is dead after logout even though the cookie itself is still cryptographically valid.
/// </summary>
public class UserSession
{
    /// <summary>Random, 32 bytes base64url; only ever inside the encrypted auth cookie.</summary>
    public required string Id { get; set; }
    public long UserId { get; set; }
    public User? User { get; set; }
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
    public DateTimeOffset? RevokedAt { get; set; }
    /// <summary>The client address at login (audit trail).</summary>
    public string? Address { get; set; }
}

/// <summary>A Bearer token for the CLI/automation: only its SHA-256 is stored; revoked tokens stay for the audit trail.</summary>
public class ApiToken
{
    public long Id { get; set; }
    public long UserId { get; set; }
    public User? User { get; set; }
    public required string Name { get; set; }
    /// <summary>The first characters of the token (not secret), so a listing can tell tokens apart.</summary>
    public required string Prefix { get; set; }
    public required string TokenHash { get; set; }
    public DateTimeOffset CreatedAt { get; set; } = DateTimeOffset.UtcNow;
    public DateTimeOffset? ExpiresAt { get; set; }
    public DateTimeOffset? LastUsedAt { get; set; }
    public DateTimeOffset? RevokedAt { get; set; }
    /// <summary>The user's <see cref="User.SecurityStamp"/> when the token was created; a password change invalidates it.</summary>
    public string SecurityStamp { get; set; } = "";
}

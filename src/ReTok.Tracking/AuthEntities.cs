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
}

using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Identity;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using ReTok.Tracking;

namespace ReTok.Dashboard.Auth;

public sealed record CreatedToken(long Id, string Name, string UserName, string Token, DateTimeOffset? ExpiresAt);

public sealed record TokenInfo(long Id, string Name, string User, string Prefix, DateTimeOffset CreatedAt, DateTimeOffset? ExpiresAt,
    DateTimeOffset? LastUsedAt, DateTimeOffset? RevokedAt);

/// <summary>The signed-in identity behind a request (cookie or Bearer token).</summary>
public sealed record Principal(long UserId, string Name, UserRole Role, long? TokenId = null, string? Stamp = null, string? SessionId = null);

/// <summary>
/// Users (PBKDF2 via ASP.NET Identity's <see cref="PasswordHasher{TUser}"/>) and API tokens ("rtk_" + 32 random bytes,
/// stored as SHA-256: a token is high-entropy, so a fast hash is enough and lookup is one indexed equality).
/// Used by the dashboard and by `retok users` / `retok tokens`.
/// </summary>
public sealed class UserStore(string connectionString)
{
    public const string TokenPrefix = "rtk_";
    static readonly PasswordHasher<User> Hasher = new();

    TrackingDb Db() => TrackingDb.Create(connectionString);

    public static void CheckName(string name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Length > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.' or '@'))
            throw new ArgumentException($"invalid user name '{name}': use 1-64 letters, digits, '_', '-', '.', '@'");
    }

    public static void CheckPassword(string password)
    {
        if (password.Length < 8) throw new ArgumentException("password too short: use at least 8 characters");
    }

    /// <summary>Adds a user, or (with <paramref name="update"/>) changes an existing user's password and role.</summary>
    public async Task<User> AddAsync(string name, string password, UserRole role, bool update = false, CancellationToken ct = default)
    {
        CheckName(name);
        CheckPassword(password);
        await using var db = Db();
        var u = await db.Users.FirstOrDefaultAsync(x => x.Name == name, ct);
        if (u is not null && !update) throw new InvalidOperationException($"user '{name}' already exists (pass --update to change its password/role)");
        if (u is null) { u = new User { Name = name, PasswordHash = "" }; db.Users.Add(u); }
        u.PasswordHash = Hasher.HashPassword(u, password);
        u.Role = role;
        u.DisabledAt = null;
        // New credentials: every cookie and API token issued under the old ones stops working.
        u.SecurityStamp = User.NewStamp();
        try { await db.SaveChangesAsync(ct); }
        catch (DbUpdateException ex) when (ex.InnerException is PostgresException { SqlState: PostgresErrorCodes.UniqueViolation })
        { throw new InvalidOperationException($"user '{name}' already exists"); }
        return u;
    }

    public async Task<List<User>> ListAsync(CancellationToken ct = default)
    {
        await using var db = Db();
        return await db.Users.AsNoTracking().OrderBy(u => u.Name).ToListAsync(ct);
    }

    /// <summary>Disables a user and revokes all their tokens (rows stay for the audit trail).</summary>
    public async Task<bool> DisableAsync(string name, CancellationToken ct = default)
    {
        await using var db = Db();
        var u = await db.Users.FirstOrDefaultAsync(x => x.Name == name, ct);
        if (u is null) return false;
        u.DisabledAt ??= DateTimeOffset.UtcNow;
        u.SecurityStamp = User.NewStamp();
        await db.SaveChangesAsync(ct);
        await db.ApiTokens.Where(t => t.UserId == u.Id && t.RevokedAt == null)
            .ExecuteUpdateAsync(s => s.SetProperty(t => t.RevokedAt, DateTimeOffset.UtcNow), ct);
        return true;
    }

    public async Task<bool> AnyAdminAsync(CancellationToken ct = default)
    {
        await using var db = Db();
        return await db.Users.AnyAsync(u => u.Role == UserRole.Admin && u.DisabledAt == null, ct);
    }

    public async Task<bool> AnyUserAsync(CancellationToken ct = default)
    {
        await using var db = Db();
        return await db.Users.AnyAsync(u => u.DisabledAt == null, ct);
    }

    /// <summary>Checks a password; null when the user is unknown, disabled or the password is wrong (the same answer for all three).</summary>
    public async Task<Principal?> VerifyPasswordAsync(string name, string password, CancellationToken ct = default)
    {
        await using var db = Db();
        var u = await db.Users.FirstOrDefaultAsync(x => x.Name == name, ct);
        if (u is null || u.DisabledAt is not null)
        {
            // Same work as a real check, so timing does not tell which user names exist.
            Hasher.VerifyHashedPassword(Dummy, DummyHash, password);
            return null;
        }
        var r = Hasher.VerifyHashedPassword(u, u.PasswordHash, password);
        if (r == PasswordVerificationResult.Failed) return null;
        if (r == PasswordVerificationResult.SuccessRehashNeeded)
        {
            u.PasswordHash = Hasher.HashPassword(u, password);
            await db.SaveChangesAsync(ct);
        }
        return new Principal(u.Id, u.Name, u.Role, Stamp: u.SecurityStamp);
    }

    static readonly User Dummy = new() { Name = "-", PasswordHash = "" };
    static readonly string DummyHash = Hasher.HashPassword(Dummy, Guid.NewGuid().ToString());

    /// <summary>The user behind a cookie, re-read on every request so a disabled user or changed role takes effect at once.</summary>
    public async Task<Principal?> GetActiveAsync(long userId, CancellationToken ct = default)
    {
        await using var db = Db();
        var u = await db.Users.AsNoTracking().FirstOrDefaultAsync(x => x.Id == userId && x.DisabledAt == null, ct);
        return u is null ? null : new Principal(u.Id, u.Name, u.Role, Stamp: u.SecurityStamp);
    }

    // ------------------------------------------------------------------ browser sessions

    /// <summary>Longest a login lasts, however active (the cookie slides within it).</summary>
    public static readonly TimeSpan SessionMaxAge = TimeSpan.FromDays(7);

    /// <summary>Records a login; the returned id goes into the (encrypted) cookie. Old rows of the user are purged.</summary>
    public async Task<string> CreateSessionAsync(long userId, string? address, CancellationToken ct = default)
    {
        await using var db = Db();
        var id = Base64Url(RandomNumberGenerator.GetBytes(32));
        db.UserSessions.Add(new UserSession { Id = id, UserId = userId, Address = address?.Length > 64 ? address[..64] : address });
        await db.SaveChangesAsync(ct);
        var old = DateTimeOffset.UtcNow - SessionMaxAge;
        await db.UserSessions.Where(s => s.UserId == userId && s.CreatedAt < old).ExecuteDeleteAsync(ct);
        return id;
    }

    /// <summary>Ends one session (logout); its cookie is refused from the next request on, wherever it was copied to.</summary>
    public async Task RevokeSessionAsync(string sessionId, CancellationToken ct = default)
    {
        await using var db = Db();
        await db.UserSessions.Where(s => s.Id == sessionId && s.RevokedAt == null)
            .ExecuteUpdateAsync(s => s.SetProperty(x => x.RevokedAt, DateTimeOffset.UtcNow), ct);
    }

    /// <summary>
    /// The user behind a cookie, checked on every request: session not revoked and younger than <see cref="SessionMaxAge"/>,
    /// user active, and the cookie's security stamp still the user's (a password change or disable logs everyone out).
    /// </summary>
    public async Task<Principal?> GetSessionAsync(long userId, string sessionId, string stamp, CancellationToken ct = default)
    {
        await using var db = Db();
        var since = DateTimeOffset.UtcNow - SessionMaxAge;
        var u = await db.UserSessions.AsNoTracking()
            .Where(s => s.Id == sessionId && s.UserId == userId && s.RevokedAt == null && s.CreatedAt > since)
            .Select(s => s.User!).Where(x => x.DisabledAt == null && x.SecurityStamp == stamp).FirstOrDefaultAsync(ct);
        return u is null ? null : new Principal(u.Id, u.Name, u.Role, Stamp: u.SecurityStamp, SessionId: sessionId);
    }

    // ------------------------------------------------------------------ API tokens

    public static string HashToken(string token) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(token)));

    public async Task<CreatedToken> CreateTokenAsync(string userName, string tokenName, TimeSpan? lifetime = null, CancellationToken ct = default)
    {
        if (string.IsNullOrWhiteSpace(tokenName) || tokenName.Length > 100) throw new ArgumentException("token name: 1-100 characters");
        await using var db = Db();
        var u = await db.Users.FirstOrDefaultAsync(x => x.Name == userName && x.DisabledAt == null, ct)
            ?? throw new InvalidOperationException($"no active user '{userName}' (create one with `retok users add {userName} --role viewer`)");
        var token = TokenPrefix + Base64Url(RandomNumberGenerator.GetBytes(32));
        var row = new ApiToken
        {
            UserId = u.Id, Name = tokenName, Prefix = token[..(TokenPrefix.Length + 6)], TokenHash = HashToken(token), SecurityStamp = u.SecurityStamp,
            ExpiresAt = lifetime is { } l ? DateTimeOffset.UtcNow + l : null,
        };
        db.ApiTokens.Add(row);
        await db.SaveChangesAsync(ct);
        return new CreatedToken(row.Id, row.Name, u.Name, token, row.ExpiresAt);
    }

    public async Task<List<TokenInfo>> ListTokensAsync(string? userName = null, CancellationToken ct = default)
    {
        await using var db = Db();
        var q = db.ApiTokens.AsNoTracking().Include(t => t.User).AsQueryable();
        if (userName is not null) q = q.Where(t => t.User!.Name == userName);
        return (await q.OrderBy(t => t.Id).ToListAsync(ct))
            .Select(t => new TokenInfo(t.Id, t.Name, t.User!.Name, t.Prefix, t.CreatedAt, t.ExpiresAt, t.LastUsedAt, t.RevokedAt)).ToList();
    }

    /// <summary>Revokes a token by id or by the token string itself; false when none matched or it was already revoked.</summary>
    public async Task<bool> RevokeTokenAsync(string idOrToken, CancellationToken ct = default)
    {
        await using var db = Db();
        var q = long.TryParse(idOrToken, out var id) ? db.ApiTokens.Where(t => t.Id == id)
            : db.ApiTokens.Where(t => t.TokenHash == HashToken(idOrToken));
        return await q.Where(t => t.RevokedAt == null).ExecuteUpdateAsync(s => s.SetProperty(t => t.RevokedAt, DateTimeOffset.UtcNow), ct) > 0;
    }

    /// <summary>The principal of a live token (not revoked, not expired, user active); records its last use (at most once a minute).</summary>
    public async Task<Principal?> VerifyTokenAsync(string token, CancellationToken ct = default)
    {
        if (!token.StartsWith(TokenPrefix) || token.Length > 200) return null;
        var hash = HashToken(token);
        await using var db = Db();
        var row = await db.ApiTokens.AsNoTracking().Include(t => t.User).FirstOrDefaultAsync(t => t.TokenHash == hash, ct);
        var now = DateTimeOffset.UtcNow;
        if (row is null || row.RevokedAt is not null || row.ExpiresAt <= now || row.User is null || row.User.DisabledAt is not null) return null;
        if (row.SecurityStamp != row.User.SecurityStamp) return null; // created before the user's last password change
        if (row.LastUsedAt is null || now - row.LastUsedAt > TimeSpan.FromMinutes(1))
            await db.ApiTokens.Where(t => t.Id == row.Id).ExecuteUpdateAsync(s => s.SetProperty(t => t.LastUsedAt, now), ct);
        return new Principal(row.User.Id, row.User.Name, row.User.Role, row.Id);
    }

    static string Base64Url(byte[] b) => Convert.ToBase64String(b).TrimEnd('=').Replace('+', '-').Replace('/', '_');
}

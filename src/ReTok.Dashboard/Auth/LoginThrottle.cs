using Microsoft.Extensions.Logging;

namespace ReTok.Dashboard.Auth;

/// <summary>
/// Counts failed logins per user name and per client address (see <see cref="LoginThrottleOptions"/>). An attempt is
/// reserved before the password is checked, so ten parallel guesses are held to the same limit as ten in a row, and a
/// locked key is refused without spending PBKDF2 time. Unknown user names are counted like real ones, so a lockout
/// does not reveal which names exist. State is per dashboard process (one dashboard per deployment; a restart clears it).
/// </summary>
public sealed class LoginThrottle(DashboardOptions options, ILogger<LoginThrottle> log)
{
    readonly LoginThrottleOptions _o = options.LoginThrottle;
    readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    readonly Lock _lock = new();
    readonly TimeProvider _time = TimeProvider.System;

    sealed class Entry
    {
        public readonly Queue<DateTimeOffset> Failures = new();
        public int InFlight;
        public DateTimeOffset LockedUntil;
    }

    /// <summary>One reserved attempt; report its outcome with <see cref="Succeeded"/> or <see cref="Failed"/> (dispose releases it).</summary>
    public sealed class Attempt : IDisposable
    {
        internal LoginThrottle? Owner;
        internal string UserKey = "", AddressKey = "", User = "", Address = "";
        public void Succeeded() { Owner?.Complete(this, ok: true); Owner = null; }
        public void Failed() { Owner?.Complete(this, ok: false); Owner = null; }
        public void Dispose() => Failed();
    }

    /// <summary>Reserves an attempt, or returns null with how long to wait when the user name or address is locked out.</summary>
    public Attempt? TryBegin(string user, string address, out TimeSpan retryAfter)
    {
        var name = Clean(user);
        var attempt = new Attempt { Owner = this, UserKey = "u:" + name.ToLowerInvariant(), AddressKey = "a:" + address, User = name, Address = address };
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            if (_entries.Count > 10_000) Prune(now);
            var u = Get(attempt.UserKey, now);
            var a = Get(attempt.AddressKey, now);
            var wait = Max(Blocked(u, _o.FailuresPerUser, now), Blocked(a, _o.FailuresPerAddress, now));
            if (wait > TimeSpan.Zero)
            {
                retryAfter = wait;
                log.LogWarning("login refused: user '{User}' from {Address} is locked out for another {Seconds:F0} s", name, address, wait.TotalSeconds);
                return null;
            }
            u.InFlight++;
            a.InFlight++;
        }
        retryAfter = TimeSpan.Zero;
        return attempt;
    }

    void Complete(Attempt t, bool ok)
    {
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            var u = Get(t.UserKey, now);
            var a = Get(t.AddressKey, now);
            u.InFlight--;
            a.InFlight--;
            if (ok) { u.Failures.Clear(); return; } // the address keeps its count: one valid account must not reset it
            u.Failures.Enqueue(now);
            a.Failures.Enqueue(now);
            if (u.Failures.Count >= _o.FailuresPerUser && u.LockedUntil <= now)
            {
                u.LockedUntil = now + _o.Lockout;
                log.LogWarning("login lockout: user '{User}' after {Count} failed attempts within {Window}; last from {Address}; locked until {Until:u}",
                    t.User, u.Failures.Count, _o.Window, t.Address, u.LockedUntil);
            }
            if (a.Failures.Count >= _o.FailuresPerAddress && a.LockedUntil <= now)
            {
                a.LockedUntil = now + _o.Lockout;
                log.LogWarning("login lockout: address {Address} after {Count} failed attempts within {Window}; locked until {Until:u}",
                    t.Address, a.Failures.Count, _o.Window, a.LockedUntil);
            }
        }
        if (!ok) log.LogWarning("login failed: user '{User}' from {Address}", t.User, t.Address);
    }

    /// <summary>How long <paramref name="e"/> is blocked: a running lockout, or the limit already used up by failures and attempts in flight.</summary>
    TimeSpan Blocked(Entry e, int limit, DateTimeOffset now)
    {
        if (e.LockedUntil > now) return e.LockedUntil - now;
        if (e.Failures.Count + e.InFlight >= limit) return e.Failures.Count > 0 ? e.Failures.Peek() + _o.Window - now : TimeSpan.FromSeconds(1);
        return TimeSpan.Zero;
    }

    Entry Get(string key, DateTimeOffset now)
    {
        if (!_entries.TryGetValue(key, out var e)) _entries[key] = e = new Entry();
        while (e.Failures.Count > 0 && e.Failures.Peek() <= now - _o.Window) e.Failures.Dequeue();
        return e;
    }

    void Prune(DateTimeOffset now)
    {
        foreach (var (k, e) in _entries.ToList())
        {
            while (e.Failures.Count > 0 && e.Failures.Peek() <= now - _o.Window) e.Failures.Dequeue();
            if (e.Failures.Count == 0 && e.InFlight == 0 && e.LockedUntil <= now) _entries.Remove(k);
        }
    }

    static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    /// <summary>A user name as typed, made safe for one log line (no control characters, bounded length).</summary>
    static string Clean(string s)
    {
        var t = new string(s.Where(c => !char.IsControl(c)).Take(64).ToArray());
        return t.Length == 0 ? "-" : t;
    }
}

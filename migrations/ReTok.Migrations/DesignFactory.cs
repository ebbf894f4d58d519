using Microsoft.EntityFrameworkCore.Design;
using ReTok.Tracking;

namespace ReTok.Migrations;

/// <summary>Design-time factory for `dotnet ef migrations add` (reads RETOK_DB, else the local default).</summary>
public class TrackingDbDesignFactory : IDesignTimeDbContextFactory<TrackingDb>
{
    public TrackingDb CreateDbContext(string[] args) =>
        TrackingDb.Create(Environment.GetEnvironmentVariable("RETOK_DB") ?? "Host=127.0.0.1;Port=55432;Username=postgres;Database=retok");
}

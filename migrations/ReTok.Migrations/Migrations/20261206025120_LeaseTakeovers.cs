using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace ReTok.Migrations.Migrations
{
    /// <inheritdoc />
    public partial class LeaseTakeovers : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<int>(
                name: "lease_takeovers",
                schema: "retok",
                table: "runs",
                type: "integer",
                nullable: false,
                defaultValue: 0);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "lease_takeovers",
                schema: "retok",
                table: "runs");
        }
    }
}

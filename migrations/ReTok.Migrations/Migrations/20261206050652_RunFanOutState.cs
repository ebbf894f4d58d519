using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace ReTok.Migrations.Migrations
{
    /// <inheritdoc />
    public partial class RunFanOutState : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "fan_out_state",
                schema: "retok",
                table: "runs",
                type: "jsonb",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "fan_out_state",
                schema: "retok",
                table: "runs");
        }
    }
}

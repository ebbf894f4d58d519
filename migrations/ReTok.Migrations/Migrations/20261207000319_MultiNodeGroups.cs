using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace ReTok.Migrations.Migrations
{
    /// <inheritdoc />
    public partial class MultiNodeGroups : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<int>(
                name: "node_rank",
                schema: "retok",
                table: "runs",
                type: "integer",
                nullable: false,
                defaultValue: 0);

            migrationBuilder.AddColumn<int>(
                name: "nodes",
                schema: "retok",
                table: "runs",
                type: "integer",
                nullable: false,
                defaultValue: 1);

            migrationBuilder.CreateTable(
                name: "rendezvous",
                schema: "retok",
                columns: table => new
                {
                    group_run_id = table.Column<long>(type: "bigint", nullable: false),
                    generation = table.Column<long>(type: "bigint", nullable: false),
                    rank = table.Column<int>(type: "integer", nullable: false),
                    value = table.Column<string>(type: "text", nullable: false),
                    created_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_rendezvous", x => new { x.group_run_id, x.generation, x.rank });
                    table.ForeignKey(
                        name: "fk_rendezvous_runs_group_run_id",
                        column: x => x.group_run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Cascade);
                });
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropTable(
                name: "rendezvous",
                schema: "retok");

            migrationBuilder.DropColumn(
                name: "node_rank",
                schema: "retok",
                table: "runs");

            migrationBuilder.DropColumn(
                name: "nodes",
                schema: "retok",
                table: "runs");
        }
    }
}

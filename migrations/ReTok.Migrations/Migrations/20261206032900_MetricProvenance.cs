using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace ReTok.Migrations.Migrations
{
    /// <inheritdoc />
    public partial class MetricProvenance : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.CreateTable(
                name: "metric_provenance",
                schema: "retok",
                columns: table => new
                {
                    run_id = table.Column<long>(type: "bigint", nullable: false),
                    key = table.Column<string>(type: "text", nullable: false),
                    protocol_hash = table.Column<string>(type: "text", nullable: false),
                    provenance = table.Column<string>(type: "jsonb", nullable: false),
                    time = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_metric_provenance", x => new { x.run_id, x.key });
                    table.ForeignKey(
                        name: "fk_metric_provenance_runs_run_id",
                        column: x => x.run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Cascade);
                });

            migrationBuilder.CreateIndex(
                name: "ix_metric_provenance_protocol_hash",
                schema: "retok",
                table: "metric_provenance",
                column: "protocol_hash");
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropTable(
                name: "metric_provenance",
                schema: "retok");
        }
    }
}

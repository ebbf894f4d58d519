using System;
using System.Collections.Generic;
using Microsoft.EntityFrameworkCore.Migrations;
using Npgsql.EntityFrameworkCore.PostgreSQL.Metadata;

#nullable disable

namespace ReTok.Migrations.Migrations
{
    /// <inheritdoc />
    public partial class Initial : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.EnsureSchema(
                name: "retok");

            migrationBuilder.CreateTable(
                name: "experiments",
                schema: "retok",
                columns: table => new
                {
                    id = table.Column<long>(type: "bigint", nullable: false)
                        .Annotation("Npgsql:ValueGenerationStrategy", NpgsqlValueGenerationStrategy.IdentityByDefaultColumn),
                    name = table.Column<string>(type: "text", nullable: false),
                    description = table.Column<string>(type: "text", nullable: true),
                    created_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_experiments", x => x.id);
                });

            migrationBuilder.CreateTable(
                name: "pipelines",
                schema: "retok",
                columns: table => new
                {
                    id = table.Column<Guid>(type: "uuid", nullable: false),
                    name = table.Column<string>(type: "text", nullable: false),
                    spec_yaml = table.Column<string>(type: "text", nullable: false),
                    overrides = table.Column<List<string>>(type: "text[]", nullable: false),
                    experiment_id = table.Column<long>(type: "bigint", nullable: true),
                    created_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_pipelines", x => x.id);
                });

            migrationBuilder.CreateTable(
                name: "workers",
                schema: "retok",
                columns: table => new
                {
                    id = table.Column<string>(type: "text", nullable: false),
                    host = table.Column<string>(type: "text", nullable: false),
                    queues = table.Column<string>(type: "text", nullable: false),
                    devices = table.Column<string>(type: "text", nullable: false),
                    slots = table.Column<string>(type: "jsonb", nullable: false),
                    started_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false),
                    last_heartbeat = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_workers", x => x.id);
                });

            migrationBuilder.CreateTable(
                name: "runs",
                schema: "retok",
                columns: table => new
                {
                    id = table.Column<long>(type: "bigint", nullable: false)
                        .Annotation("Npgsql:ValueGenerationStrategy", NpgsqlValueGenerationStrategy.IdentityByDefaultColumn),
                    experiment_id = table.Column<long>(type: "bigint", nullable: true),
                    kind = table.Column<string>(type: "text", nullable: false),
                    name = table.Column<string>(type: "text", nullable: true),
                    status = table.Column<string>(type: "character varying(16)", maxLength: 16, nullable: false),
                    parameters = table.Column<string>(type: "jsonb", nullable: false),
                    config_hash = table.Column<string>(type: "text", nullable: false),
                    seed = table.Column<long>(type: "bigint", nullable: true),
                    code_version = table.Column<string>(type: "text", nullable: true),
                    queue = table.Column<string>(type: "text", nullable: false),
                    host = table.Column<string>(type: "text", nullable: true),
                    device = table.Column<string>(type: "text", nullable: true),
                    tags = table.Column<List<string>>(type: "text[]", nullable: false),
                    created_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false),
                    started_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: true),
                    finished_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: true),
                    parent_run_id = table.Column<long>(type: "bigint", nullable: true),
                    pipeline_id = table.Column<Guid>(type: "uuid", nullable: true),
                    pipeline_step = table.Column<string>(type: "text", nullable: true),
                    depends_on = table.Column<List<string>>(type: "text[]", nullable: false),
                    inputs = table.Column<string>(type: "jsonb", nullable: false),
                    failure_reason = table.Column<string>(type: "text", nullable: true),
                    progress = table.Column<double>(type: "double precision", nullable: false),
                    progress_message = table.Column<string>(type: "text", nullable: true),
                    progress_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: true),
                    eta_seconds = table.Column<double>(type: "double precision", nullable: true),
                    hangfire_job_id = table.Column<string>(type: "text", nullable: true),
                    attempt = table.Column<int>(type: "integer", nullable: false),
                    cancel_requested = table.Column<bool>(type: "boolean", nullable: false),
                    lease_owner = table.Column<string>(type: "text", nullable: true),
                    lease_generation = table.Column<long>(type: "bigint", nullable: false),
                    lease_expires_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: true),
                    pending_children = table.Column<int>(type: "integer", nullable: false),
                    fan_in_run_id = table.Column<long>(type: "bigint", nullable: true),
                    shard_index = table.Column<int>(type: "integer", nullable: true),
                    continued_by_run_id = table.Column<long>(type: "bigint", nullable: true),
                    queued_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: true)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_runs", x => x.id);
                    table.ForeignKey(
                        name: "fk_runs_experiments_experiment_id",
                        column: x => x.experiment_id,
                        principalSchema: "retok",
                        principalTable: "experiments",
                        principalColumn: "id");
                    table.ForeignKey(
                        name: "fk_runs_pipelines_pipeline_id",
                        column: x => x.pipeline_id,
                        principalSchema: "retok",
                        principalTable: "pipelines",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Restrict);
                    table.ForeignKey(
                        name: "fk_runs_runs_continued_by_run_id",
                        column: x => x.continued_by_run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Restrict);
                    table.ForeignKey(
                        name: "fk_runs_runs_fan_in_run_id",
                        column: x => x.fan_in_run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Restrict);
                    table.ForeignKey(
                        name: "fk_runs_runs_parent_run_id",
                        column: x => x.parent_run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Restrict);
                });

            migrationBuilder.CreateTable(
                name: "artifacts",
                schema: "retok",
                columns: table => new
                {
                    id = table.Column<long>(type: "bigint", nullable: false)
                        .Annotation("Npgsql:ValueGenerationStrategy", NpgsqlValueGenerationStrategy.IdentityByDefaultColumn),
                    run_id = table.Column<long>(type: "bigint", nullable: false),
                    name = table.Column<string>(type: "text", nullable: false),
                    kind = table.Column<string>(type: "text", nullable: false),
                    storage_uri = table.Column<string>(type: "text", nullable: false),
                    size_bytes = table.Column<long>(type: "bigint", nullable: false),
                    sha256 = table.Column<string>(type: "text", nullable: false),
                    content_type = table.Column<string>(type: "text", nullable: false),
                    metadata = table.Column<string>(type: "jsonb", nullable: false),
                    created_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_artifacts", x => x.id);
                    table.ForeignKey(
                        name: "fk_artifacts_runs_run_id",
                        column: x => x.run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Cascade);
                });

            migrationBuilder.CreateTable(
                name: "logs",
                schema: "retok",
                columns: table => new
                {
                    id = table.Column<long>(type: "bigint", nullable: false)
                        .Annotation("Npgsql:ValueGenerationStrategy", NpgsqlValueGenerationStrategy.IdentityByDefaultColumn),
                    run_id = table.Column<long>(type: "bigint", nullable: false),
                    time = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false),
                    level = table.Column<string>(type: "text", nullable: false),
                    message = table.Column<string>(type: "text", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_logs", x => x.id);
                    table.ForeignKey(
                        name: "fk_logs_runs_run_id",
                        column: x => x.run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Cascade);
                });

            migrationBuilder.CreateTable(
                name: "metrics",
                schema: "retok",
                columns: table => new
                {
                    run_id = table.Column<long>(type: "bigint", nullable: false),
                    key = table.Column<string>(type: "text", nullable: false),
                    step = table.Column<long>(type: "bigint", nullable: false),
                    value = table.Column<double>(type: "double precision", nullable: false),
                    time = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_metrics", x => new { x.run_id, x.key, x.step });
                    table.ForeignKey(
                        name: "fk_metrics_runs_run_id",
                        column: x => x.run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Cascade);
                });

            migrationBuilder.CreateTable(
                name: "artifact_uses",
                schema: "retok",
                columns: table => new
                {
                    id = table.Column<long>(type: "bigint", nullable: false)
                        .Annotation("Npgsql:ValueGenerationStrategy", NpgsqlValueGenerationStrategy.IdentityByDefaultColumn),
                    run_id = table.Column<long>(type: "bigint", nullable: false),
                    artifact_id = table.Column<long>(type: "bigint", nullable: false),
                    role = table.Column<string>(type: "text", nullable: false),
                    time = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_artifact_uses", x => x.id);
                    table.ForeignKey(
                        name: "fk_artifact_uses_artifacts_artifact_id",
                        column: x => x.artifact_id,
                        principalSchema: "retok",
                        principalTable: "artifacts",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Restrict);
                    table.ForeignKey(
                        name: "fk_artifact_uses_runs_run_id",
                        column: x => x.run_id,
                        principalSchema: "retok",
                        principalTable: "runs",
                        principalColumn: "id",
                        onDelete: ReferentialAction.Cascade);
                });

            migrationBuilder.CreateIndex(
                name: "ix_artifact_uses_artifact_id",
                schema: "retok",
                table: "artifact_uses",
                column: "artifact_id");

            migrationBuilder.CreateIndex(
                name: "ix_artifact_uses_run_id_artifact_id_role",
                schema: "retok",
                table: "artifact_uses",
                columns: new[] { "run_id", "artifact_id", "role" },
                unique: true);

            migrationBuilder.CreateIndex(
                name: "ix_artifacts_run_id_name",
                schema: "retok",
                table: "artifacts",
                columns: new[] { "run_id", "name" },
                unique: true);

            migrationBuilder.CreateIndex(
                name: "ix_artifacts_sha256",
                schema: "retok",
                table: "artifacts",
                column: "sha256");

            migrationBuilder.CreateIndex(
                name: "ix_experiments_name",
                schema: "retok",
                table: "experiments",
                column: "name",
                unique: true);

            migrationBuilder.CreateIndex(
                name: "ix_logs_run_id_id",
                schema: "retok",
                table: "logs",
                columns: new[] { "run_id", "id" });

            migrationBuilder.CreateIndex(
                name: "ix_pipelines_created_at",
                schema: "retok",
                table: "pipelines",
                column: "created_at");

            migrationBuilder.CreateIndex(
                name: "ix_runs_continued_by_run_id",
                schema: "retok",
                table: "runs",
                column: "continued_by_run_id");

            migrationBuilder.CreateIndex(
                name: "ix_runs_experiment_id",
                schema: "retok",
                table: "runs",
                column: "experiment_id");

            migrationBuilder.CreateIndex(
                name: "ix_runs_fan_in_run_id",
                schema: "retok",
                table: "runs",
                column: "fan_in_run_id");

            migrationBuilder.CreateIndex(
                name: "ix_runs_kind",
                schema: "retok",
                table: "runs",
                column: "kind");

            migrationBuilder.CreateIndex(
                name: "ix_runs_parent_run_id",
                schema: "retok",
                table: "runs",
                column: "parent_run_id");

            migrationBuilder.CreateIndex(
                name: "ix_runs_pipeline_id",
                schema: "retok",
                table: "runs",
                column: "pipeline_id");

            migrationBuilder.CreateIndex(
                name: "ix_runs_status",
                schema: "retok",
                table: "runs",
                column: "status");
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropTable(
                name: "artifact_uses",
                schema: "retok");

            migrationBuilder.DropTable(
                name: "logs",
                schema: "retok");

            migrationBuilder.DropTable(
                name: "metrics",
                schema: "retok");

            migrationBuilder.DropTable(
                name: "workers",
                schema: "retok");

            migrationBuilder.DropTable(
                name: "artifacts",
                schema: "retok");

            migrationBuilder.DropTable(
                name: "runs",
                schema: "retok");

            migrationBuilder.DropTable(
                name: "experiments",
                schema: "retok");

            migrationBuilder.DropTable(
                name: "pipelines",
                schema: "retok");
        }
    }
}

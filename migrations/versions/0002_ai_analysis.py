"""AI analysis: tasks, results and practice_records.ai_task_id.

Follows the seed, corrected: one primary key, `celery_task_id` is `job_id` (the current arq
job id), the index the seed put on a missing practice_session_id column is on
practice_record_id, at most one active task per record (partial unique index), one result per
task, plus the lease/fencing columns of architecture §3.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
NEW_UUID = sa.text("gen_random_uuid()")
TS = sa.DateTime(timezone=True)


def _score(name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(
        f"{name} >= 0 AND {name} <= 100", name=f"ck_ai_analysis_results_{name}"
    )


def _create_tasks() -> None:
    op.create_table(
        "ai_analysis_tasks",
        sa.Column("task_id", UUID(as_uuid=True), server_default=NEW_UUID, nullable=False),
        sa.Column("job_id", sa.String(255), nullable=True),
        sa.Column("practice_record_id", UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.String(20), server_default="pending", nullable=False),
        sa.Column("task_type", sa.String(50), server_default="audio_analysis", nullable=False),
        sa.Column("task_params", JSONB(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("worker_name", sa.String(100), nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("progress", sa.Integer(), server_default="0", nullable=False),
        sa.Column("current_step", sa.String(100), nullable=True),
        sa.Column("total_steps", sa.Integer(), server_default="5", nullable=False),
        sa.Column("error_code", sa.String(50), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("retry_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_retries", sa.Integer(), server_default="3", nullable=False),
        sa.Column("retry_counts", JSONB(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("crash_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("enqueued_at", TS, nullable=True),
        sa.Column("cancel_requested_at", TS, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("updated_at", TS, server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'retry', 'success', 'failure', 'cancelled')",
            name="ck_ai_analysis_tasks_status",
        ),
        sa.CheckConstraint(
            "progress >= 0 AND progress <= 100", name="ck_ai_analysis_tasks_progress"
        ),
        sa.CheckConstraint("retry_count >= 0", name="ck_ai_analysis_tasks_retry_count"),
        sa.CheckConstraint("attempt >= 0", name="ck_ai_analysis_tasks_attempt"),
        sa.ForeignKeyConstraint(
            ["practice_record_id"],
            ["practice_records.practice_record_id"],
            name="fk_ai_analysis_tasks_practice_record_id_practice_records",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
            name="fk_ai_analysis_tasks_user_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", name="pk_ai_analysis_tasks"),
    )
    op.create_index(
        "uq_ai_analysis_tasks_one_active_per_record",
        "ai_analysis_tasks",
        ["practice_record_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'processing', 'retry')"),
    )
    op.create_index(
        "uq_ai_analysis_tasks_user_idempotency_key",
        "ai_analysis_tasks",
        ["user_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_ai_analysis_tasks_practice_record_id", "ai_analysis_tasks", ["practice_record_id"]
    )
    op.create_index(
        "ix_ai_analysis_tasks_user_created", "ai_analysis_tasks", ["user_id", "created_at"]
    )
    op.create_index(
        "ix_ai_analysis_tasks_status_next_attempt",
        "ai_analysis_tasks",
        ["status", "next_attempt_at"],
    )
    op.create_index("ix_ai_analysis_tasks_job_id", "ai_analysis_tasks", ["job_id"])
    op.create_index(
        "ix_ai_analysis_tasks_success_completed",
        "ai_analysis_tasks",
        ["completed_at"],
        postgresql_where=sa.text("status = 'success'"),
    )
    op.create_index(
        "ix_ai_analysis_tasks_active_created",
        "ai_analysis_tasks",
        ["created_at"],
        postgresql_where=sa.text("status IN ('pending', 'processing', 'retry')"),
    )


def _create_results() -> None:
    op.create_table(
        "ai_analysis_results",
        sa.Column("result_id", UUID(as_uuid=True), server_default=NEW_UUID, nullable=False),
        sa.Column("task_id", UUID(as_uuid=True), nullable=False),
        sa.Column("overall_score", sa.Numeric(5, 2), nullable=True),
        sa.Column("pronunciation_accuracy", sa.Numeric(5, 2), nullable=True),
        sa.Column("fluency_score", sa.Numeric(5, 2), nullable=True),
        sa.Column("rhythm_score", sa.Numeric(5, 2), nullable=True),
        sa.Column("detailed_analysis", JSONB(), nullable=False),
        sa.Column("sentence_analyses", JSONB(), nullable=True),
        sa.Column("suggestions", sa.Text(), nullable=True),
        sa.Column("improvement_areas", JSONB(), nullable=True),
        sa.Column("analysis_model_version", sa.String(50), nullable=True),
        sa.Column("processing_time_seconds", sa.Numeric(10, 3), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        _score("overall_score"),
        _score("pronunciation_accuracy"),
        _score("fluency_score"),
        _score("rhythm_score"),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["ai_analysis_tasks.task_id"],
            name="fk_ai_analysis_results_task_id_ai_analysis_tasks",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("result_id", name="pk_ai_analysis_results"),
        sa.UniqueConstraint("task_id", name="uq_ai_analysis_results_task_id"),
    )
    op.create_index("ix_ai_analysis_results_created_at", "ai_analysis_results", ["created_at"])


def upgrade() -> None:
    _create_tasks()
    _create_results()
    op.add_column("practice_records", sa.Column("ai_task_id", UUID(as_uuid=True), nullable=True))
    op.create_foreign_key(
        "fk_practice_records_ai_task_id_ai_analysis_tasks",
        "practice_records",
        "ai_analysis_tasks",
        ["ai_task_id"],
        ["task_id"],
        ondelete="SET NULL",
    )
    op.create_index("ix_practice_records_ai_task_id", "practice_records", ["ai_task_id"])


def downgrade() -> None:
    op.drop_index("ix_practice_records_ai_task_id", table_name="practice_records")
    op.drop_constraint(
        "fk_practice_records_ai_task_id_ai_analysis_tasks", "practice_records", type_="foreignkey"
    )
    op.drop_column("practice_records", "ai_task_id")
    op.drop_table("ai_analysis_results")
    op.drop_table("ai_analysis_tasks")

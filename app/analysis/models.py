from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    RETRY = "retry"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = (TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.CANCELLED)
ACTIVE_STATUS_SQL = "status IN ('pending', 'processing', 'retry')"


class AnalysisTask(Base):
    __tablename__ = "ai_analysis_tasks"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'processing', 'retry', 'success', 'failure', 'cancelled')",
            name="status",
        ),
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress"),
        CheckConstraint("lane IN ('interactive', 'batch')", name="lane"),
        CheckConstraint("retry_count >= 0", name="retry_count"),
        CheckConstraint("attempt >= 0", name="attempt"),
        Index(
            "uq_ai_analysis_tasks_one_active_per_record",
            "practice_record_id",
            unique=True,
            postgresql_where=text(ACTIVE_STATUS_SQL),
        ),
        Index(
            "uq_ai_analysis_tasks_user_idempotency_key",
            "user_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_ai_analysis_tasks_user_created", "user_id", "created_at"),
        Index("ix_ai_analysis_tasks_status_next_attempt", "status", "next_attempt_at"),
        Index("ix_ai_analysis_tasks_job_id", "job_id"),
        # The estimator's recent successes and the reconciler's scan of active rows.
        Index(
            "ix_ai_analysis_tasks_success_completed",
            "completed_at",
            postgresql_where=text("status = 'success'"),
        ),
        Index(
            "ix_ai_analysis_tasks_active_created",
            "created_at",
            postgresql_where=text(ACTIVE_STATUS_SQL),
        ),
    )

    task_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()
    )
    job_id: Mapped[str | None] = mapped_column(String(255))
    practice_record_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("practice_records.practice_record_id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), server_default=TaskStatus.PENDING.value)
    task_type: Mapped[str] = mapped_column(String(50), server_default="audio_analysis")
    # The priority lane it waits in (app/analysis/lanes.py): interactive or batch.
    lane: Mapped[str] = mapped_column(String(16), server_default="interactive")
    task_params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    worker_name: Mapped[str | None] = mapped_column(String(100))
    # Which claim moved the row to `processing` (one per claim call of a job run).
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[int] = mapped_column(Integer, server_default="0")
    current_step: Mapped[str | None] = mapped_column(String(100))
    total_steps: Mapped[int] = mapped_column(Integer, server_default="5")
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    retry_count: Mapped[int] = mapped_column(Integer, server_default="0")
    max_retries: Mapped[int] = mapped_column(Integer, server_default="3")
    # Retries so far by error class ({"network": 2, ...}): each class has its own budget.
    retry_counts: Mapped[dict[str, int]] = mapped_column(JSONB, server_default=text("'{}'"))
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    crash_count: Mapped[int] = mapped_column(Integer, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


def _score_check(column: str) -> CheckConstraint:
    return CheckConstraint(f"{column} >= 0 AND {column} <= 100", name=column)


class AnalysisResult(Base):
    __tablename__ = "ai_analysis_results"
    __table_args__ = (
        UniqueConstraint("task_id"),
        _score_check("overall_score"),
        _score_check("pronunciation_accuracy"),
        _score_check("fluency_score"),
        _score_check("rhythm_score"),
        Index("ix_ai_analysis_results_created_at", "created_at"),
    )

    result_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()
    )
    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_analysis_tasks.task_id", ondelete="CASCADE")
    )
    overall_score: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    pronunciation_accuracy: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    fluency_score: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    rhythm_score: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    detailed_analysis: Mapped[dict[str, Any]] = mapped_column(JSONB)
    sentence_analyses: Mapped[list[Any] | None] = mapped_column(JSONB)
    suggestions: Mapped[str | None] = mapped_column(Text)
    improvement_areas: Mapped[list[Any] | None] = mapped_column(JSONB)
    analysis_model_version: Mapped[str | None] = mapped_column(String(50))
    processing_time_seconds: Mapped[Decimal | None] = mapped_column(Numeric(10, 3))
    # What produced the result, as the result cache keys it (app.analysis.cache.
    # cache_key_model); None: never reused (results stored before the cache).
    cache_model: Mapped[str | None] = mapped_column(Text)
    # A copy of an earlier task's result (the result cache): that task, the one whose analysis
    # ran. No foreign key: a copy stays marked as reused when its source is deleted.
    reused_from_task_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The AI provider (AI_PROVIDERS' name) and its configured model that produced it; a
    # degraded provider's result says so and why (issue 14).
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_model: Mapped[str | None] = mapped_column(String(50))
    degraded: Mapped[bool] = mapped_column(Boolean, server_default=false())
    degraded_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

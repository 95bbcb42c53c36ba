from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class RecordStatus(enum.StrEnum):
    RECORDED = "recorded"
    AI_QUEUED = "ai_queued"
    AI_PROCESSING = "ai_processing"
    AI_ANALYZED = "ai_analyzed"


class PracticeSession(Base):
    __tablename__ = "practice_sessions"

    practice_session_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.user_id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PracticeRecord(Base):
    __tablename__ = "practice_records"
    __table_args__ = (
        CheckConstraint(
            "record_status IN ('recorded', 'ai_queued', 'ai_processing', 'ai_analyzed')",
            name="record_status",
        ),
        CheckConstraint("audio_size_bytes >= 0", name="audio_size"),
        Index("ix_practice_records_session_created", "practice_session_id", "created_at"),
        # The result cache's lookup (app.analysis.cache): recordings by content.
        Index(
            "ix_practice_records_audio_sha256",
            "audio_sha256",
            postgresql_where=text("audio_sha256 IS NOT NULL"),
        ),
    )

    practice_record_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()
    )
    practice_session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("practice_sessions.practice_session_id", ondelete="CASCADE")
    )
    audio_storage_key: Mapped[str] = mapped_column(String(512), unique=True)
    audio_content_type: Mapped[str] = mapped_column(String(100))
    audio_size_bytes: Mapped[int] = mapped_column(BigInteger)
    audio_duration_seconds: Mapped[float | None] = mapped_column(Float)
    # SHA-256 of the recording (hex), computed while it was uploaded; None for records stored
    # before it was (they are never a result cache hit).
    audio_sha256: Mapped[str | None] = mapped_column(String(64))
    record_status: Mapped[str] = mapped_column(String(20), server_default=RecordStatus.RECORDED)
    ai_task_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_analysis_tasks.task_id", ondelete="SET NULL", use_alter=True), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

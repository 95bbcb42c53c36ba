from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.text import CleanText


class SessionCreate(BaseModel):
    title: CleanText | None = Field(default=None, max_length=200)


class RecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    practice_record_id: uuid.UUID
    practice_session_id: uuid.UUID
    audio_content_type: str
    audio_size_bytes: int
    audio_duration_seconds: float | None
    audio_sha256: str | None  # hex; what the result cache matches (None: uploaded before)
    record_status: str
    ai_task_id: uuid.UUID | None
    created_at: datetime


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    practice_session_id: uuid.UUID
    user_id: uuid.UUID
    title: str | None
    created_at: datetime


class SessionWithRecords(SessionOut):
    records: list[RecordOut]

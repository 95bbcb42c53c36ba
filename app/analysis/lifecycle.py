"""State transitions of an analysis task, each one statement fenced by the attempt number.

The worker is the only caller. A transition that matches no row means this attempt no longer
owns the task (another attempt claimed it, or it was cancelled): its outcome is discarded.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ai_client.wire import AIResult

_RELEASE_RECORD = """
    UPDATE practice_records r SET record_status = :record_status, updated_at = now()
    FROM moved m WHERE r.practice_record_id = m.practice_record_id
"""
_FENCE = "task_id = :task_id AND attempt = :attempt AND status = 'processing'"

CLAIM = text(
    """
    WITH claimed AS (
        UPDATE ai_analysis_tasks SET
            crash_count = crash_count + CASE WHEN status = 'processing' THEN 1 ELSE 0 END,
            status = 'processing',
            attempt = attempt + 1,
            lease_expires_at = now() + make_interval(secs => :lease),
            worker_name = :worker_name,
            job_id = :job_id,
            started_at = now(),
            next_attempt_at = NULL,
            progress = 0,
            current_step = 'uploading',
            error_code = NULL,
            error_message = NULL,
            updated_at = now()
        WHERE task_id = :task_id AND cancel_requested_at IS NULL AND (
            (status IN ('pending', 'retry')
             AND (next_attempt_at IS NULL OR next_attempt_at <= now() + interval '1 second'))
            OR (status = 'processing' AND lease_expires_at < now()))
        RETURNING task_id, attempt, crash_count, retry_count, practice_record_id, task_params
    ), moved AS (
        UPDATE practice_records r SET record_status = 'ai_processing', updated_at = now()
        FROM claimed c WHERE r.practice_record_id = c.practice_record_id
        RETURNING r.audio_storage_key, r.audio_content_type
    )
    SELECT c.*, m.audio_storage_key, m.audio_content_type FROM claimed c, moved m
    """
)

PROGRESS = text(
    f"""
    UPDATE ai_analysis_tasks
    SET progress = GREATEST(progress, :progress), current_step = :step, updated_at = now()
    WHERE {_FENCE} RETURNING cancel_requested_at IS NOT NULL AS cancel_requested
    """
)

RENEW = text(
    f"""
    UPDATE ai_analysis_tasks SET lease_expires_at = now() + make_interval(secs => :lease)
    WHERE {_FENCE} RETURNING cancel_requested_at IS NOT NULL AS cancel_requested
    """
)

SUCCEED = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = 'success', progress = 100, current_step = 'completed',
            completed_at = now(), lease_expires_at = NULL, updated_at = now()
        WHERE {_FENCE}
        RETURNING task_id, practice_record_id
    ), stored AS (
        INSERT INTO ai_analysis_results (
            task_id, overall_score, pronunciation_accuracy, fluency_score, rhythm_score,
            detailed_analysis, sentence_analyses, suggestions, improvement_areas,
            analysis_model_version, processing_time_seconds)
        SELECT task_id, :overall_score, :pronunciation_accuracy, :fluency_score, :rhythm_score,
            CAST(:detailed_analysis AS jsonb), CAST(:sentence_analyses AS jsonb), :suggestions,
            CAST(:improvement_areas AS jsonb), :analysis_model_version, :processing_time_seconds
        FROM moved
        ON CONFLICT (task_id) DO NOTHING
        RETURNING result_id
    ), released AS ({_RELEASE_RECORD})
    SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM stored) AS stored
    """
)

RETRY = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = 'retry', retry_count = retry_count + :counted,
            next_attempt_at = now() + make_interval(secs => :delay),
            error_code = :error_code, error_message = :error_message,
            lease_expires_at = NULL, progress = 0, current_step = 'waiting_retry',
            updated_at = now()
        WHERE {_FENCE}
        RETURNING practice_record_id, next_attempt_at
    ), released AS ({_RELEASE_RECORD})
    SELECT next_attempt_at FROM moved
    """
)

FAIL = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = 'failure', error_code = :error_code, error_message = :error_message,
            completed_at = now(), lease_expires_at = NULL, current_step = 'failed',
            updated_at = now()
        WHERE {_FENCE}
        RETURNING practice_record_id
    ), released AS ({_RELEASE_RECORD})
    SELECT count(*) FROM moved
    """
)

CANCELLED = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = 'cancelled', completed_at = now(), lease_expires_at = NULL,
            current_step = 'cancelled', updated_at = now()
        WHERE {_FENCE} AND cancel_requested_at IS NOT NULL
        RETURNING practice_record_id
    ), released AS ({_RELEASE_RECORD})
    SELECT count(*) FROM moved
    """
)


@dataclass(frozen=True, slots=True)
class Claim:
    task_id: uuid.UUID
    attempt: int
    crash_count: int
    retry_count: int
    practice_record_id: uuid.UUID
    task_params: dict[str, Any]
    audio_storage_key: str
    audio_content_type: str

    @property
    def fence(self) -> dict[str, object]:
        return {"task_id": self.task_id, "attempt": self.attempt}


async def claim(
    engine: AsyncEngine, task_id: str, job_id: str, worker_name: str, lease: float
) -> Claim | None:
    params = {
        "task_id": task_id,
        "job_id": job_id,
        "worker_name": worker_name,
        "lease": float(lease),
    }
    async with engine.begin() as connection:
        row = (await connection.execute(CLAIM, params)).mappings().first()
    return Claim(**row) if row else None


async def report_progress(
    engine: AsyncEngine, claimed: Claim, progress: int, step: str
) -> bool | None:
    """None: this attempt lost the task. Otherwise whether a cancel was requested."""
    params = claimed.fence | {"progress": progress, "step": step}
    async with engine.begin() as connection:
        cancel_requested: bool | None = await connection.scalar(PROGRESS, params)
    return cancel_requested


async def renew_lease(engine: AsyncEngine, claimed: Claim, lease: float) -> bool | None:
    """None: this attempt lost the task. Otherwise whether a cancel was requested."""
    async with engine.begin() as connection:
        cancel_requested: bool | None = await connection.scalar(
            RENEW, claimed.fence | {"lease": float(lease)}
        )
    return cancel_requested


async def succeed(engine: AsyncEngine, claimed: Claim, result: AIResult) -> bool:
    """Store the result and `success` in one transaction; False for a stale attempt."""
    values = result.model_dump()
    for key in ("detailed_analysis", "sentence_analyses", "improvement_areas"):
        values[key] = None if values[key] is None else json.dumps(values[key])
    params = claimed.fence | values | {"record_status": "ai_analyzed"}
    async with engine.begin() as connection:
        row = (await connection.execute(SUCCEED, params)).one()
    return bool(row.moved)


async def schedule_retry(
    engine: AsyncEngine,
    claimed: Claim,
    delay: float,
    error_code: str,
    error_message: str,
    *,
    counted: bool = True,
) -> datetime | None:
    params = claimed.fence | {
        "delay": float(delay),
        "counted": 1 if counted else 0,
        "error_code": error_code,
        "error_message": error_message[:2000],
        "record_status": "ai_queued",
    }
    async with engine.begin() as connection:
        when: datetime | None = await connection.scalar(RETRY, params)
    return when


async def fail(engine: AsyncEngine, claimed: Claim, error_code: str, error_message: str) -> bool:
    params = claimed.fence | {
        "error_code": error_code,
        "error_message": error_message[:2000],
        "record_status": "recorded",
    }
    async with engine.begin() as connection:
        return bool(await connection.scalar(FAIL, params))


async def mark_cancelled(engine: AsyncEngine, claimed: Claim) -> bool:
    async with engine.begin() as connection:
        params = claimed.fence | {"record_status": "recorded"}
        return bool(await connection.scalar(CANCELLED, params))

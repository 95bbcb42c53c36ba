"""State transitions of an analysis task, each one statement fenced by the attempt number.

The worker is the only caller. A transition that matches no row means this attempt no longer
owns the task (another attempt claimed it, or it was cancelled): its outcome is discarded.
Each transition returns the task's status columns, from which the status document is built
and published.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ai_client.wire import AIResult
from app.analysis.status import status_columns

_STATUS = status_columns("ai_analysis_tasks")
_FENCE = "task_id = :task_id AND attempt = :attempt AND status = 'processing'"
_RELEASE_RECORD = """
    UPDATE practice_records r SET record_status = :record_status, updated_at = now()
    FROM moved m WHERE r.practice_record_id = m.practice_record_id
"""

CLAIM = text(
    f"""
    WITH moved AS (
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
        RETURNING {_STATUS}, crash_count, task_params
    ), record AS (
        UPDATE practice_records r SET record_status = 'ai_processing', updated_at = now()
        FROM moved m WHERE r.practice_record_id = m.practice_record_id
        RETURNING r.audio_storage_key, r.audio_content_type
    )
    SELECT m.*, r.audio_storage_key, r.audio_content_type FROM moved m, record r
    """
)

PROGRESS = text(
    f"""
    UPDATE ai_analysis_tasks
    SET progress = GREATEST(progress, :progress), current_step = :step, updated_at = now()
    WHERE {_FENCE} RETURNING {_STATUS}
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
        RETURNING {_STATUS}
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
    SELECT * FROM moved
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
        RETURNING {_STATUS}, next_attempt_at
    ), released AS ({_RELEASE_RECORD})
    SELECT * FROM moved
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
        RETURNING {_STATUS}
    ), released AS ({_RELEASE_RECORD})
    SELECT * FROM moved
    """
)

CANCELLED = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = 'cancelled', completed_at = now(), lease_expires_at = NULL,
            current_step = 'cancelled', updated_at = now()
        WHERE {_FENCE} AND cancel_requested_at IS NOT NULL
        RETURNING {_STATUS}
    ), released AS ({_RELEASE_RECORD})
    SELECT * FROM moved
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
    row: RowMapping  # the status columns right after the claim

    @property
    def fence(self) -> dict[str, object]:
        return {"task_id": self.task_id, "attempt": self.attempt}


async def _one(engine: AsyncEngine, statement: Any, params: dict[str, Any]) -> RowMapping | None:
    async with engine.begin() as connection:
        return (await connection.execute(statement, params)).mappings().first()


async def claim(
    engine: AsyncEngine, task_id: str, job_id: str, worker_name: str, lease: float
) -> Claim | None:
    params = {"task_id": task_id, "job_id": job_id, "worker_name": worker_name}
    row = await _one(engine, CLAIM, params | {"lease": float(lease)})
    if row is None:
        return None
    fields = {name: row[name] for name in Claim.__dataclass_fields__ if name != "row"}
    return Claim(**fields, row=row)


async def report_progress(
    engine: AsyncEngine, claimed: Claim, progress: int, step: str
) -> RowMapping | None:
    """None: this attempt lost the task."""
    return await _one(engine, PROGRESS, claimed.fence | {"progress": progress, "step": step})


async def renew_lease(engine: AsyncEngine, claimed: Claim, lease: float) -> bool | None:
    """None: this attempt lost the task. Otherwise whether a cancel was requested."""
    async with engine.begin() as connection:
        cancel_requested: bool | None = await connection.scalar(
            RENEW, claimed.fence | {"lease": float(lease)}
        )
    return cancel_requested


async def succeed(engine: AsyncEngine, claimed: Claim, result: AIResult) -> RowMapping | None:
    """Store the result and `success` in one transaction; None for a stale attempt."""
    values = result.model_dump()
    for key in ("detailed_analysis", "sentence_analyses", "improvement_areas"):
        values[key] = None if values[key] is None else json.dumps(values[key])
    return await _one(engine, SUCCEED, claimed.fence | values | {"record_status": "ai_analyzed"})


async def schedule_retry(
    engine: AsyncEngine,
    claimed: Claim,
    delay: float,
    error_code: str,
    error_message: str,
    *,
    counted: bool = True,
) -> RowMapping | None:
    params = claimed.fence | {
        "delay": float(delay),
        "counted": 1 if counted else 0,
        "error_code": error_code,
        "error_message": error_message[:2000],
        "record_status": "ai_queued",
    }
    return await _one(engine, RETRY, params)


async def fail(
    engine: AsyncEngine, claimed: Claim, error_code: str, error_message: str
) -> RowMapping | None:
    params = claimed.fence | {
        "error_code": error_code,
        "error_message": error_message[:2000],
        "record_status": "recorded",
    }
    return await _one(engine, FAIL, params)


async def mark_cancelled(engine: AsyncEngine, claimed: Claim) -> RowMapping | None:
    return await _one(engine, CANCELLED, claimed.fence | {"record_status": "recorded"})

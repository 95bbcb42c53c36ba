"""State transitions of an analysis task, each one statement fenced by the attempt number.

The worker is the only caller. A transition that matches no row means this attempt no longer
owns the task (another attempt claimed it, or it was cancelled): its outcome is discarded.
Each transition returns the task's status columns, from which the status document is built
and published.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import text

from app.ai_client.wire import AIResult
from app.analysis.status import Row, status_columns
from app.db import Positional, for_asyncpg

_STATUS = status_columns("ai_analysis_tasks")
# updated_at is clock_timestamp(), not now() (the transaction's start): clients order a task's
# states by it, so it must follow the order in which the row changed.
_FENCE = "task_id = :task_id AND attempt = :attempt AND status = 'processing'"
# A retry or a failure must not overwrite a cancel requested meanwhile: that attempt is
# cancelled instead (see `mark_cancelled`).
_NOT_CANCELLED = "cancel_requested_at IS NULL"

# After a failure or a cancel the record goes back to `recorded`, or to `ai_analyzed` if an
# earlier analysis of it succeeded.
RECORD_AFTER_ANALYSIS_ENDED = """CASE WHEN EXISTS (
    SELECT 1 FROM ai_analysis_tasks done
    WHERE done.practice_record_id = r.practice_record_id AND done.status = 'success'
) THEN 'ai_analyzed' ELSE 'recorded' END"""


def move_record(record_status: str, where: str = "TRUE") -> str:
    """The CTE step that moves the records of the task rows in `moved` (`m`) to
    `record_status`."""
    return f"""
    UPDATE practice_records r SET record_status = {record_status}, updated_at = clock_timestamp()
    FROM moved m WHERE r.practice_record_id = m.practice_record_id AND {where}
    """


# A task ending as cancelled (by its worker, the reconciler or the cancel request itself).
SET_CANCELLED = """status = 'cancelled', completed_at = now(), lease_expires_at = NULL,
    current_step = 'cancelled', updated_at = clock_timestamp()"""


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
            claim_token = :claim_token,
            started_at = now(),
            next_attempt_at = NULL,
            progress = 0,
            current_step = 'uploading',
            error_code = NULL,
            error_message = NULL,
            updated_at = clock_timestamp()
        WHERE task_id = :task_id AND cancel_requested_at IS NULL AND (
            (status IN ('pending', 'retry')
             AND (next_attempt_at IS NULL OR next_attempt_at <= now() + interval '1 second'))
            OR (status = 'processing' AND lease_expires_at < now()))
        RETURNING {_STATUS}, crash_count, retry_counts, task_params, enqueued_at
    ), record AS (
        UPDATE practice_records r
        SET record_status = 'ai_processing', updated_at = clock_timestamp()
        FROM moved m WHERE r.practice_record_id = m.practice_record_id
        RETURNING r.audio_storage_key, r.audio_content_type, r.audio_duration_seconds
    )
    SELECT m.*, r.audio_storage_key, r.audio_content_type, r.audio_duration_seconds
    FROM moved m, record r
    """
)

# A claim whose answer was lost (the connection dropped after the server ran it): the row that
# this very claim call moved, recognised by its token, and still leased.
ADOPT = text(
    f"""
    SELECT {status_columns("t")}, t.crash_count, t.retry_counts, t.task_params, t.enqueued_at,
        r.audio_storage_key, r.audio_content_type, r.audio_duration_seconds
    FROM ai_analysis_tasks t JOIN practice_records r ON r.practice_record_id = t.practice_record_id
    WHERE t.task_id = :task_id AND t.status = 'processing' AND t.claim_token = :claim_token
      AND t.cancel_requested_at IS NULL AND t.lease_expires_at > now()
    """
)

# The row as this attempt left it, whatever its status (None once another attempt claimed it),
# with what a retry's re-enqueue needs.
OWN = text(
    f"SELECT {_STATUS}, next_attempt_at FROM ai_analysis_tasks"
    " WHERE task_id = :task_id AND attempt = :attempt"
)

PROGRESS = text(
    f"""
    UPDATE ai_analysis_tasks
    SET progress = GREATEST(progress, :progress), current_step = :step,
        updated_at = clock_timestamp()
    WHERE {_FENCE} RETURNING {_STATUS}
    """
)

# The progress of many attempts in one statement (a worker's relays, grouped: worker/relay.py),
# fenced per attempt as PROGRESS. The rows are locked in task id order first, so two such
# statements never deadlock each other. One that meets a statement locking several of its rows
# in another order (the reconciler's) may deadlock; PostgreSQL then fails one of the two: a
# progress write is best effort, and the reconciler's next tick is its retry.
PROGRESS_MANY = text(
    f"""
    WITH reported AS (
        SELECT * FROM unnest(CAST(:task_ids AS uuid[]), CAST(:attempts AS integer[]),
                             CAST(:progress AS integer[]), CAST(:steps AS text[]))
            AS rep(task_id, attempt, progress, step)
    ), locked AS (
        SELECT t.task_id FROM ai_analysis_tasks t
        JOIN reported rep ON t.task_id = rep.task_id AND t.attempt = rep.attempt
        WHERE t.status = 'processing'
        ORDER BY t.task_id
        FOR UPDATE OF t
    )
    UPDATE ai_analysis_tasks t
    SET progress = GREATEST(t.progress, rep.progress), current_step = rep.step,
        updated_at = clock_timestamp()
    FROM reported rep, locked l
    WHERE t.task_id = rep.task_id AND t.attempt = rep.attempt AND t.status = 'processing'
      AND l.task_id = t.task_id
    RETURNING {status_columns("t")}
    """
)

# One worker's leases, renewed together (worker/lease.py). A row locked by another transaction
# is skipped, never waited on: one stuck row must not hold up the others' renewals. Per held
# (task id, attempt), which may hold two attempts of one task: cancel_requested (NULL: not
# renewed) and skipped (still this attempt's, but locked just now).
RENEW = text(
    """
    WITH held AS (
        SELECT * FROM unnest(CAST(:task_ids AS uuid[]), CAST(:attempts AS integer[]))
            AS h(task_id, attempt)
    ), free AS (
        SELECT t.task_id FROM ai_analysis_tasks t
        JOIN held h ON t.task_id = h.task_id AND t.attempt = h.attempt
        WHERE t.status = 'processing'
        FOR UPDATE OF t SKIP LOCKED
    ), renewed AS (
        UPDATE ai_analysis_tasks t SET lease_expires_at = now() + make_interval(secs => :lease)
        FROM free f WHERE t.task_id = f.task_id
        RETURNING t.task_id, t.attempt, t.cancel_requested_at IS NOT NULL AS cancel_requested
    )
    SELECT h.task_id, h.attempt, r.cancel_requested,
           r.task_id IS NULL AND EXISTS (
               SELECT 1 FROM ai_analysis_tasks t
               WHERE t.task_id = h.task_id AND t.attempt = h.attempt AND t.status = 'processing'
           ) AS skipped
    FROM held h LEFT JOIN renewed r ON r.task_id = h.task_id AND r.attempt = h.attempt
    """
)

SUCCEED = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = 'success', progress = 100, current_step = 'completed',
            completed_at = now(), lease_expires_at = NULL, updated_at = clock_timestamp()
        WHERE {_FENCE}
        RETURNING {_STATUS}
    ), stored AS (
        INSERT INTO ai_analysis_results (
            task_id, overall_score, pronunciation_accuracy, fluency_score, rhythm_score,
            detailed_analysis, sentence_analyses, suggestions, improvement_areas,
            analysis_model_version, processing_time_seconds, provider, provider_model,
            degraded, degraded_reason, cache_model)
        SELECT task_id, :overall_score, :pronunciation_accuracy, :fluency_score, :rhythm_score,
            CAST(:detailed_analysis AS jsonb), CAST(:sentence_analyses AS jsonb), :suggestions,
            CAST(:improvement_areas AS jsonb), :analysis_model_version, :processing_time_seconds,
            :provider, :provider_model, CAST(:degraded_reason AS text) IS NOT NULL,
            :degraded_reason, CAST(:cache_model AS text)
        FROM moved
        ON CONFLICT (task_id) DO NOTHING
        RETURNING result_id
    ), released AS ({move_record("'ai_analyzed'")})
    SELECT * FROM moved
    """
)

RETRY = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = 'retry', retry_count = retry_count + :counted,
            retry_counts = jsonb_set(retry_counts, ARRAY[CAST(:error_code AS text)],
                to_jsonb(COALESCE((retry_counts ->> CAST(:error_code AS text))::int, 0) + 1)),
            max_retries = CASE WHEN :counted = 1 THEN :budget ELSE max_retries END,
            next_attempt_at = now() + make_interval(secs => :delay),
            enqueued_at = now() + make_interval(secs => :delay),
            error_code = :error_code, error_message = :error_message,
            lease_expires_at = NULL, progress = 0, current_step = 'waiting_retry',
            updated_at = clock_timestamp()
        WHERE {_FENCE} AND {_NOT_CANCELLED}
        RETURNING {_STATUS}, next_attempt_at
    ), released AS ({move_record("'ai_queued'")})
    SELECT * FROM moved
    """
)

FAIL = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = 'failure', error_code = :error_code, error_message = :error_message,
            completed_at = now(), lease_expires_at = NULL, current_step = 'failed',
            updated_at = clock_timestamp()
        WHERE {_FENCE} AND {_NOT_CANCELLED}
        RETURNING {_STATUS}
    ), released AS ({move_record(RECORD_AFTER_ANALYSIS_ENDED)})
    SELECT * FROM moved
    """
)

CANCELLED = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET {SET_CANCELLED}
        WHERE {_FENCE} AND cancel_requested_at IS NOT NULL
        RETURNING {_STATUS}
    ), released AS ({move_record(RECORD_AFTER_ANALYSIS_ENDED)})
    SELECT * FROM moved
    """
)

# The worker is stopping (a deploy, SIGTERM) while this attempt runs: hand the task back at
# once, due now, without counting a retry or a crash; or finish a cancel requested meanwhile.
INTERRUPT = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = CASE WHEN {_NOT_CANCELLED} THEN 'retry' ELSE 'cancelled' END,
            current_step = CASE WHEN {_NOT_CANCELLED} THEN 'waiting_retry' ELSE 'cancelled' END,
            next_attempt_at = CASE WHEN {_NOT_CANCELLED} THEN now() END,
            enqueued_at = CASE WHEN {_NOT_CANCELLED} THEN now() ELSE enqueued_at END,
            completed_at = CASE WHEN {_NOT_CANCELLED} THEN NULL ELSE now() END,
            progress = CASE WHEN {_NOT_CANCELLED} THEN 0 ELSE progress END,
            lease_expires_at = NULL, updated_at = clock_timestamp()
        WHERE {_FENCE}
        RETURNING {_STATUS}
    ), released AS (
        UPDATE practice_records r SET updated_at = clock_timestamp(), record_status = CASE
            WHEN m.status = 'retry' THEN 'ai_queued' ELSE {RECORD_AFTER_ANALYSIS_ENDED} END
        FROM moved m WHERE r.practice_record_id = m.practice_record_id
    )
    SELECT * FROM moved
    """
)


@dataclass(frozen=True, slots=True)
class Claim:
    task_id: uuid.UUID
    attempt: int
    crash_count: int
    retry_counts: dict[str, int]
    practice_record_id: uuid.UUID
    task_params: dict[str, Any]
    audio_storage_key: str
    audio_content_type: str
    audio_duration_seconds: float | None  # measured at upload; None when it could not be
    row: Row  # the status columns right after the claim

    @property
    def fence(self) -> dict[str, object]:
        return {"task_id": self.task_id, "attempt": self.attempt}


# Each statement compiled once for asyncpg (the worker's pg pool, app.db.create_pg_pool).
(
    _CLAIM,
    _ADOPT,
    _OWN,
    _PROGRESS,
    _PROGRESS_MANY,
    _RENEW,
    _SUCCEED,
    _RETRY,
    _FAIL,
    _CANCELLED,
    _INTERRUPT,
) = (
    for_asyncpg(statement)
    for statement in (
        CLAIM,
        ADOPT,
        OWN,
        PROGRESS,
        PROGRESS_MANY,
        RENEW,
        SUCCEED,
        RETRY,
        FAIL,
        CANCELLED,
        INTERRUPT,
    )
)


async def _one(
    pg: asyncpg.Pool,
    statement: Positional,
    params: dict[str, Any],
    statement_timeout: float | None = None,
) -> Row | None:
    """The statement's row on a connection of `pg` (autocommit: each transition is one
    statement); raises what asyncpg raises (the caller decides whether to try again), a
    TimeoutError after `statement_timeout` seconds (asyncpg cancels the statement; None: no
    bound)."""
    sql, args = statement.sql, statement.args(params)
    row: asyncpg.Record | None = await pg.fetchrow(sql, *args, timeout=statement_timeout)
    return row


async def claim(
    pg: asyncpg.Pool,
    task_id: str,
    job_id: str,
    worker_name: str,
    lease: float,
    claim_token: uuid.UUID | None = None,
) -> Claim | None:
    """Take the task for a new attempt (attempt + 1, a lease of `lease` seconds); None when it
    is finished, cancelled, not due or held by a live attempt. `claim_token` marks the row as
    moved by this claim (see `adopt`)."""
    params: dict[str, object] = {"task_id": task_id, "job_id": job_id, "worker_name": worker_name}
    params |= {"lease": float(lease), "claim_token": claim_token or uuid.uuid4()}
    return _claim_of(await _one(pg, _CLAIM, params))


async def adopt(pg: asyncpg.Pool, task_id: str, claim_token: uuid.UUID) -> Claim | None:
    """The claim made with `claim_token` if a `claim` whose answer was lost did run: None
    otherwise."""
    params = {"task_id": task_id, "claim_token": claim_token}
    return _claim_of(await _one(pg, _ADOPT, params))


def _claim_of(row: Row | None) -> Claim | None:
    if row is None:
        return None
    fields = {name: row[name] for name in Claim.__dataclass_fields__ if name != "row"}
    return Claim(**fields, row=row)


async def own_row(pg: asyncpg.Pool, claimed: Claim) -> Row | None:
    """The task's status columns if no later attempt has claimed it, else None."""
    return await _one(pg, _OWN, claimed.fence)


async def report_progress(
    pg: asyncpg.Pool,
    claimed: Claim,
    progress: int,
    step: str,
    statement_timeout: float | None = None,
) -> Row | None:
    """Write the attempt's progress (percent 0..100, never lowered) and step code; the task's
    status columns, None when this attempt lost the task. Raises what `_one` raises."""
    params = claimed.fence | {"progress": progress, "step": step}
    return await _one(pg, _PROGRESS, params, statement_timeout)


@dataclass(frozen=True, slots=True)
class Reported:
    """An attempt's progress to write: percent (0..100) and step code."""

    claimed: Claim
    progress: int
    step: str


async def report_progress_many(
    pg: asyncpg.Pool, reports: Sequence[Reported], statement_timeout: float | None = None
) -> list[Row | None]:
    """Write every report in one statement, as `report_progress` each; per report, in order,
    the task's status columns, None when its attempt lost the task. An attempt belongs in
    `reports` once: twice, its row would be written from one of the two (either), and both
    would get that row. Raises what `_one` raises, for all of them."""
    params = {
        "task_ids": [report.claimed.task_id for report in reports],
        "attempts": [report.claimed.attempt for report in reports],
        "progress": [report.progress for report in reports],
        "steps": [report.step for report in reports],
    }
    rows = await pg.fetch(
        _PROGRESS_MANY.sql, *_PROGRESS_MANY.args(params), timeout=statement_timeout
    )
    written = {(row["task_id"], row["attempt"]): row for row in rows}
    return [written.get((report.claimed.task_id, report.claimed.attempt)) for report in reports]


async def renew_leases(
    pg: asyncpg.Pool, held: Sequence[Claim], lease: float
) -> dict[tuple[uuid.UUID, int], bool | None]:
    """Extend the lease of every attempt in `held` to `lease` seconds from now, in one
    statement. Per (task id, attempt):
    whether a cancel was requested, None when the attempt lost the task; an attempt whose row
    another transaction holds locked just now is left out (not renewed, not lost: tried again
    at the next renewal)."""
    params = {
        "task_ids": [claimed.task_id for claimed in held],
        "attempts": [claimed.attempt for claimed in held],
        "lease": float(lease),
    }
    rows = await pg.fetch(_RENEW.sql, *_RENEW.args(params))
    return {
        (row["task_id"], row["attempt"]): row["cancel_requested"]
        for row in rows
        if not row["skipped"]
    }


@dataclass(frozen=True, slots=True)
class Provenance:
    """Who produced a result: the AI provider's name and configured model (None: not known,
    or the provider names none), why it is degraded (None: it is not), and the result
    cache's key of what produced it (app.analysis.cache.provider_key; None: never reused,
    as a degraded result is not)."""

    provider: str | None = None
    provider_model: str | None = None
    degraded_reason: str | None = None
    cache_model: str | None = None


async def succeed(
    pg: asyncpg.Pool, claimed: Claim, result: AIResult, provenance: Provenance = Provenance()
) -> Row | None:
    """Store the result (with its `provenance`) and `success` in one transaction; None for a
    stale attempt."""
    values = result.model_dump() | {
        "provider": provenance.provider,
        "provider_model": provenance.provider_model,
        "degraded_reason": provenance.degraded_reason,
        "cache_model": provenance.cache_model,
    }
    for key in ("detailed_analysis", "sentence_analyses", "improvement_areas"):
        values[key] = None if values[key] is None else json.dumps(values[key])
    return await _one(pg, _SUCCEED, claimed.fence | values)


async def schedule_retry(
    pg: asyncpg.Pool,
    claimed: Claim,
    delay: float,
    error_code: str,
    error_message: str,
    *,
    budget: int,
    counted: bool = True,
) -> Row | None:
    """None when this attempt lost the task or a cancel was requested (then cancel it)."""
    params = claimed.fence | {
        "delay": float(delay),
        "counted": 1 if counted else 0,
        "budget": budget,
        "error_code": error_code,
        "error_message": error_message[:2000],
    }
    return await _one(pg, _RETRY, params)


async def fail(pg: asyncpg.Pool, claimed: Claim, error_code: str, error_message: str) -> Row | None:
    """None when this attempt lost the task or a cancel was requested (then cancel it)."""
    params = claimed.fence | {"error_code": error_code, "error_message": error_message[:2000]}
    return await _one(pg, _FAIL, params)


async def mark_cancelled(pg: asyncpg.Pool, claimed: Claim) -> Row | None:
    """Cancel the task if this attempt holds it and a cancel was requested; else None."""
    return await _one(pg, _CANCELLED, claimed.fence)


async def interrupt(pg: asyncpg.Pool, claimed: Claim) -> Row | None:
    """Hand the task back (retry, due now, nothing counted), or cancel it if that was
    requested; None when this attempt no longer holds it."""
    return await _one(pg, _INTERRUPT, claimed.fence)

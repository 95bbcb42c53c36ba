"""The status document: one shape for the status endpoint, session listings and events."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.asyncio import Redis
from sqlalchemy import RowMapping, text

from app.analysis import queue
from app.analysis.eta import Estimator, iso_duration
from app.analysis.lanes import Lane
from app.analysis.schemas import CurrentStep, TaskStatusOut
from app.analysis.steps import Step, step_for
from app.db import for_asyncpg

log = logging.getLogger(__name__)


class Row(Protocol):
    """A row of `STATUS_FIELDS` and `practice_session_id`: SQLAlchemy's RowMapping or
    asyncpg's Record."""

    def __getitem__(self, key: str, /) -> Any: ...


STATUS_FIELDS = (
    "task_id", "practice_record_id", "status", "progress", "current_step", "total_steps",
    "started_at", "completed_at", "worker_name", "retry_count", "error_code", "error_message",
    "cancel_requested_at", "updated_at", "attempt", "lane", "user_id",
)  # fmt: skip


def status_columns(table: str) -> str:
    """The columns a status document is built from, for `SELECT` or `RETURNING` on `table`."""
    columns = ", ".join(f"{table}.{field}" for field in STATUS_FIELDS)
    return (
        f"{columns}, (SELECT r.practice_session_id FROM practice_records r"
        f" WHERE r.practice_record_id = {table}.practice_record_id) AS practice_session_id"
    )


TASK_STATUS = text(
    f"SELECT {status_columns('t')} FROM ai_analysis_tasks t"
    " WHERE t.task_id = :task_id AND (t.user_id = :user_id OR CAST(:admin AS boolean))"
)

TASK_STATUS_ASYNCPG = for_asyncpg(TASK_STATUS)  # the status endpoint's, on the pg pool

SESSION_STATUS = text(
    f"""
    SELECT {status_columns("t")}
    FROM practice_sessions s
    LEFT JOIN practice_records r ON r.practice_session_id = s.practice_session_id
    LEFT JOIN ai_analysis_tasks t ON t.practice_record_id = r.practice_record_id
    WHERE s.practice_session_id = :session_id AND s.user_id = :user_id
    ORDER BY t.created_at, t.task_id
    """
)


async def describe(row: Row, redis: Redis, estimator: Estimator) -> TaskStatusOut:
    """The status document of a task row (`STATUS_FIELDS` and `practice_session_id`); a
    pending or retry task's queue position comes from the queue's snapshot, or Redis (None
    when Redis is down)."""
    position = None
    if row["status"] in ("pending", "retry"):
        position = await safe_position(redis, queue.job_id_for(row["task_id"], row["attempt"]))
    return await document(row, position, estimator)


async def document(row: Row, position: int | None, estimator: Estimator) -> TaskStatusOut:
    """The status document of a task row whose queue position (1-based, None: not waiting or
    unknown) is already known: no Redis round trip."""
    step = step_for(row["current_step"])
    status = row["status"]
    remaining = None
    if status == "processing":
        remaining = await estimator.remaining(row["progress"], row["started_at"])
    elif position is not None:
        eta = await estimator.completion_time(position)
        remaining = eta - datetime.now(UTC) if eta else None
    # The row's own columns, typed by PostgreSQL: built without validating them again (about
    # a tenth of a status read's CPU).
    return TaskStatusOut.model_construct(
        task_id=row["task_id"],
        practice_record_id=row["practice_record_id"],
        practice_session_id=row["practice_session_id"],
        status=status,
        progress=row["progress"],
        current_step=_current_step(step),
        total_steps=row["total_steps"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        estimated_remaining_time=iso_duration(remaining),
        worker_name=row["worker_name"],
        retry_count=row["retry_count"],
        queue_position=position,
        lane=Lane(row["lane"]),
        error_code=row["error_code"],
        error_message=row["error_message"],
        cancel_requested=row["cancel_requested_at"] is not None,
        updated_at=row["updated_at"],
    )


@functools.cache
def _current_step(step: Step) -> CurrentStep:
    return CurrentStep(code=step.code, label=step.label, index=step.index)


async def describe_all(
    rows: Sequence[RowMapping], redis: Redis, estimator: Estimator
) -> list[TaskStatusOut]:
    return [await describe(row, redis, estimator) for row in rows if row["task_id"] is not None]


async def safe_position(redis: Redis, job_id: str) -> int | None:
    """The queue position, or None when Redis cannot say (it is down: the row still stands)."""
    try:
        return await queue.queue_position(redis, job_id)
    except Exception:
        log.warning("queue position of %s unavailable", job_id)
        return None

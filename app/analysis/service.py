"""Reading and cancelling analysis tasks. Every lookup is filtered by owner: another user's id
answers exactly like an unknown one."""

from __future__ import annotations

import logging
import uuid

import asyncpg
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.analysis import queue, status
from app.analysis.eta import Estimator
from app.analysis.lifecycle import RECORD_AFTER_ANALYSIS_ENDED, move_record
from app.analysis.models import ACTIVE_STATUS_SQL, TERMINAL_STATUSES
from app.analysis.progress import Publisher
from app.analysis.schemas import AnalysisResultOut, SessionStatusOut, TaskStatusOut
from app.auth import Principal
from app.db import fetch_row
from app.errors import AppError, NotFound

log = logging.getLogger(__name__)

RESULT = text(
    """
    SELECT t.status, t.completed_at, r.*
    FROM ai_analysis_tasks t LEFT JOIN ai_analysis_results r ON r.task_id = t.task_id
    WHERE t.task_id = :task_id AND t.user_id = :user_id
    """
)

_STATUS = status.status_columns("ai_analysis_tasks")
CANCEL = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET
            status = CASE WHEN status = 'processing' THEN status ELSE 'cancelled' END,
            current_step = CASE WHEN status = 'processing' THEN current_step ELSE 'cancelled' END,
            completed_at = CASE WHEN status = 'processing' THEN NULL ELSE now() END,
            cancel_requested_at = coalesce(cancel_requested_at, now()),
            next_attempt_at = NULL,
            updated_at = clock_timestamp()
        WHERE task_id = :task_id AND (user_id = :user_id OR CAST(:admin AS boolean))
          AND {ACTIVE_STATUS_SQL}
        RETURNING {_STATUS}, job_id
    ), released AS ({move_record(RECORD_AFTER_ANALYSIS_ENDED, "m.status = 'cancelled'")})
    SELECT * FROM moved
    """
)


def _owner(user: Principal, task_id: uuid.UUID, as_admin: bool = False) -> dict[str, object]:
    """The parameters that find `task_id` among the user's tasks, or among everyone's when
    `as_admin` (an admin route) and the user is an administrator."""
    return {"task_id": task_id, "user_id": user.user_id, "admin": as_admin and user.is_admin}


async def read_status(
    pg: asyncpg.Pool,
    arq: ArqRedis,
    estimator: Estimator,
    user: Principal,
    task_id: uuid.UUID,
) -> TaskStatusOut:
    """The status endpoint's lean path: one statement through asyncpg's own pool
    (`app.db.create_pg_pool`: no ORM session, no BEGIN/COMMIT, no SQLAlchemy execution), the
    connection returned before the queue position is read (from the process's snapshot of
    the queue's head)."""
    params = _owner(user, task_id)
    row = await fetch_row(pg, status.TASK_STATUS_ASYNCPG, params)
    if row is None:
        raise NotFound("Analysis task")
    return await status.describe(row, arq, estimator)


async def get_status(
    session: AsyncSession | AsyncConnection,
    arq: ArqRedis,
    estimator: Estimator,
    user: Principal,
    task_id: uuid.UUID,
    *,
    as_admin: bool = False,
) -> TaskStatusOut:
    params = _owner(user, task_id, as_admin)
    row = (await session.execute(status.TASK_STATUS, params)).mappings().first()
    if row is None:
        raise NotFound("Analysis task")
    return await status.describe(row, arq, estimator)


async def get_session_status(
    session: AsyncSession,
    arq: ArqRedis,
    estimator: Estimator,
    user: Principal,
    session_id: uuid.UUID,
) -> SessionStatusOut:
    params = {"session_id": session_id, "user_id": user.user_id}
    rows = (await session.execute(status.SESSION_STATUS, params)).mappings().all()
    if not rows:
        raise NotFound("Practice session")
    tasks = await status.describe_all(rows, arq, estimator)
    return SessionStatusOut(practice_session_id=session_id, tasks=tasks)


async def get_result(
    session: AsyncSession, user: Principal, task_id: uuid.UUID
) -> AnalysisResultOut:
    params = {"task_id": task_id, "user_id": user.user_id}
    row = (await session.execute(RESULT, params)).mappings().first()
    if row is None:
        raise NotFound("Analysis task")
    if row["status"] != "success" or row["result_id"] is None:
        ended = row["status"] in TERMINAL_STATUSES  # failed or cancelled: it never will
        said = "ended without a result" if ended else "has no result yet"
        raise AppError(
            404,
            "result_not_ready",
            f"The analysis {said}: its status is {row['status']}",
            details={"status": row["status"]},
        )
    return AnalysisResultOut.model_validate(dict(row))


async def cancel(
    session: AsyncSession,
    arq: ArqRedis,
    estimator: Estimator,
    publisher: Publisher,
    user: Principal,
    task_id: uuid.UUID,
    *,
    as_admin: bool = False,
) -> TaskStatusOut:
    """Pending or retry: cancelled at once. Processing: arq aborts the job, whose worker
    closes the AI request and records `cancelled`. Only the owner's task, unless `as_admin`
    (the admin route, which audits it) and the user is an administrator."""
    params = _owner(user, task_id, as_admin)
    row = (await session.execute(CANCEL, params)).mappings().first()
    await session.commit()
    if row is None:
        current = await get_status(session, arq, estimator, user, task_id, as_admin=as_admin)
        raise AppError(
            409,
            "task_finished",
            f"The task has already finished: its status is {current.status}",
            details={"status": current.status},
        )
    document = await status.describe(row, arq, estimator)
    # Published before the abort, so that the worker's `cancelled` comes after it.
    await publisher.publish(document)
    job_id = row["job_id"] if row["status"] == "processing" else None
    job_id = job_id or queue.job_id_for(row["task_id"], row["attempt"])
    try:
        await queue.abort(arq, job_id)
    except Exception:  # the claim refuses cancelled rows; the reconciler finishes the rest
        log.warning("abort of job %s failed; the reconciler will finish the cancel", job_id)
    return document

"""Submitting analyses: one statement inserts the task and marks the record; enqueue after commit.

The row is the outbox: if the enqueue fails (Redis down) the client still gets its task, and
the reconciler enqueues it later.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis
from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.analysis import queue, status
from app.analysis.eta import Estimator
from app.analysis.lanes import DEFAULT_WEIGHTS, Lane, LaneWeights
from app.analysis.models import ACTIVE_STATUS_SQL
from app.analysis.progress import Publisher
from app.analysis.schemas import AnalysisParameters, SubmittedTask
from app.analysis.status import Row, safe_position, status_columns
from app.analysis.steps import TOTAL_STEPS
from app.auth import Principal
from app.db import fetch_row, for_asyncpg
from app.errors import AppError, NotFound
from app.metrics import TASKS_SUBMITTED

log = logging.getLogger(__name__)

_STATUS = status_columns("ai_analysis_tasks")
# enqueued_at is set optimistically: the enqueue follows the commit at once, and when it
# fails the reconciler enqueues the row and sets it again.
_INSERT_COLUMNS = """
    INSERT INTO ai_analysis_tasks (practice_record_id, user_id, task_params, idempotency_key,
                                   total_steps, current_step, enqueued_at, lane)
"""
# The lane (app/analysis/lanes.py): the one asked for, but a re-analysis (the record has a
# successful analysis already) is batch work whoever asks.
_LANE = """CASE WHEN EXISTS (
        SELECT 1 FROM ai_analysis_tasks done
        WHERE done.practice_record_id = target.practice_record_id AND done.status = 'success'
    ) THEN 'batch' ELSE CAST(:lane AS text) END"""
_MARK_RECORDS = """
    , marked AS (
        UPDATE practice_records r
        SET record_status = 'ai_queued', ai_task_id = c.task_id, updated_at = now()
        FROM created c WHERE r.practice_record_id = c.practice_record_id
    )
"""

SUBMIT_RECORD = text(
    f"""
    WITH target AS (
        SELECT r.practice_record_id FROM practice_records r
        JOIN practice_sessions s ON s.practice_session_id = r.practice_session_id
        WHERE r.practice_record_id = :record_id AND s.user_id = :user_id
    ), created AS (
        {_INSERT_COLUMNS}
        SELECT practice_record_id, :user_id, CAST(:params AS jsonb), CAST(:key AS text),
               :total_steps, 'queued', now(), {_LANE}
        FROM target
        ON CONFLICT DO NOTHING
        RETURNING {_STATUS}
    ) {_MARK_RECORDS}
    SELECT * FROM created
    """
)

EXISTING_FOR_RECORD = text(
    f"""
    SELECT t.task_id, t.practice_record_id, t.status, t.attempt, t.idempotency_key, t.lane
    FROM ai_analysis_tasks t
    WHERE t.user_id = :user_id
      AND (t.idempotency_key = CAST(:key AS text)
           OR (t.practice_record_id = :record_id AND t.{ACTIVE_STATUS_SQL}))
    ORDER BY (t.idempotency_key IS NOT DISTINCT FROM CAST(:key AS text)) DESC
    LIMIT 1
    """
)

SUBMIT_SESSION = text(
    f"""
    WITH owned AS (
        SELECT practice_session_id FROM practice_sessions
        WHERE practice_session_id = :session_id AND user_id = :user_id
    ), target AS (
        SELECT r.practice_record_id FROM practice_records r
        JOIN owned o ON o.practice_session_id = r.practice_session_id
        WHERE NOT EXISTS (
            SELECT 1 FROM ai_analysis_tasks t
            WHERE t.practice_record_id = r.practice_record_id
              AND t.status IN ('pending', 'processing', 'retry', 'success'))
    ), created AS (
        {_INSERT_COLUMNS}
        SELECT practice_record_id, :user_id, CAST(:params AS jsonb),
               CAST(:key AS text) || ':' || practice_record_id::text, :total_steps, 'queued',
               now(), 'batch'
        FROM target ORDER BY practice_record_id
        ON CONFLICT DO NOTHING
        RETURNING {_STATUS}
    ) {_MARK_RECORDS}
    SELECT (SELECT count(*) FROM owned) AS owned, c.*
    FROM (SELECT 1) AS one LEFT JOIN created c ON true
    """
)

_SUBMIT_RECORD = for_asyncpg(SUBMIT_RECORD)
_EXISTING_FOR_RECORD = for_asyncpg(EXISTING_FOR_RECORD)

EXISTING_FOR_SESSION_KEY = text(
    """
    SELECT task_id, practice_record_id, status, attempt, lane FROM ai_analysis_tasks
    WHERE user_id = :user_id AND idempotency_key LIKE :prefix ORDER BY created_at, task_id
    """
)


@dataclass(frozen=True, slots=True)
class Submitter:
    """What a submit needs beyond the database session. `after_commit`: a fault hook
    (app/fault_hooks.py) called between the commit and the enqueue; None outside tests.
    `lanes`: the lanes' weights, which place each job in the fair order."""

    arq: ArqRedis
    estimator: Estimator
    publisher: Publisher
    after_commit: Callable[[], None] | None = None
    lanes: LaneWeights = DEFAULT_WEIGHTS


async def submit_record(
    pg: asyncpg.Pool,
    submitter: Submitter,
    user: Principal,
    record_id: uuid.UUID,
    parameters: AnalysisParameters,
    idempotency_key: str | None,
) -> SubmittedTask:
    """Submit one record, in the interactive lane (batch when it is a re-analysis): one
    statement through asyncpg's own pool (`app.db.create_pg_pool`:
    autocommit, no BEGIN/COMMIT; the statement is atomic on its own), the connection back in
    the pool before Redis is asked. An existing active task of the record, or the task of a
    reused Idempotency-Key, is answered instead; NotFound when the record is not the user's.
    A statement that met a dead connection runs once more: a first run that got through is
    then the conflicting active task, answered as existing."""
    values = _values(user, parameters, idempotency_key) | {"record_id": record_id}
    values["lane"] = Lane.INTERACTIVE.value  # one recording: its user waits for it
    for _ in range(2):  # once more if the conflicting task ended in between
        row = await fetch_row(pg, _SUBMIT_RECORD, values)
        if row is not None:
            [task] = await _enqueue(submitter, [row])
            return task
        existing = await fetch_row(pg, _EXISTING_FOR_RECORD, values)
        if existing is not None:
            _check_same_request(existing, record_id, idempotency_key)
            return (await _describe(submitter, [existing]))[0]
    raise NotFound("Practice record")


# Set in a session's info by `resubmit_in` when it created a task: what the admin's audit
# event waits for before it joins a commit (app.admin.audit).
CREATED_A_TASK = "vocalborn.created_a_task"


async def resubmit_in(
    session: AsyncSession,
    submitter: Submitter,
    user: Principal,
    record_id: uuid.UUID,
    parameters: AnalysisParameters,
) -> SubmittedTask:
    """Submit one record inside `session`'s transaction and commit it, then enqueue (the row
    is the outbox: a failed enqueue is the reconciler's): for an admin's retry, whose audit
    event commits in the same transaction as the new task, in the batch lane
    (`CREATED_A_TASK` is set in
    `session.info` when one was created). An existing active task of the record is answered
    instead; NotFound when the record does not exist."""
    values = _values(user, parameters, None) | {"record_id": record_id}
    values["lane"] = Lane.BATCH.value  # an admin's retry: nobody waits at a screen for it
    row = (await session.execute(SUBMIT_RECORD, values)).mappings().first()
    existing = None
    if row is None:
        existing = (await session.execute(EXISTING_FOR_RECORD, values)).mappings().first()
    else:
        session.info[CREATED_A_TASK] = True
    await session.commit()
    if row is not None:
        return (await _enqueue(submitter, [row]))[0]
    if existing is None:
        raise NotFound("Practice record")
    return (await _describe(submitter, [existing]))[0]


def _check_same_request(existing: Row, record_id: uuid.UUID, idempotency_key: str | None) -> None:
    reused = idempotency_key is not None and existing["idempotency_key"] == idempotency_key
    if reused and existing["practice_record_id"] != record_id:
        raise AppError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was used for another request",
            details={"task_id": str(existing["task_id"])},
        )


async def submit_session(
    session: AsyncSession,
    submitter: Submitter,
    user: Principal,
    session_id: uuid.UUID,
    parameters: AnalysisParameters,
    idempotency_key: str | None,
) -> list[SubmittedTask]:
    values = _values(user, parameters, idempotency_key) | {"session_id": session_id}
    if idempotency_key is not None:
        earlier = await _by_session_key(session, user, idempotency_key)
        if earlier:
            return await _describe(submitter, earlier)
    rows = (await session.execute(SUBMIT_SESSION, values)).mappings().all()
    await session.commit()
    if not rows or rows[0]["owned"] == 0:
        raise NotFound("Practice session")
    created = [row for row in rows if row["task_id"] is not None]
    if not created and idempotency_key is not None:  # a concurrent twin created them
        return await _describe(submitter, await _by_session_key(session, user, idempotency_key))
    return await _enqueue(submitter, created)


async def _by_session_key(session: AsyncSession, user: Principal, key: str) -> Sequence[RowMapping]:
    escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    params = {"user_id": user.user_id, "prefix": f"{escaped}:%"}
    return (await session.execute(EXISTING_FOR_SESSION_KEY, params)).mappings().all()


def _values(user: Principal, parameters: AnalysisParameters, key: str | None) -> dict[str, object]:
    return {
        "user_id": user.user_id,
        "params": json.dumps(parameters.model_dump(mode="json")),
        "key": key,
        "total_steps": TOTAL_STEPS,
    }


async def _enqueue(submitter: Submitter, rows: Sequence[Row]) -> list[SubmittedTask]:
    if submitter.after_commit is not None:
        submitter.after_commit()
    TASKS_SUBMITTED.inc(len(rows))
    positions = []
    try:  # one round trip per job: the enqueue script answers its rank too
        for row in rows:
            flow = submitter.lanes.flow(row["lane"], row["user_id"])
            _, position = await queue.enqueue_with_position(
                submitter.arq, row["task_id"], row["attempt"], flow
            )
            positions.append(position)
    except Exception:  # Redis down: the rows are the outbox, the reconciler enqueues them
        log.warning("enqueue failed; %d task(s) left to the reconciler", len(rows))
        return await _describe(submitter, rows, redis_up=False)
    tasks = []
    for row, position in zip(rows, positions, strict=True):
        document = await status.document(row, position, submitter.estimator)  # the event
        await submitter.publisher.publish(document)
        tasks.append(await _submitted(submitter, row, position))
    return tasks


async def _describe(
    submitter: Submitter, rows: Sequence[Row], *, redis_up: bool = True
) -> list[SubmittedTask]:
    tasks = []
    for row in rows:
        position = None
        if redis_up and row["status"] == "pending":
            job_id = queue.job_id_for(row["task_id"], row["attempt"])
            position = await safe_position(submitter.arq, job_id)
        tasks.append(await _submitted(submitter, row, position))
    return tasks


async def _submitted(submitter: Submitter, row: Row, position: int | None) -> SubmittedTask:
    return SubmittedTask(
        task_id=row["task_id"],
        practice_record_id=row["practice_record_id"],
        job_id=queue.job_id_for(row["task_id"], row["attempt"]),
        status=row["status"],
        queue_position=position,
        estimated_completion_time=await submitter.estimator.completion_time(position),
        lane=row["lane"],
    )

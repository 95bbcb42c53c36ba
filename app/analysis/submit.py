"""Submitting analyses: one statement inserts the task and marks the record; enqueue after commit.

The same statement consults the result cache (app.analysis.cache): a hit is inserted as a
finished task with a copy of the earlier result, and is never enqueued.

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

from app.analysis import cache, queue, status
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
# A new task is either queued for analysis or, when the result cache has its result
# (app.analysis.cache: a `source` row for its record), finished at once: `success`, never
# enqueued, no start time (the ETA's mean processing time counts analyses only).
# enqueued_at is set optimistically: the enqueue follows the commit at once, and when it
# fails the reconciler enqueues the row and sets it again.
_INSERT_COLUMNS = """
    INSERT INTO ai_analysis_tasks (practice_record_id, user_id, task_params, idempotency_key,
                                   total_steps, status, current_step, progress, enqueued_at,
                                   completed_at, lane)
"""
# The lane (app/analysis/lanes.py) of a single record's task: the one asked for, but a
# re-analysis (the record has a successful analysis already) is batch work whoever asks.
_LANE = """CASE WHEN EXISTS (
        SELECT 1 FROM ai_analysis_tasks done
        WHERE done.practice_record_id = tg.practice_record_id AND done.status = 'success'
    ) THEN 'batch' ELSE CAST(:lane AS text) END"""


def _new_tasks(key: str, lane: str) -> str:
    """The SELECT of `_INSERT_COLUMNS` for each row of `target`, idempotency key `key`, in
    lane `lane` (SQL)."""
    return f"""
        SELECT tg.practice_record_id, :user_id, CAST(:params AS jsonb), {key}, :total_steps,
            CASE WHEN s.source_task_id IS NULL THEN 'pending' ELSE 'success' END,
            CASE WHEN s.source_task_id IS NULL THEN 'queued' ELSE 'completed' END,
            CASE WHEN s.source_task_id IS NULL THEN 0 ELSE 100 END,
            CASE WHEN s.source_task_id IS NULL THEN now() END,
            CASE WHEN s.source_task_id IS NULL THEN NULL ELSE now() END,
            {lane}
        FROM target tg LEFT JOIN source s ON s.practice_record_id = tg.practice_record_id
    """


_MARK_RECORDS = f"""
    , copied AS ({cache.copy_cte()})
    , marked AS (
        UPDATE practice_records r
        SET record_status = CASE WHEN c.status = 'success' THEN 'ai_analyzed' ELSE 'ai_queued' END,
            ai_task_id = c.task_id, updated_at = now()
        FROM created c WHERE r.practice_record_id = c.practice_record_id
    )
"""
# The final SELECT's join: which new task was a cache hit, and of which task.
_REUSED_FROM = "s.source_task_id AS reused_from_task_id"
_SOURCE_OF_CREATED = (
    "source s ON s.practice_record_id = c.practice_record_id AND c.status = 'success'"
)

# The record must have no active task: an active one is answered instead (by
# EXISTING_FOR_RECORD; a queued insert would conflict with it anyway, a finished one would not).
# Run twice over a dead connection (app.db.fetch_row), a first run that finished a task from
# the cache leaves that task behind: the second run answers another copy of the same result.
SUBMIT_RECORD = text(
    f"""
    WITH target AS (
        SELECT r.practice_record_id, r.audio_sha256 FROM practice_records r
        JOIN practice_sessions s ON s.practice_session_id = r.practice_session_id
        WHERE r.practice_record_id = :record_id AND s.user_id = :user_id
          AND NOT EXISTS (
            SELECT 1 FROM ai_analysis_tasks a
            WHERE a.practice_record_id = r.practice_record_id AND a.{ACTIVE_STATUS_SQL})
    ), source AS ({cache.source_cte()}
    ), created AS (
        {_INSERT_COLUMNS}
        {_new_tasks("CAST(:key AS text)", _LANE)}
        ON CONFLICT DO NOTHING
        RETURNING {_STATUS}
    ) {_MARK_RECORDS}
    SELECT c.*, {_REUSED_FROM} FROM created c LEFT JOIN {_SOURCE_OF_CREATED}
    """
)

# What a result row says of reuse, for rows read back (an existing task).
_REUSED_OF_TASK = """(SELECT res.reused_from_task_id FROM ai_analysis_results res
     WHERE res.task_id = t.task_id) AS reused_from_task_id"""

EXISTING_FOR_RECORD = text(
    f"""
    SELECT t.task_id, t.practice_record_id, t.status, t.attempt, t.idempotency_key, t.lane,
           t.user_id, {_REUSED_OF_TASK}
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
        SELECT r.practice_record_id, r.audio_sha256 FROM practice_records r
        JOIN owned o ON o.practice_session_id = r.practice_session_id
        WHERE NOT EXISTS (
            SELECT 1 FROM ai_analysis_tasks t
            WHERE t.practice_record_id = r.practice_record_id
              AND t.status IN ('pending', 'processing', 'retry', 'success'))
    ), source AS ({cache.source_cte()}
    ), created AS (
        {_INSERT_COLUMNS}
        {_new_tasks("CAST(:key AS text) || ':' || tg.practice_record_id::text", "'batch'")}
        ORDER BY tg.practice_record_id
        ON CONFLICT DO NOTHING
        RETURNING {_STATUS}
    ) {_MARK_RECORDS}
    SELECT (SELECT count(*) FROM owned) AS owned, c.*, {_REUSED_FROM}
    FROM (SELECT 1) AS one LEFT JOIN created c ON true LEFT JOIN {_SOURCE_OF_CREATED}
    """
)

_SUBMIT_RECORD = for_asyncpg(SUBMIT_RECORD)
_EXISTING_FOR_RECORD = for_asyncpg(EXISTING_FOR_RECORD)

EXISTING_FOR_SESSION_KEY = text(
    f"""
    SELECT t.task_id, t.practice_record_id, t.status, t.attempt, t.lane, t.user_id,
           {_REUSED_OF_TASK}
    FROM ai_analysis_tasks t
    WHERE t.user_id = :user_id AND t.idempotency_key LIKE :prefix
    ORDER BY t.created_at, t.task_id
    """
)


@dataclass(frozen=True, slots=True)
class Submitter:
    """What a submit needs beyond the database session. `cache_model`: what produces results
    now, as the result cache keys them (app.analysis.cache.cache_key_model). `after_commit`: a
    fault hook (app/fault_hooks.py) called between the commit and the enqueue; None outside
    tests. `lanes`: the lanes' weights, which place each job in the fair order."""

    arq: ArqRedis
    estimator: Estimator
    publisher: Publisher
    cache_model: str
    after_commit: Callable[[], None] | None = None
    lanes: LaneWeights = DEFAULT_WEIGHTS


async def submit_record(
    pg: asyncpg.Pool,
    submitter: Submitter,
    user: Principal,
    record_id: uuid.UUID,
    parameters: AnalysisParameters,
    idempotency_key: str | None,
    *,
    fresh: bool = False,
) -> SubmittedTask:
    """Submit one record, in the interactive lane (batch when it is a re-analysis): one
    statement through asyncpg's own pool (`app.db.create_pg_pool`:
    autocommit, no BEGIN/COMMIT; the statement is atomic on its own), the connection back in
    the pool before Redis is asked. An existing active task of the record, or the task of a
    reused Idempotency-Key, is answered instead; NotFound when the record is not the user's.
    A statement that met a dead connection runs once more: a first run that got through is
    then the conflicting active task, answered as existing. Unless `fresh`, a result cache
    hit (app.analysis.cache) is answered as a task already `success`, with
    `reused_from_task_id`."""
    values = _values(submitter, user, parameters, idempotency_key, fresh)
    values["record_id"] = record_id
    values["lane"] = Lane.INTERACTIVE.value  # one recording: its user waits for it
    for _ in range(2):  # once more if the conflicting task ended in between
        row = await fetch_row(pg, _SUBMIT_RECORD, values)
        if row is not None:
            [task] = await _enqueue(submitter, [row], fresh)
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
    instead; NotFound when the record does not exist. The result cache applies as to any
    submit (a retried task failed: it is never a source itself)."""
    values = _values(submitter, user, parameters, None, False) | {"record_id": record_id}
    values["lane"] = Lane.BATCH.value  # an admin's retry: nobody waits at a screen for it
    row = (await session.execute(SUBMIT_RECORD, values)).mappings().first()
    existing = None
    if row is None:
        existing = (await session.execute(EXISTING_FOR_RECORD, values)).mappings().first()
    else:
        session.info[CREATED_A_TASK] = True
    await session.commit()
    if row is not None:
        return (await _enqueue(submitter, [row], False))[0]
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
    *,
    fresh: bool = False,
) -> list[SubmittedTask]:
    """Submit every record of the session that has no active or successful task, each by the
    rules of `submit_record` (the result cache per recording, unless `fresh`); the tasks of an
    earlier submit with the same Idempotency-Key are answered instead. NotFound when the
    session is not the user's."""
    values = _values(submitter, user, parameters, idempotency_key, fresh)
    values["session_id"] = session_id
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
    return await _enqueue(submitter, created, fresh)


async def _by_session_key(session: AsyncSession, user: Principal, key: str) -> Sequence[RowMapping]:
    escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    params = {"user_id": user.user_id, "prefix": f"{escaped}:%"}
    return (await session.execute(EXISTING_FOR_SESSION_KEY, params)).mappings().all()


def _values(
    submitter: Submitter,
    user: Principal,
    parameters: AnalysisParameters,
    key: str | None,
    fresh: bool,
) -> dict[str, object]:
    return {
        "user_id": user.user_id,
        "params": json.dumps(parameters.model_dump(mode="json")),
        "key": key,
        "total_steps": TOTAL_STEPS,
        "cache_model": submitter.cache_model,
        "fresh": fresh,
    }


async def _enqueue(submitter: Submitter, rows: Sequence[Row], fresh: bool) -> list[SubmittedTask]:
    """Enqueue the queued tasks among the new `rows`, then publish each new task's first
    state: its queue position, or `success` at once for a result cache hit (never enqueued)."""
    if submitter.after_commit is not None:
        submitter.after_commit()
    TASKS_SUBMITTED.inc(len(rows))
    cache.count_lookups(rows, fresh)
    positions: dict[uuid.UUID, int | None] = {}
    queued = [row for row in rows if row["reused_from_task_id"] is None]
    try:  # one round trip per job: the enqueue script answers its rank too
        for row in queued:
            flow = submitter.lanes.flow(row["lane"], row["user_id"])
            _, positions[row["task_id"]] = await queue.enqueue_with_position(
                submitter.arq, row["task_id"], row["attempt"], flow
            )
    except Exception:  # Redis down: the rows are the outbox, the reconciler enqueues them
        log.warning("enqueue failed; %d task(s) left to the reconciler", len(queued))
        return await _describe(submitter, rows, redis_up=False)
    tasks = []
    for row in rows:
        position = positions.get(row["task_id"])
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
    reused_from = row["reused_from_task_id"]
    return SubmittedTask(
        task_id=row["task_id"],
        practice_record_id=row["practice_record_id"],
        # A task finished from the cache never had a job.
        job_id=None if reused_from else queue.job_id_for(row["task_id"], row["attempt"]),
        status=row["status"],
        queue_position=position,
        estimated_completion_time=await submitter.estimator.completion_time(position),
        reused_from_task_id=reused_from,
        lane=row["lane"],
    )

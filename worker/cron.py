"""Periodic work: the reconciler (the outbox's other half), cleanup, and the worker heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, TextClause, text

from app import liveness
from app.analysis import queue
from app.analysis.lanes import Lane, LaneWeights
from app.analysis.lifecycle import RECORD_AFTER_ANALYSIS_ENDED, SET_CANCELLED, move_record
from app.analysis.maintenance import delete_expired_tasks
from app.analysis.models import ACTIVE_STATUS_SQL
from app.analysis.status import status_columns
from app.liveness import Heartbeat
from app.metrics import (
    DEPENDENCY_RETRIES,
    LIVE_WORKERS,
    QUEUE_DEPTH,
    QUEUED_BY_LANE,
    RECONCILE_REPAIRS,
    TASKS_FINISHED,
    WORKER_HEARTBEAT,
)
from worker.context import WorkerDeps, deps_of
from worker.healing import redis_unreachable, unreachable_dependency

log = logging.getLogger(__name__)

RECONCILE_PAGE = 1000  # rows read from PostgreSQL at a time

# Rows whose job should be in arq but may not be, read a page at a time in (created_at, task_id)
# order from after the last row of the previous page (keyset paging: each row once, however
# many there are). Urgent first: retry rows that are due, processing rows whose lease expired
# (their worker died); then pending rows past the grace (their enqueue may have failed).
_PAGE = """
    SELECT task_id, attempt, status, created_at, lane, user_id FROM ai_analysis_tasks
    WHERE {ACTIVE_STATUS_SQL} AND ({due})
      AND (created_at, task_id) > (:after_created, :after_task)
    ORDER BY created_at, task_id
    LIMIT :page
"""
DUE_PAGES = (
    text(
        _PAGE.format(
            ACTIVE_STATUS_SQL=ACTIVE_STATUS_SQL,
            due="""(status = 'retry' AND next_attempt_at <= now())
                OR (status = 'processing' AND lease_expires_at < now())""",
        )
    ),
    text(
        _PAGE.format(
            ACTIVE_STATUS_SQL=ACTIVE_STATUS_SQL,
            due="status = 'pending' AND created_at < now() - make_interval(secs => :grace)",
        )
    ),
)
_BEFORE_ALL = (datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=0))

# Cancels that no worker will finish: a processing task whose worker is gone, or a waiting
# one whose cancel arrived while its attempt was ending.
ORPHANED_CANCELS = text(
    f"""
    WITH moved AS (
        UPDATE ai_analysis_tasks SET {SET_CANCELLED}
        WHERE cancel_requested_at IS NOT NULL
          AND (status IN ('pending', 'retry')
               OR (status = 'processing' AND lease_expires_at < now()))
        RETURNING {status_columns("ai_analysis_tasks")}
    ), released AS ({move_record(RECORD_AFTER_ANALYSIS_ENDED)})
    SELECT * FROM moved
    """
)

WAITING_BY_LANE = text(
    "SELECT lane, count(*) AS n FROM ai_analysis_tasks"
    " WHERE status IN ('pending', 'retry') GROUP BY lane"
)

MARK_ENQUEUED = text("UPDATE ai_analysis_tasks SET enqueued_at = now() WHERE task_id = ANY(:ids)")


async def reconcile(ctx: dict[str, Any]) -> dict[str, int]:
    """The outbox's other half: finish orphaned cancels (and count the tasks waiting in each
    lane: vocalborn_tasks_queued), then enqueue every due row whose job
    arq does not hold, urgent rows first. A tick that meets PostgreSQL or Redis down is
    logged and counted (vocalborn_worker_dependency_retries) and ends: the next tick is its
    retry.

    Every due row is read from PostgreSQL a page at a time (keyset paging); their job ids
    (about 100 bytes a row) are then checked against arq in one Redis round trip and the
    missing ones enqueued in one more, so a tick's round trips do not grow with the backlog.
    Abort entries of jobs arq no longer holds are removed. "due": the rows checked,
    "enqueued": the jobs enqueued.
    """
    deps = deps_of(ctx)
    try:
        return await _reconcile(deps)
    except Exception as exc:
        dependency = unreachable_dependency(exc)
        if dependency is None:
            raise
        DEPENDENCY_RETRIES.labels(dependency).inc()
        log.warning("reconcile: %s does not answer (%r); next tick tries again", dependency, exc)
        return {"due": 0, "enqueued": 0}


async def _reconcile(deps: WorkerDeps) -> dict[str, int]:
    async with deps.engine.begin() as connection:
        cancelled = (await connection.execute(ORPHANED_CANCELS)).mappings().all()
        waiting = {row.lane: row.n for row in await connection.execute(WAITING_BY_LANE)}
    for lane in Lane:
        QUEUED_BY_LANE.labels(lane.value).set(waiting.get(lane.value, 0))
    await deps.publisher.publish_rows(cancelled)
    TASKS_FINISHED.labels("cancelled").inc(len(cancelled))
    RECONCILE_REPAIRS.labels("cancel_finished").inc(len(cancelled))
    QUEUE_DEPTH.set(await queue.queued_count(deps.arq))
    due = [row for statement in DUE_PAGES async for row in _due_rows(deps, statement)]
    enqueued = await _enqueue_missing(deps, due)
    RECONCILE_REPAIRS.labels("enqueued").inc(enqueued)
    removed = await queue.sweep_aborts(deps.arq)
    if enqueued or removed:
        log.info(
            "reconcile: enqueued %d of %d due tasks; removed %d stale abort entries",
            enqueued,
            len(due),
            removed,
        )
    return {"due": len(due), "enqueued": enqueued}


async def _due_rows(deps: WorkerDeps, statement: TextClause) -> AsyncIterator[Row[Any]]:
    """Every row `statement` finds, a page of RECONCILE_PAGE at a time."""
    after_created, after_task = _BEFORE_ALL
    grace = deps.settings.reconcile_pending_grace_seconds
    while True:
        params = {"after_created": after_created, "after_task": after_task}
        params |= {"page": RECONCILE_PAGE, "grace": grace}
        async with deps.engine.connect() as connection:
            rows = (await connection.execute(statement, params)).all()
        for row in rows:
            yield row
        if len(rows) < RECONCILE_PAGE:
            return
        after_created, after_task = rows[-1].created_at, rows[-1].task_id


async def _enqueue_missing(deps: WorkerDeps, rows: Sequence[Row[Any]]) -> int:
    """Enqueue the jobs of due rows that arq does not hold; how many.

    A processing row whose lease ran out is left to its attempt while arq holds the job that
    claimed it (`{task}:{attempt - 1}`): its in-progress key follows the lease and is held
    through the outcome's commit, which may come after the lease's end (a busy database
    pool), and a new attempt claimed then fenced that outcome out and called the AI service a
    second time. A dead worker's job is still queued: arq starts it again once its key lapses.
    Only a job Redis lost too is enqueued again here. One round trip checks both."""
    by_job = {queue.job_id_for(row.task_id, row.attempt): row for row in rows}
    claimed_by = {
        queue.job_id_for(row.task_id, row.attempt - 1): job_id
        for job_id, row in by_job.items()
        if row.status == "processing" and row.attempt > 0
    }
    gone = set(await queue.missing_jobs(deps.arq, [*by_job, *claimed_by]))
    alive = {job_id for claiming, job_id in claimed_by.items() if claiming not in gone}
    missing = [job_id for job_id in by_job if job_id in gone and job_id not in alive]
    if not missing:
        return 0
    lanes = LaneWeights.of(deps.settings)
    jobs = [
        (row.task_id, row.attempt, lanes.flow(row.lane, row.user_id))
        for row in (by_job[job_id] for job_id in missing)
    ]
    enqueued = await queue.enqueue_missing(deps.arq, jobs)
    if enqueued:
        ids = [by_job[job_id].task_id for job_id in enqueued]
        async with deps.engine.begin() as connection:
            await connection.execute(MARK_ENQUEUED, {"ids": ids})
    return len(enqueued)


async def cleanup_expired(ctx: dict[str, Any]) -> int:
    """Failed and cancelled tasks past retention; successful results are the user's history.
    Records and their stored recordings stay (a record outlives its tasks)."""
    deps = deps_of(ctx)
    async with deps.engine.begin() as connection:
        return await delete_expired_tasks(connection, deps.settings.cleanup_retention_days)


async def heartbeat_forever(deps: WorkerDeps, stop: asyncio.Event) -> None:
    """This worker's heartbeat key (app/liveness.py: name, host, pid, jobs in flight, version;
    expiring after three periods), what `vocalborn worker-check`, the admin stats and the
    worker-down alert rely on; a beat every WORKER_HEARTBEAT_SECONDS until `stop` is set.

    The wait between beats is the wait for `stop`, so a stop ends the loop at once, or after
    the beat in flight. Stop it with the event, never by cancelling the task: a cancel that
    lands during a Redis command can be swallowed by redis-py (its issues 2028 and 2551) and
    the loop would go on.
    """
    every = deps.settings.worker_heartbeat_seconds
    started_at = time.time()
    while not stop.is_set():
        try:
            beat = Heartbeat.now(deps.worker_name, started_at, deps.leases.in_flight, every)
            LIVE_WORKERS.set(await liveness.write(deps.arq, beat))
            WORKER_HEARTBEAT.labels(deps.worker_name).set(beat.at)
        except Exception as exc:
            if stop.is_set():  # shutdown closed the connection under the beat
                return
            if redis_unreachable(exc):  # an outage: one line a beat, counted
                DEPENDENCY_RETRIES.labels("redis").inc()
                log.warning("heartbeat: redis does not answer (%r)", exc)
            else:
                log.warning("heartbeat failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()

"""Periodic work: the reconciler (the outbox's other half), cleanup, and the worker heartbeat."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from sqlalchemy import text

from app.analysis import queue
from app.analysis.lifecycle import RECORD_AFTER_ANALYSIS_ENDED, SET_CANCELLED, move_record
from app.analysis.maintenance import delete_expired_tasks
from app.analysis.status import status_columns
from app.metrics import QUEUE_DEPTH, TASKS_FINISHED, WORKER_HEARTBEAT
from worker.context import WorkerDeps, deps_of

log = logging.getLogger(__name__)

RECONCILE_BATCH = 500

# Rows whose job should be in arq but may not be: pending rows (their enqueue may have failed),
# retry rows that are due, processing rows whose lease expired (their worker died).
DUE = text(
    """
    SELECT task_id, attempt, status FROM ai_analysis_tasks
    WHERE (status = 'pending' AND created_at < now() - make_interval(secs => :grace))
       OR (status = 'retry' AND next_attempt_at <= now())
       OR (status = 'processing' AND lease_expires_at < now())
    ORDER BY created_at
    LIMIT :limit
    """
)

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

MARK_ENQUEUED = text("UPDATE ai_analysis_tasks SET enqueued_at = now() WHERE task_id = ANY(:ids)")


async def reconcile(ctx: dict[str, Any]) -> dict[str, int]:
    deps = deps_of(ctx)
    async with deps.engine.begin() as connection:
        cancelled = (await connection.execute(ORPHANED_CANCELS)).mappings().all()
        grace = deps.settings.reconcile_pending_grace_seconds
        params = {"grace": grace, "limit": RECONCILE_BATCH}
        rows = (await connection.execute(DUE, params)).all()
    await deps.publisher.publish_rows(cancelled)
    TASKS_FINISHED.labels("cancelled").inc(len(cancelled))
    QUEUE_DEPTH.set(await queue.queued_count(deps.arq))
    enqueued = []
    for row in rows:
        # arq ignores a job id that is already queued or running, so this is safe to repeat.
        if await queue.enqueue_analysis(deps.arq, row.task_id, row.attempt):
            enqueued.append(row.task_id)
    if enqueued:
        async with deps.engine.begin() as connection:
            await connection.execute(MARK_ENQUEUED, {"ids": enqueued})
        log.info("reconcile: enqueued %d of %d due tasks", len(enqueued), len(rows))
    return {"due": len(rows), "enqueued": len(enqueued)}


async def cleanup_expired(ctx: dict[str, Any]) -> int:
    """Failed and cancelled tasks past retention; successful results are the user's history."""
    deps = deps_of(ctx)
    async with deps.engine.begin() as connection:
        return await delete_expired_tasks(connection, deps.settings.cleanup_retention_days)


HEARTBEAT_SECONDS = 5.0


async def heartbeat_forever(deps: WorkerDeps) -> None:
    """A per-worker key with a short TTL: a worker-down alert can rely on it."""
    key = queue.WORKER_KEY_PREFIX + deps.worker_name
    while True:
        try:
            now = time.time()
            value = json.dumps({"worker": deps.worker_name, "at": now})
            await deps.arq.set(key, value, ex=int(HEARTBEAT_SECONDS * 3))
            WORKER_HEARTBEAT.labels(deps.worker_name).set(now)
        except Exception:
            log.warning("heartbeat failed", exc_info=True)
        await asyncio.sleep(HEARTBEAT_SECONDS)  # a period, not a wait for a condition

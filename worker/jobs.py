"""arq job functions: thin, they claim and delegate."""

from __future__ import annotations

import logging
from typing import Any

from app.ai_client.errors import ErrorClass
from app.analysis import lifecycle
from app.metrics import TASK_WAIT, TASKS_IN_FLIGHT
from worker.attempt import Attempt
from worker.context import deps_of

log = logging.getLogger(__name__)


async def analyze_recording(ctx: dict[str, Any], task_id: str) -> str:
    deps = deps_of(ctx)
    job_id: str = ctx["job_id"]
    claimed = await lifecycle.claim(
        deps.engine, task_id, job_id, deps.worker_name, deps.settings.lease_seconds
    )
    if claimed is None:
        return "not claimed: finished, cancelled, not due or owned by a live attempt"
    enqueued_at = claimed.row["enqueued_at"]
    if enqueued_at is not None:
        TASK_WAIT.observe(max((claimed.row["started_at"] - enqueued_at).total_seconds(), 0.0))
    attempt = Attempt(deps, claimed, job_id)
    if claimed.crash_count >= deps.settings.crash_loop_limit:
        message = f"The analysis crashed its worker {claimed.crash_count} times"
        return await attempt.give_up(ErrorClass.CRASH_LOOP, message)
    await deps.publisher.publish_row(claimed.row)
    with TASKS_IN_FLIGHT.track_inprogress():
        outcome = await attempt.run()
    log.info("task %s attempt %d: %s", task_id, claimed.attempt, outcome)
    return outcome

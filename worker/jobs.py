"""arq job functions: thin, they claim and delegate."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from app.ai_client.errors import ErrorClass
from app.analysis import lifecycle, queue
from app.analysis.lifecycle import Claim
from app.metrics import TASK_WAIT, TASKS_IN_FLIGHT
from worker.attempt import Attempt
from worker.context import WorkerDeps, deps_of
from worker.durable import durable
from worker.lease import lease_span
from worker.outcome import RETRY_WAIT_SHARE

log = logging.getLogger(__name__)


async def analyze_recording(ctx: dict[str, Any], task_id: str) -> str:
    """The arq job of one attempt at task `task_id` (job id `{task_id}:{attempt}`): claim it
    (lease, fencing token), run it, store its outcome. Returns a one-line summary for arq's
    log; never raises for a job it refuses: one whose argument is not the task its id names
    (a job nobody but our enqueue should write) is logged and claims nothing."""
    job_id: str = ctx["job_id"]
    if queue.task_of_job(job_id, task_id) is None:
        # Not a job our enqueue wrote (it names its task in its id): never claim a task for it.
        log.error(  # the argument cut short: a forged job's could be megabytes
            "job %.200s rejected: its task id %.200r is not the one its job id names",
            job_id,
            task_id,
        )
        return "rejected: the task id is not the job's"
    deps = deps_of(ctx)
    try:
        with deps.leases.claiming(job_id):
            claimed, lease_deadline = await claim(deps, task_id, job_id)
    except Exception as exc:  # the reconciler offers the job again
        log.warning("task %s: claim failed: %r", task_id, exc)
        return f"not claimed: {exc!r}"
    if claimed is None:
        return "not claimed: finished, cancelled, not due or owned by a live attempt"
    enqueued_at = claimed.row["enqueued_at"]
    if enqueued_at is not None:
        TASK_WAIT.observe(max((claimed.row["started_at"] - enqueued_at).total_seconds(), 0.0))
    attempt = Attempt(deps, claimed, job_id, lease_deadline)
    if claimed.crash_count >= deps.settings.crash_loop_limit:
        message = f"The analysis crashed its worker {claimed.crash_count} times"
        return await attempt.fail_now(ErrorClass.CRASH_LOOP, message)
    with TASKS_IN_FLIGHT.track_inprogress():
        outcome = await attempt.run()
    if outcome != "success":
        # A success is said in arq's own line for the job ("← {job id}:analyze_recording ●
        # 'success'"), which cuts other outcomes at 80 characters; a line of ours for every
        # success too cost about 1.5% of a worker's CPU.
        log.info("task %s attempt %d: %s", task_id, claimed.attempt, outcome)
    return outcome


async def claim(deps: WorkerDeps, task_id: str, job_id: str) -> tuple[Claim | None, float]:
    """Claim the task (a `lease_span`), retrying transient database errors meanwhile. Returns the
    claim (None: not claimable) and when its lease ends (time.monotonic(), measured from the
    start of the try that took it). A retry first looks for the row an earlier try moved if
    that try's answer was lost, so that a dropped connection is not taken for a crash once
    the lease expires."""
    lease = deps.settings.lease_seconds
    span = lease_span(lease)
    token = uuid.uuid4()  # this claim's, whatever else runs the same job id or worker name
    tries = 0
    started = time.monotonic()

    async def once() -> Claim | None:
        nonlocal tries, started
        tries += 1
        if tries > 1:
            adopted = await lifecycle.adopt(deps.pg, task_id, token)
            if adopted is not None:
                return adopted  # its lease began at an earlier try: `started` stays
        started = time.monotonic()
        return await lifecycle.claim(
            deps.pg, task_id, job_id, deps.worker_name, span, claim_token=token
        )

    claimed = await durable(once, "claim", started + span, lease * RETRY_WAIT_SHARE)
    return claimed, started + span

"""R2: SIGTERM to every worker with tasks running, as a deploy sends it: each task in flight
finishes within the grace in its process, or is handed back (due now, no retry spent, no
crash counted) and finished by the new workers; none ends as failure.

Processes: the API under uvicorn, two old worker processes (10 jobs each)
running 20 analyses, half of them shorter than the grace and half far longer, with 20 tasks
still queued; both get SIGTERM by PID and two new workers are started at once.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.conftest import MakeUser
from tests.fake_ai import ok
from tests.reliability.report import record_figure
from tests.reliability.system import System, poll
from tests.reliability.worker_process import WorkerProcess

WORKERS = 2
SLOTS = 10  # WORKER_MAX_JOBS of each worker
IN_FLIGHT = WORKERS * SLOTS
QUEUED = 20
GRACE = 8.0  # WORKER_SHUTDOWN_GRACE_SECONDS (production default 10 s)
SHORT, LONG = 4.0, 60.0  # analyses that end within the grace, and ones that outlast it
# What a worker may take beyond its grace to stop: arq notices the end of its jobs every
# 0.1 s, then the hand-back, shutdown (engine, Redis) and the interpreter's exit.
EXIT_BOUND = 3.0
ENV = {
    "WORKER_MAX_JOBS": str(SLOTS),
    "WORKER_SHUTDOWN_GRACE_SECONDS": str(GRACE),
    "AI_DEADLINE_SECONDS": "90",
    "JOB_TIMEOUT_SECONDS": "120",
}
SCALE = f"grace {GRACE:g} s (production 10 s), lease 3 s (production 30 s)"


@pytest.mark.scenario("R2")
async def test_r2_sigterm_every_worker_with_tasks_running(
    system: System, make_user: MakeUser
) -> None:
    fake_ai = system.fake_ai
    assert fake_ai is not None
    fake_ai.reset(default=ok(latency=0.5))
    fake_ai.then(ok(latency=SHORT), ok(latency=LONG), times=IN_FLIGHT // 2)
    user = await make_user()
    await system.start_api()
    _, records = await system.create_records(user, IN_FLIGHT + QUEUED)
    # The workers run first: the first 20 jobs start within a moment of each other, so that
    # the short analyses are all still running when the signal comes.
    old = await system.start_workers("old", WORKERS, **ENV)
    task_ids = await system.submit(user, records)

    async def all_running() -> bool:
        counts = await system.status_counts(task_ids)
        return fake_ai.call_count() == IN_FLIGHT and counts["processing"] == IN_FLIGHT

    await poll(all_running, 60, f"{IN_FLIGHT} analyses running")
    in_flight = {
        t for t, row in (await system.rows(task_ids)).items() if row.status == "processing"
    }

    signalled = time.monotonic()
    for worker in old:
        worker.send(signal.SIGTERM)

    async def exit_of(worker: WorkerProcess) -> tuple[int, float]:
        code = await worker.wait(within=GRACE + EXIT_BOUND + 10)
        return code, time.monotonic() - signalled

    # Each old worker's exit is timed as it happens, while the new ones start.
    exits = asyncio.gather(*(exit_of(worker) for worker in old))
    new = await system.start_workers("new", WORKERS, **ENV)
    ended = await exits
    codes = [code for code, _ in ended]
    exited = max(seconds for _, seconds in ended)
    took = await system.wait_terminal(task_ids, within=90, watch=new)
    done = time.monotonic() - signalled

    rows = await system.rows(task_ids)
    calls = system.ai_calls_per_task()
    results = await system.results_per_task()
    old_names = {f"old-{n}" for n in range(WORKERS)}
    finished_in_old = {t for t in in_flight if rows[t].worker_name in old_names}
    handed_back = in_flight - finished_in_old
    failures = sum(row.status == "failure" for row in rows.values())
    retries = sum(row.retry_count for row in rows.values())
    crashes = sum(row.crash_count for row in rows.values())
    record_figure(
        "R2",
        f"{IN_FLIGHT} tasks running at SIGTERM to {WORKERS} workers: {len(finished_in_old)} "
        f"finished within the grace in their process, {len(handed_back)} handed back and "
        f"finished by the new workers; the old workers exited {exited:.1f} s after the "
        f"signal (grace {GRACE:g} s); "
        f"{sum(r.status == 'success' for r in rows.values())}/{len(task_ids)} success "
        f"{done:.1f} s after it, {failures} failures, {retries} retries spent, "
        f"{crashes} crashes counted",
        scale=SCALE,
        finished_within_grace=len(finished_in_old),
        handed_back=len(handed_back),
        exit_seconds=round(exited, 2),
        failures=failures,
        retries_spent=retries,
    )

    assert codes == [0] * WORKERS, [w.output() for w in old]
    assert exited < GRACE + EXIT_BOUND, exited
    assert took <= done
    assert {row.status for row in rows.values()} == {"success"}
    assert (failures, retries, crashes) == (0, 0, 0)
    assert all(row.retry_counts == {} for row in rows.values())
    assert results == dict.fromkeys(task_ids, 1)
    # The short half finished in the old processes at their first attempt; the long half was
    # handed back: its second attempt, by a new worker, is its only other AI call.
    assert len(finished_in_old) == len(handed_back) == IN_FLIGHT // 2
    assert {(rows[t].attempt, len(calls[t])) for t in finished_in_old} == {(1, 1)}
    assert {t: calls[t] for t in handed_back} == {t: [1, 2] for t in handed_back}
    assert {rows[t].worker_name for t in handed_back} <= {f"new-{n}" for n in range(WORKERS)}
    assert {t: calls[t] for t in set(task_ids) - in_flight} == {
        t: [1] for t in set(task_ids) - in_flight
    }

"""R1: SIGKILL every worker with 100 tasks in flight, start new ones: 100/100 success, no
duplicate result, at most two AI calls per task that was in flight; the recovery time.

Processes: the API under uvicorn, two worker processes (50 jobs each), the
fake AI service holding the first 100 calls open. Both workers are SIGKILLed by PID at once
with 100 analyses in flight and 20 tasks still queued; two new workers are started at once.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.analysis.conftest import FAST
from tests.conftest import MakeUser
from tests.fake_ai import HANG, ok
from tests.reliability.report import record_figure
from tests.reliability.system import System, poll

IN_FLIGHT = 100
QUEUED = 20
WORKERS = 2
LEASE = FAST["lease_seconds"]  # 3 s (30 s in production)
# The calls held open outlast the scenario: only the kill ends them.
ENV = {
    "WORKER_MAX_JOBS": str(IN_FLIGHT // WORKERS),
    "AI_DEADLINE_SECONDS": "60",
    "JOB_TIMEOUT_SECONDS": "90",
}
SCALE = f"lease {LEASE:g} s (production 30 s); AI answers 1 s after the kill"


@pytest.mark.scenario("R1")
async def test_r1_sigkill_every_worker_with_100_tasks_in_flight(
    system: System, make_user: MakeUser
) -> None:
    fake_ai = system.fake_ai
    assert fake_ai is not None
    fake_ai.reset(default=ok(latency=1.0))
    fake_ai.then(HANG, times=IN_FLIGHT)
    user = await make_user()
    await system.start_api()
    _, records = await system.create_records(user, IN_FLIGHT + QUEUED)
    task_ids = await system.submit(user, records)

    doomed = await system.start_workers("doomed", WORKERS, **ENV)

    async def all_in_flight() -> bool:
        counts = await system.status_counts(task_ids)
        return fake_ai.call_count() == IN_FLIGHT and counts["processing"] == IN_FLIGHT

    await poll(all_in_flight, 60, f"{IN_FLIGHT} analyses in flight")
    rows = await system.rows(task_ids)
    in_flight = {t for t, row in rows.items() if row.status == "processing"}
    queued = set(task_ids) - in_flight

    killed_at = time.monotonic()
    for worker in doomed:
        worker.send(signal.SIGKILL)
    for worker in doomed:
        assert await worker.wait(within=10) == -signal.SIGKILL
    rescuers = await system.start_workers("rescuer", WORKERS, **ENV)

    async def all_claimed_again() -> bool:
        rows = await system.rows(list(in_flight))
        return all(row.attempt >= 2 for row in rows.values())

    await poll(all_claimed_again, 30 * LEASE, "every task in flight claimed again", 0.05)
    recovery = time.monotonic() - killed_at
    await system.wait_terminal(task_ids, within=120, watch=rescuers)
    done = time.monotonic() - killed_at

    rows = await system.rows(task_ids)
    statuses = {t: row.status for t, row in rows.items()}
    results = await system.results_per_task()
    calls = system.ai_calls_per_task()
    most_calls = max(len(calls.get(t, [])) for t in in_flight)
    duplicates = sum(n - 1 for n in results.values() if n > 1)
    record_figure(
        "R1",
        f"{sum(s == 'success' for s in statuses.values())}/{len(task_ids)} success "
        f"({IN_FLIGHT} in flight at the SIGKILL of {WORKERS} workers, {QUEUED} queued); "
        f"recovery {recovery:.1f} s (kill → every task in flight claimed by a new worker), "
        f"all done {done:.1f} s after the kill; {duplicates} duplicate results; at most "
        f"{most_calls} AI calls per task in flight, 1 per queued task",
        scale=SCALE,
        recovery_seconds=round(recovery, 2),
        done_seconds=round(done, 2),
        duplicates=duplicates,
        max_ai_calls=most_calls,
    )

    assert statuses == dict.fromkeys(task_ids, "success")
    assert results == dict.fromkeys(task_ids, 1)
    # The attempt lost with its worker, then the rescuer's: never a third.
    assert {t: calls.get(t) for t in in_flight} == {t: [1, 2] for t in in_flight}
    assert {t: calls.get(t) for t in queued} == {t: [1] for t in queued}
    assert {t: rows[t].crash_count for t in task_ids} == {t: int(t in in_flight) for t in task_ids}
    assert all(row.retry_counts == {} for row in rows.values())
    assert {row.worker_name for row in rows.values()} <= {f"rescuer-{n}" for n in range(WORKERS)}
    # Nothing but the lease stands between the kill and the take-over (plus a worker's start).
    assert recovery < 4 * LEASE + 10, recovery

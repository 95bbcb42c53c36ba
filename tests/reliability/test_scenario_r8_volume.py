"""R8: 5,000 tasks through 2 workers with a 1 s AI service: 5,000 success, 0 duplicates,
0 lost.

Processes: the API under uvicorn (every task submitted over HTTP, 16 at a time, while the
workers already run), two worker processes with the default 50 jobs each,
the fake AI service answering each call in 1 s (progress lines along the way).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import MakeUser
from tests.fake_ai import ok
from tests.reliability.report import record_figure
from tests.reliability.system import System

TASKS = 5000
WORKERS = 2
ANALYSIS = 1.0
ENV = {
    "WORKER_MAX_JOBS": "50",  # the default
    # A third of production's lease: short enough that a renewal starved on a loaded event
    # loop would show (as a second AI call), not so short that the machine's other load does.
    "LEASE_SECONDS": "10",
    "AI_DEADLINE_SECONDS": "30",
    "JOB_TIMEOUT_SECONDS": "60",
}
SCALE = "full size (5,000 tasks, 1 s AI, 50 jobs per worker); lease 10 s (production 30 s)"


@pytest.mark.scenario("R8")
async def test_r8_5000_tasks_through_2_workers(system: System, make_user: MakeUser) -> None:
    fake_ai = system.fake_ai
    assert fake_ai is not None
    fake_ai.reset(default=ok(latency=ANALYSIS))
    user = await make_user()
    await system.start_api()
    _, records = await system.create_records(user, TASKS)
    workers = await system.start_workers("worker", WORKERS, **ENV)

    started = time.monotonic()
    task_ids = await system.submit(user, records)
    submitted = time.monotonic() - started
    await system.wait_terminal(task_ids, within=900, watch=workers)
    took = time.monotonic() - started

    counts = await system.status_counts(task_ids)
    results = await system.results_per_task()
    calls = system.ai_calls_per_task()
    duplicate_results = sum(n - 1 for n in results.values() if n > 1)
    duplicate_calls = sum(len(attempts) - 1 for attempts in calls.values() if len(attempts) > 1)
    lost = TASKS - sum(1 for t in task_ids if results.get(t) == 1)
    record_figure(
        "R8",
        f"{counts['success']}/{TASKS} success in {took:.0f} s ({TASKS / took:.0f} tasks/s; "
        f"ideal with {WORKERS}×50 jobs and a {ANALYSIS:g} s AI: "
        f"{TASKS * ANALYSIS / (WORKERS * 50):.0f} s); submits over HTTP took "
        f"{submitted:.1f} s; {duplicate_results} duplicate results, {duplicate_calls} "
        f"second AI calls, {lost} lost",
        scale=SCALE,
        seconds=round(took, 1),
        tasks_per_second=round(TASKS / took, 1),
        duplicate_results=duplicate_results,
        duplicate_ai_calls=duplicate_calls,
        lost=lost,
    )
    assert counts == {"success": TASKS}
    assert len(set(task_ids)) == TASKS
    assert results == dict.fromkeys(task_ids, 1)
    assert calls == {t: [1] for t in task_ids}

"""SIGKILL a worker process with tasks in flight: another worker takes them over after about
one lease, each task is analysed at most once more, and tasks it had not started run once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.analysis.conftest import (
    FAST,
    StartWorker,
    submit,
    upload_recording,
    wait_for,
    wait_for_status,
)
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok
from tests.reliability.worker_process import WorkerProcess, worker_env

LEASE = FAST["lease_seconds"]  # 3 s
IN_FLIGHT = 3  # the doomed worker's WORKER_MAX_JOBS: what it runs when killed
QUEUED = 2  # tasks it never starts
# Every analysis after the doomed worker's lasts longer than a lease, so that the rescuer has
# to renew its own leases too: a renewal that failed to keep a live attempt's task would show
# as a third AI call.
ANALYSIS = 1.5 * LEASE
LONG = {"ai_deadline_seconds": 20.0, "job_timeout_seconds": 25.0}


async def _rows(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT task_id, status, attempt, worker_name, crash_count, retry_counts"
                 " FROM ai_analysis_tasks")
        )  # fmt: skip
        return {str(row.task_id): row for row in rows}


def _ai_calls(fake_ai: FakeAI) -> dict[str, list[int]]:
    """The attempts the AI service was called for, by task (X-Request-ID: task_id:attempt)."""
    calls: dict[str, list[int]] = {}
    for call in list(fake_ai.calls):
        task_id, attempt = call.headers["x-request-id"].rsplit(":", 1)
        calls.setdefault(task_id, []).append(int(attempt))
    return {task_id: sorted(attempts) for task_id, attempts in calls.items()}


async def test_sigkill_worker_then_new_worker_recovers_by_lease(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    worker_settings: Settings,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    # The doomed worker's calls take far longer than the test: in flight when it is killed.
    fake_ai.reset(default=ok(latency=ANALYSIS))
    fake_ai.then(ok(latency=60.0), times=IN_FLIGHT)
    session_id, record_id, _ = await upload_recording(client, alice)
    records = [record_id]
    for _ in range(IN_FLIGHT + QUEUED - 1):
        records.append((await upload_recording(client, alice, session_id=session_id))[1])
    task_ids = [(await submit(client, alice, r))["task_id"] for r in records]

    env = worker_env(
        worker_settings,
        WORKER_NAME="doomed-worker",
        WORKER_MAX_JOBS=str(IN_FLIGHT),
        **{key.upper(): str(value) for key, value in LONG.items()},
    )
    doomed = await WorkerProcess.start(env, tmp_path)
    try:

        async def doomed_runs_its_share() -> bool:
            assert doomed.returncode is None, doomed.output()
            rows = (await _rows(engine)).values()
            return fake_ai.call_count() == IN_FLIGHT and (
                sum(r.status == "processing" and r.worker_name == "doomed-worker" for r in rows)
                == IN_FLIGHT
            )

        await wait_for(doomed_runs_its_share, within=30)
        in_flight = {t for t, r in (await _rows(engine)).items() if r.status == "processing"}
        queued = set(task_ids) - in_flight

        # The rescuer runs before the kill, so that only the lease decides when it takes over.
        # It takes the queued tasks at once; by the time they are done (longer than a lease)
        # the doomed worker must still hold its own: it renews its leases while alive.
        await start_worker(worker_name="rescuer", **LONG)
        finals = await asyncio.gather(*(wait_for_status(client, alice, t) for t in queued))
        assert _ai_calls(fake_ai) == {t: [1] for t in task_ids}, "a task was analysed twice"
        assert [f["status"] for f in finals] == ["success"] * QUEUED
        rows = await _rows(engine)
        assert {(rows[t].status, rows[t].attempt, rows[t].worker_name) for t in in_flight} == {
            ("processing", 1, "doomed-worker")
        }, "a live worker's task was taken over"

        killed_at = time.monotonic()
        doomed.send(signal.SIGKILL)
        assert await doomed.wait(within=10) == -signal.SIGKILL
    finally:
        await doomed.kill()

    # Recovery: from the kill until every task it held is claimed again (or finished).
    taken_over: dict[str, float] = {}
    while len(taken_over) < IN_FLIGHT and time.monotonic() - killed_at < 10 * LEASE:
        for task_id, row in (await _rows(engine)).items():
            if task_id in in_flight and task_id not in taken_over and row.attempt > 1:
                taken_over[task_id] = time.monotonic() - killed_at
        await asyncio.sleep(0.02)  # polling the condition; the deadline is in the loop
    recovery = max(taken_over.values(), default=float("inf"))
    print(
        f"\nrecovery after SIGKILL: {recovery:.2f} s for {IN_FLIGHT} tasks in flight "
        f"(lease {LEASE:g} s; per task: {sorted(round(s, 2) for s in taken_over.values())})"
    )
    # The rescuer already runs: nothing but the lease (plus arq's poll) stands between the
    # kill and the take-over. The killed worker renewed its leases up to the kill, so they
    # end at most one lease after it; twice the lease is the bound.
    assert len(taken_over) == IN_FLIGHT and recovery < 2 * LEASE, (recovery, taken_over)

    finals = await asyncio.gather(*(wait_for_status(client, alice, t) for t in in_flight))
    assert [f["status"] for f in finals] == ["success"] * IN_FLIGHT
    rows = await _rows(engine)
    assert {rows[t].worker_name for t in task_ids} == {"rescuer"}
    assert {t: rows[t].crash_count for t in task_ids} == {
        t: 1 if t in in_flight else 0 for t in task_ids
    }
    assert all(rows[t].retry_counts == {} for t in task_ids)

    # No double run: a task in flight at the kill was analysed twice (the lost attempt and
    # the rescuer's), every other task once.
    calls = _ai_calls(fake_ai)
    assert calls == {t: [1, 2] if t in in_flight else [1] for t in task_ids}
    async with engine.connect() as connection:
        results = await connection.execute(text("SELECT task_id FROM ai_analysis_results"))
        per_task = Counter(str(row.task_id) for row in results)
    assert per_task == dict.fromkeys(task_ids, 1)

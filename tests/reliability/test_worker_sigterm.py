"""SIGTERM to a real worker process (`python -m worker`), as a deploy sends it:
a task that ends within WORKER_SHUTDOWN_GRACE_SECONDS finishes in that process; one that
outlasts it is handed back at once, with no crash and no retry counted."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.analysis.conftest import StartWorker, new_task, record_status, wait_for, wait_for_status
from tests.conftest import ApiUser
from tests.fake_ai import HANG, FakeAI, ok
from tests.reliability.worker_process import WorkerProcess, worker_env

# What a worker may take beyond its grace to stop: arq notices the end of its jobs every
# 0.1 s, then the hand-back (one statement), shutdown (engine, Redis) and interpreter exit:
# about 0.3 s on a quiet machine, but 3 s was once exceeded on two cores shared with four
# other test runs (a process starved of CPU, not a race). Still far below what the bugs under
# test cost: a shutdown that waits for the hung call waits out its 30 s AI deadline.
EXIT_BOUND = 10.0


TASK_ROW = text(
    """
    SELECT status, attempt, worker_name, crash_count, retry_count, retry_counts, progress,
           practice_record_id, lease_expires_at, next_attempt_at <= now() AS due
    FROM ai_analysis_tasks WHERE task_id = :t
    """
)


async def _task_row(engine: AsyncEngine, task_id: str) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(TASK_ROW, {"t": task_id})).one()


async def _results(engine: AsyncEngine, task_id: str) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM ai_analysis_results WHERE task_id = :t"), {"t": task_id}
        )
    return int(count or 0)


def _attempts_called(fake_ai: FakeAI, task_id: str) -> list[int]:
    """The attempts the AI service was called for (X-Request-ID: task_id:attempt)."""
    headers = [call.headers["x-request-id"].rsplit(":", 1) for call in list(fake_ai.calls)]
    return sorted(int(attempt) for task, attempt in headers if task == task_id)


async def _start_with_a_task_in_flight(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    worker_settings: Settings,
    tmp_path: Path,
    **env: str,
) -> tuple[WorkerProcess, str]:
    task_id = await new_task(client, alice)
    worker = await WorkerProcess.start(
        worker_env(worker_settings, WORKER_NAME="terminated-worker", **env), tmp_path
    )

    async def in_flight() -> bool:
        assert worker.returncode is None, worker.output()
        return fake_ai.call_count() == 1

    await wait_for(in_flight, within=30)
    return worker, task_id


async def test_sigterm_lets_a_task_within_the_grace_finish_in_that_process(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    worker_settings: Settings,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    grace, analysis = 8.0, 2.0
    fake_ai.reset(default=ok(latency=analysis))
    worker, task_id = await _start_with_a_task_in_flight(
        client, alice, fake_ai, worker_settings, tmp_path,
        WORKER_SHUTDOWN_GRACE_SECONDS=str(grace), LOG_FORMAT="json",
    )  # fmt: skip
    try:
        signalled = time.monotonic()
        worker.send(signal.SIGTERM)
        code = await worker.wait(within=grace + EXIT_BOUND)
        stopped_in = time.monotonic() - signalled
    finally:
        await worker.kill()
    print(f"\nSIGTERM with a {analysis:g} s analysis in flight: exited in {stopped_in:.2f} s")

    assert code == 0, worker.output()
    assert "Traceback" not in worker.output(), worker.output()
    # It did not wait out the grace: it stopped once its task was done.
    assert stopped_in < grace, worker.output()
    # Nothing else runs: the result was stored by that process before it exited.
    row = await _task_row(engine, task_id)
    assert (row.status, row.attempt, row.worker_name) == ("success", 1, "terminated-worker")
    assert (row.crash_count, row.retry_count, row.retry_counts) == (0, 0, {})
    assert await _results(engine, task_id) == 1
    assert _attempts_called(fake_ai, task_id) == [1]
    # Every line is JSON (LOG_FORMAT), arq's own included: its line for the job is the only
    # one that says a success (arq's command line config wrote its lines as plain text).
    records = [json.loads(line) for line in worker.output().splitlines() if line.strip()]
    said = [
        r["message"] for r in records if r["logger"] == "arq.worker" and task_id in r["message"]
    ]
    assert any(f"{task_id}:0:analyze_recording ● 'success'" in m for m in said), said


async def test_sigterm_hands_back_a_task_that_outlasts_the_grace(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    worker_settings: Settings,
    start_worker: StartWorker,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    grace = 1.5
    # A lease far beyond the test: only the hand-back lets another worker have the task soon.
    long = {"lease_seconds": 60.0, "ai_deadline_seconds": 30.0, "job_timeout_seconds": 40.0}
    fake_ai.reset(default=HANG)
    worker, task_id = await _start_with_a_task_in_flight(
        client, alice, fake_ai, worker_settings, tmp_path,
        WORKER_SHUTDOWN_GRACE_SECONDS=str(grace),
        **{key.upper(): str(value) for key, value in long.items()},
    )  # fmt: skip
    try:
        signalled = time.monotonic()
        worker.send(signal.SIGTERM)
        code = await worker.wait(within=grace + EXIT_BOUND)
        stopped_in = time.monotonic() - signalled
    finally:
        await worker.kill()
    print(f"\nSIGTERM with a hung analysis, grace {grace:g} s: exited in {stopped_in:.2f} s")

    assert grace <= stopped_in < grace + EXIT_BOUND, worker.output()
    assert code == 0, worker.output()
    # Handed back: due now, with no crash counted and no retry budget spent.
    row = await _task_row(engine, task_id)
    assert (row.status, row.due, row.lease_expires_at, row.progress) == ("retry", True, None, 0)
    assert (row.crash_count, row.retry_count, row.retry_counts) == (0, 0, {}), worker.output()
    assert await record_status(engine, str(row.practice_record_id)) == "ai_queued"
    assert await _results(engine, task_id) == 0
    assert _attempts_called(fake_ai, task_id) == [1]

    fake_ai.reset(default=ok())
    await start_worker(worker_name="next-worker", **long)
    final = await wait_for_status(client, alice, task_id, within=10)  # not a lease later
    assert final["status"] == "success" and final["worker_name"] == "next-worker"
    row = await _task_row(engine, task_id)
    assert (row.attempt, row.crash_count, row.retry_count, row.retry_counts) == (2, 0, 0, {})
    assert await _results(engine, task_id) == 1
    assert _attempts_called(fake_ai, task_id) == [2]  # since the reset: attempt 1 was the hung one

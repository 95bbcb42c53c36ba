"""SIGKILL a worker process with tasks in flight; a new worker finishes every task once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

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

TASKS = 3


def _worker_env(settings: Settings) -> dict[str, str]:
    env = {key.upper(): str(value) for key, value in FAST.items()}
    return (
        os.environ
        | env
        | {
            "ENVIRONMENT": "test",
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "STORAGE_DIR": str(settings.storage_dir),
            "AI_SERVICE_URL": settings.ai_service_url,
            "AI_DEADLINE_SECONDS": "15",
            "WORKER_NAME": "doomed-worker",
        }
    )


async def _statuses(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT status FROM ai_analysis_tasks"))
        return [row.status for row in rows]


async def test_sigkill_worker_then_new_worker_recovers(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    worker_settings: Settings,
    engine: AsyncEngine,
) -> None:
    fake_ai.reset(default=ok(latency=30.0))  # long enough to be in flight when killed
    session_id, record_id, _ = await upload_recording(client, alice)
    records = [record_id]
    for _ in range(TASKS - 1):
        records.append((await upload_recording(client, alice, session_id=session_id))[1])
    task_ids = [(await submit(client, alice, r))["task_id"] for r in records]

    arq = Path(sys.executable).parent / "arq"
    process = await asyncio.create_subprocess_exec(
        str(arq), "worker.main.WorkerSettings", env=_worker_env(worker_settings)
    )
    try:

        async def all_in_flight() -> bool:
            return fake_ai.call_count() == TASKS and set(await _statuses(engine)) == {"processing"}

        await wait_for(all_in_flight, within=30)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        killed_at = time.monotonic()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    fake_ai.reset(default=ok(latency=0.2))
    await start_worker()
    finals = await asyncio.gather(*(wait_for_status(client, alice, t, within=60) for t in task_ids))
    recovery = time.monotonic() - killed_at
    print(f"\nrecovery after SIGKILL: {recovery:.1f} s for {TASKS} tasks (lease 3 s)")

    assert [f["status"] for f in finals] == ["success"] * TASKS
    assert recovery < 60
    async with engine.connect() as connection:
        per_task = await connection.execute(
            text("SELECT task_id, count(*) AS n FROM ai_analysis_results GROUP BY task_id")
        )
        counts = {str(row.task_id): row.n for row in per_task}
    assert counts == {t: 1 for t in task_ids}
    assert all(f["worker_name"] != "doomed-worker" for f in finals)

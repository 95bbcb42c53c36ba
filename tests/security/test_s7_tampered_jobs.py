"""S7: job payloads written straight into Redis, as someone with access to it could: pickle
bytes whose unpickling would run code, a job for another task than its id names, garbage.
A real worker takes each one and rejects it with a log line; no code runs, no task changes."""

from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis import queue
from tests.analysis.conftest import StartWorker, new_task, wait_for
from tests.conftest import ApiUser
from tests.security.conftest import figure

pytestmark = pytest.mark.scenario("S7")


class Exploit:
    """Unpickling this creates `marker`: what an unpickling worker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _job(function: str, args: list[Any], kwargs: dict[str, Any] | None = None) -> bytes:
    """A job as arq's serialiser lays it out, in our JSON."""
    now = int(time.time() * 1000)
    document = {"f": function, "a": args, "k": kwargs or {}, "t": 1, "et": now}
    return json.dumps(document).encode()


async def _rows(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        tasks = await connection.execute(text("SELECT * FROM ai_analysis_tasks ORDER BY task_id"))
        records = await connection.execute(
            text("SELECT * FROM practice_records ORDER BY practice_record_id")
        )
        return [tuple(r) for r in tasks] + [tuple(r) for r in records]


async def test_s7_tampered_jobs_are_rejected_logged_and_touch_nothing(
    client: httpx.AsyncClient,
    alice: ApiUser,
    bob: ApiUser,
    redis: Redis,
    engine: AsyncEngine,
    start_worker: StartWorker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    alices, bobs = await new_task(client, alice), await new_task(client, bob)
    # Only the forged jobs in the queue: the real ones removed (their tasks stay pending; the
    # reconciler is told not to re-enqueue them for an hour).
    await redis.delete(queue.QUEUE_NAME, *await redis.keys(job_key_prefix + "*"))
    before = await _rows(engine)

    marker = tmp_path / "pwned"
    exploit = pickle.dumps(Exploit(marker))
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Exploit(control)))
    assert control.exists()

    forged = {
        # job id: (payload, what the log says)
        f"{alices}:1": (exploit, f"deserializing job {alices}:1 failed"),
        f"{alices}:2": (_job(queue.ANALYZE_FUNCTION, [bobs]), "rejected"),
        "forged:1": (_job(queue.ANALYZE_FUNCTION, ["not-a-task-id"]), "rejected"),
        f"{bobs}:3": (_job(queue.ANALYZE_FUNCTION, [{"task_id": bobs}]), "rejected"),
        f"{bobs}:4": (_job(queue.ANALYZE_FUNCTION, [bobs], {"extra": 1}), "unexpected keyword"),
        "garbage:1": (b"\x00\xff\x80 not json {", "deserializing job garbage:1 failed"),
        "shape:1": (b'{"not": "a job"}', "deserializing job shape:1 failed"),
        "function:1": (_job("os.system", ["touch /tmp/pwned"]), "'os.system' not found"),
    }
    now = int(time.time() * 1000)
    for job_id, (payload, _) in forged.items():
        await redis.set(job_key_prefix + job_id, payload, px=60_000)
        await redis.zadd(queue.QUEUE_NAME, {job_id: now})

    await start_worker(reconcile_pending_grace_seconds=3600)

    async def all_taken() -> bool:  # out of the queue, not running (cron jobs come and go)
        for job_id in forged:
            if await redis.zscore(queue.QUEUE_NAME, job_id) is not None:
                return False
            if await redis.exists(in_progress_key_prefix + job_id):
                return False
        return True

    await wait_for(all_taken, within=30)

    def logged(job_id: str, says: str) -> bool:
        return any(
            job_id in r.getMessage() and says in (r.getMessage() + str(r.exc_info or ""))
            and r.levelno >= logging.WARNING
            for r in caplog.records
        )  # fmt: skip

    async def all_logged() -> bool:
        return all(logged(job_id, says) for job_id, (_, says) in forged.items())

    await wait_for(all_logged, within=10)
    assert not marker.exists(), "the pickle payload ran"
    assert await _rows(engine) == before, "a task or record changed"
    figure("S7", f"{len(forged)} tampered jobs: {len(forged)} rejected and logged, 0 executed")

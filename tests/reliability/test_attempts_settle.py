"""An attempt whose work is done is never held open by its helpers, and a worker's lease loop
stops on an event with a bounded wait, never by cancelling a Redis command in flight (redis-py can
swallow such a cancellation inside its timeout block, its issues 2028 and 2551)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import redis_client
from app.analysis import lifecycle
from app.settings import Settings
from tests.analysis.conftest import StartWorker, new_task, upload_recording, wait_for
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok
from tests.faults import SwallowingConnection, command_held
from worker.lease import CLOSE_WAIT_SECONDS, Leases

TASKS = 500
RUNS = 5
SETTLE_WITHIN = 15.0  # seconds from the last AI answer until no task is `processing`


async def _add_records(
    engine: AsyncEngine, storage: Path, session_id: str, record_id: str, count: int
) -> None:
    """`count` more recordings in the session, each a hard link to `record_id`'s file."""
    async with engine.begin() as connection:
        key, content_type, size = (
            await connection.execute(
                text(
                    "SELECT audio_storage_key, audio_content_type, audio_size_bytes"
                    " FROM practice_records WHERE practice_record_id = :r"
                ),
                {"r": record_id},
            )
        ).one()
        keys = [f"{key}.copy{i}" for i in range(count)]
        for copy in keys:
            os.link(storage / key, storage / copy)
        await connection.execute(
            text(
                "INSERT INTO practice_records (practice_session_id, audio_storage_key,"
                " audio_content_type, audio_size_bytes) VALUES (:s, :k, :c, :n)"
            ),
            [{"s": session_id, "k": k, "c": content_type, "n": size} for k in keys],
        )


async def _stuck(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM ai_analysis_tasks WHERE status = 'processing'")
        )
    return int(count or 0)


async def test_no_task_stays_processing_after_its_ai_call_ended(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    worker_settings: Settings,
) -> None:
    """500 analyses at once on one worker, one AI connection per job, five runs: once
    every AI call has ended, every task leaves `processing` within the attempt's bounded
    close (before: 4 of 7 runs left 4-11 tasks stuck at progress 78, their lease renewed
    forever by a renewal loop whose cancellation redis-py had swallowed)."""
    fake_ai.reset(default=ok(latency=2.0))
    # The AI client keeps one connection per job the worker may run: all TASKS at once.
    await start_worker(worker_max_jobs=TASKS, ai_deadline_seconds=15.0)
    for run in range(RUNS):
        fake_ai.reset(default=ok(latency=2.0))
        session_id, record_id, _ = await upload_recording(client, alice)
        await _add_records(
            engine, Path(worker_settings.storage_dir), session_id, record_id, TASKS - 1
        )
        response = await client.post(
            "/api/v1/tasks/analysis/submit",
            json={"practice_session_id": session_id},
            headers=alice.headers,
        )
        assert response.status_code == 202, response.text

        async def all_answered() -> bool:
            calls = list(fake_ai.calls)
            return len(calls) >= TASKS and all(c.finished or c.closed_by_client for c in calls)

        await wait_for(all_answered, within=120)
        answered_at = time.monotonic()

        async def none_processing() -> bool:
            return await _stuck(engine) == 0

        # Bounded by the attempt's own bounds (close of its helpers, commit), with room for
        # 500 commits on a loaded 2-core machine: not a lease, not forever.
        await wait_for(none_processing, within=SETTLE_WITHIN)
        print(f"\nrun {run + 1}: every task left processing {time.monotonic() - answered_at:.1f}"
              " s after the last AI answer")  # fmt: skip
        per_task = Counter(call.headers["x-request-id"].split(":")[0] for call in fake_ai.calls)
        assert set(per_task.values()) == {1}, "a task was sent to the AI service twice"
        async with engine.connect() as connection:
            outcomes = (
                await connection.execute(
                    text(
                        "SELECT status, crash_count, count(*) AS n FROM ai_analysis_tasks"
                        " WHERE practice_record_id IN (SELECT practice_record_id"
                        " FROM practice_records WHERE practice_session_id = :s)"
                        " GROUP BY status, crash_count"
                    ),
                    {"s": session_id},
                )
            ).all()
        assert [tuple(row) for row in outcomes] == [("success", 0, TASKS)]


async def _stopping_time(leases: Leases) -> float | None:
    """How long `stop()` took, or None if it still runs after a generous bound (measured, not
    cut by a timeout, whose cancel could be swallowed too)."""
    started = time.monotonic()
    stopping = asyncio.create_task(leases.stop())
    done, _ = await asyncio.wait([stopping], timeout=CLOSE_WAIT_SECONDS + 5)
    return time.monotonic() - started if done else None


@pytest.mark.parametrize(
    ("pause_ms", "answered"), [(1_000, True), (30_000, False)], ids=["brief", "long"]
)
async def test_stopping_the_leases_while_a_redis_command_is_in_flight_never_hangs(
    pause_ms: int,
    answered: bool,
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    redis: Redis,
    worker_settings: Settings,
    pg: asyncpg.Pool,
) -> None:
    """The lease loop's PEXPIRE of arq's in-progress key is held by a paused Redis, on a
    client that swallows a cancel as redis-py can (its issues 2028 and 2551), when the
    attempt's lease is closed and the loop stopped, several times. The close never waits.
    Brief pause: `stop()` waits for the answer and the loop ends by itself. Long pause:
    `stop()` still returns within its bound, the command left in flight. Stopping by
    cancelling the loop and awaiting it would turn a swallowed cancel into a wait without
    end."""
    task_id = await new_task(client, alice)
    claimed = await lifecycle.claim(pg, task_id, f"{task_id}:0", "unit", lease=30.0)
    assert claimed is not None
    arq = redis_client.connect(worker_settings.redis_url, connection_class=SwallowingConnection)
    try:
        for _ in range(5 if answered else 2):
            await redis.execute_command("CLIENT", "PAUSE", str(pause_ms), "WRITE")
            leases = Leases(1.0, pg, arq)  # its first round (and PEXPIRE) after 0.25 s
            leases.start()
            lease = leases.hold(claimed, f"{task_id}:0", time.monotonic() + 1)
            await wait_for(lambda: command_held(redis, "pexpire"), within=5)
            lease.close(hold_for=60.0)  # never waits
            took = await _stopping_time(leases)
            assert took is not None, "stop() still running"
            assert took <= CLOSE_WAIT_SECONDS + 0.5
            loop = leases._loop
            assert loop is not None
            if answered:  # ended by itself, not cancelled
                assert loop.done() and not loop.cancelled()
            await redis.execute_command("CLIENT", "UNPAUSE")
            await asyncio.wait([loop], timeout=5)
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
        await arq.aclose(close_connection_pool=True)

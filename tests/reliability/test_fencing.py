"""Two attempts of one task: only the owner of the latest attempt may write."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ai_client.wire import AIResult
from app.analysis import lifecycle
from tests.analysis.conftest import (
    StartWorker,
    new_task,
    wait_for,
    wait_for_status,
)
from tests.conftest import ApiUser
from tests.fake_ai import AI_RESULT, FakeAI


async def _lease_expired(engine: AsyncEngine, task_id: str) -> bool:
    async with engine.connect() as connection:
        return bool(
            await connection.scalar(
                text("SELECT lease_expires_at < now() FROM ai_analysis_tasks WHERE task_id = :t"),
                {"t": task_id},
            )
        )


async def _results(engine: AsyncEngine, task_id: str) -> list[Any]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT fluency_score FROM ai_analysis_results WHERE task_id = :t"),
            {"t": task_id},
        )
        return [float(row.fluency_score) for row in rows]


async def test_stale_attempt_cannot_write(
    client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine, pg: asyncpg.Pool
) -> None:
    task_id = await new_task(client, alice)

    first = await lifecycle.claim(pg, task_id, f"{task_id}:0", "worker-a", lease=0.2)
    assert first is not None and first.attempt == 1
    assert await lifecycle.claim(pg, task_id, f"{task_id}:0", "worker-b", 30) is None

    async def expired() -> bool:
        return await _lease_expired(engine, task_id)

    await wait_for(expired, within=5)
    second = await lifecycle.claim(pg, task_id, f"{task_id}:1", "worker-b", lease=30)
    assert second is not None and second.attempt == 2 and second.crash_count == 1

    # Both attempts finish; the stale one first, then the owner, then the stale one again.
    stale = AIResult.model_validate(AI_RESULT | {"fluency_score": 11.0})
    owner = AIResult.model_validate(AI_RESULT | {"fluency_score": 22.0})
    assert await lifecycle.succeed(pg, first, stale) is None
    assert await lifecycle.report_progress(pg, first, 50, "scoring") is None
    assert await lifecycle.succeed(pg, second, owner) is not None
    assert await lifecycle.succeed(pg, first, stale) is None
    assert await lifecycle.succeed(pg, second, owner) is None
    assert await _results(engine, task_id) == [22.0]
    status = await client.get(f"/api/v1/tasks/analysis/{task_id}/status", headers=alice.headers)
    assert status.json()["status"] == "success"
    assert status.json()["worker_name"] == "worker-b"


async def test_crash_loop_fails_the_task(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    pg: asyncpg.Pool,
) -> None:
    task_id = await new_task(client, alice)
    # Three workers died holding this task: each claimed it and its lease ran out.
    for n in range(3):
        claimed = await lifecycle.claim(pg, task_id, f"{task_id}:{n}", f"dead-{n}", 0.05)
        assert claimed is not None

        async def expired() -> bool:
            return await _lease_expired(engine, task_id)

        await wait_for(expired, within=5)
    await start_worker()
    final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "failure"
    assert final["error_code"] == "crash_loop"
    assert fake_ai.call_count() == 0


async def test_circuit_breaker_stops_calls_then_probes(
    client: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    from tests.fake_ai import ok, status

    fake_ai.reset(default=status(503))
    task_id = await new_task(client, alice)
    await start_worker(breaker_failure_threshold=2, breaker_cooldown_seconds=2.0)

    async def circuit_open() -> bool:
        current = await client.get(
            f"/api/v1/tasks/analysis/{task_id}/status", headers=alice.headers
        )
        return bool(current.json()["error_code"] == "circuit_open")

    await wait_for(circuit_open)
    assert fake_ai.call_count() == 2  # the breaker opened after two failures: no third call
    fake_ai.reset(default=ok())
    final = await wait_for_status(client, alice, task_id)
    assert final["status"] == "success"
    assert final["retry_count"] == 2  # deferrals by the open breaker are not retries
    assert fake_ai.call_count() == 1  # one probe, which succeeded


async def test_a_claim_whose_answer_was_lost_is_adopted_by_that_claim_only(
    client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine, pg: asyncpg.Pool
) -> None:
    """Only the claim call that moved the row may take it as its own after losing the answer:
    not another run of the same job id on the same worker (arq starts one when its
    in-progress key expires), which would make two attempts behind one fence."""
    task_id = await new_task(client, alice)
    token = uuid.uuid4()
    claimed = await lifecycle.claim(pg, task_id, f"{task_id}:0", "worker-a", 30, claim_token=token)
    assert claimed is not None
    assert await lifecycle.adopt(pg, task_id, uuid.uuid4()) is None
    adopted = await lifecycle.adopt(pg, task_id, token)
    assert adopted is not None and adopted.attempt == claimed.attempt == 1

from __future__ import annotations

import httpx
from arq.constants import result_key_prefix
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analysis.conftest import (
    StartWorker,
    submit,
    task_status,
    upload_recording,
    wait_for,
    wait_for_status,
)
from tests.conftest import ApiUser
from tests.fake_ai import HANG, FakeAI


async def _record_status(engine: AsyncEngine, record_id: str) -> str:
    async with engine.connect() as connection:
        value = await connection.scalar(
            text("SELECT record_status FROM practice_records WHERE practice_record_id = :r"),
            {"r": record_id},
        )
    return str(value)


async def test_cancel_pending(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    engine: AsyncEngine,
    redis: Redis,
) -> None:
    _, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    response = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=alice.headers)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert await _record_status(engine, record_id) == "recorded"

    # A worker that starts now runs the queue and the reconciler: the task stays cancelled.
    await start_worker()

    async def job_finished() -> bool:
        return bool(await redis.exists(f"{result_key_prefix}{task_id}:0"))

    await wait_for(job_finished)
    assert (await task_status(client, alice, task_id))["status"] == "cancelled"
    assert fake_ai.call_count() == 0

    again = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=alice.headers)
    assert again.status_code == 409
    assert again.json()["error"]["status"] == "cancelled"


async def test_cancel_processing_closes_the_ai_request(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    engine: AsyncEngine,
) -> None:
    fake_ai.reset(default=HANG)
    _, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    await start_worker(ai_deadline_seconds=15.0)
    await wait_for_status(client, alice, task_id, {"processing"})

    async def ai_called() -> bool:
        return fake_ai.call_count() == 1

    await wait_for(ai_called)
    assert await _record_status(engine, record_id) == "ai_processing"
    response = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=alice.headers)
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True

    final = await wait_for_status(client, alice, task_id, within=10)
    assert final["status"] == "cancelled"
    assert await _record_status(engine, record_id) == "recorded"

    async def closed() -> bool:
        return fake_ai.calls[0].closed_by_client

    await wait_for(closed, within=5)
    assert fake_ai.call_count() == 1

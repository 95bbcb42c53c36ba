from __future__ import annotations

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis import queue
from tests.analysis.conftest import (
    StartWorker,
    record_status,
    submit,
    task_status,
    upload_recording,
    wait_for,
    wait_for_status,
)
from tests.conftest import ApiUser
from tests.fake_ai import HANG, FakeAI


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
    assert await record_status(engine, record_id) == "recorded"

    # A worker that starts now runs the queue and the reconciler: the task stays cancelled.
    await start_worker()

    async def job_gone() -> bool:  # aborted and removed by the worker
        return await redis.zscore(queue.QUEUE_NAME, f"{task_id}:0") is None

    await wait_for(job_gone)
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
    # A long lease: the cancel must come through arq's abort, not the next lease renewal.
    await start_worker(lease_seconds=60.0, ai_deadline_seconds=15.0)
    await wait_for_status(client, alice, task_id, {"processing"})

    async def ai_called() -> bool:
        return fake_ai.call_count() == 1

    await wait_for(ai_called)
    assert await record_status(engine, record_id) == "ai_processing"
    response = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=alice.headers)
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True

    final = await wait_for_status(client, alice, task_id, within=5)
    assert final["status"] == "cancelled"
    assert await record_status(engine, record_id) == "recorded"

    async def closed() -> bool:
        return fake_ai.calls[0].closed_by_client

    await wait_for(closed, within=5)
    assert fake_ai.call_count() == 1

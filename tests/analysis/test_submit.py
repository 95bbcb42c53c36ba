from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedded import EmbeddedRedis
from tests.analysis.conftest import StartWorker, submit, upload_recording, wait_for_status
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI


async def _task_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM ai_analysis_tasks")) or 0)


async def test_second_submit_returns_the_active_task(
    client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    _, record_id, _ = await upload_recording(client, alice)
    first = await submit(client, alice, record_id)
    second = await submit(client, alice, record_id)
    assert second["task_id"] == first["task_id"]
    assert await _task_count(engine) == 1


async def test_five_concurrent_posts_with_one_idempotency_key(
    client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    _, record_id, _ = await upload_recording(client, alice)
    answers = await asyncio.gather(
        *(submit(client, alice, record_id, **{"Idempotency-Key": "k-1"}) for _ in range(5))
    )
    assert len({answer["task_id"] for answer in answers}) == 1
    assert await _task_count(engine) == 1


async def test_idempotency_key_returns_the_same_task_after_it_finished(
    client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    _, record_id, _ = await upload_recording(client, alice)
    first = await submit(client, alice, record_id, **{"Idempotency-Key": "k-2"})
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE ai_analysis_tasks SET status = 'failure' WHERE task_id = :t"),
            {"t": first["task_id"]},
        )
    again = await submit(client, alice, record_id, **{"Idempotency-Key": "k-2"})
    assert again["task_id"] == first["task_id"] and again["status"] == "failure"
    fresh = await submit(client, alice, record_id)
    assert fresh["task_id"] != first["task_id"]


async def test_submit_needs_exactly_one_target(client: httpx.AsyncClient, alice: ApiUser) -> None:
    for body in ({}, {"practice_record_id": None}, {"parameters": {}}):
        response = await client.post(
            "/api/v1/tasks/analysis/submit", json=body, headers=alice.headers
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
    response = await client.post(
        "/api/v1/tasks/analysis/submit",
        json={
            "practice_record_id": "00000000-0000-0000-0000-000000000000",
            "parameters": {"target_text": "x" * 2001},
        },
        headers=alice.headers,
    )
    assert response.status_code == 422


async def test_session_submit_creates_one_task_per_waiting_record(
    client: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    session_id, first_record, _ = await upload_recording(client, alice)
    await upload_recording(client, alice, session_id=session_id)
    await upload_recording(client, alice, session_id=session_id)
    await submit(client, alice, first_record)

    response = await client.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_session_id": session_id},
        headers=alice.headers | {"Idempotency-Key": "session-1"},
    )
    assert response.status_code == 202, response.text
    created = response.json()["tasks"]
    assert len(created) == 2 and first_record not in {t["practice_record_id"] for t in created}

    repeat = await client.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_session_id": session_id},
        headers=alice.headers | {"Idempotency-Key": "session-1"},
    )
    assert {t["task_id"] for t in repeat.json()["tasks"]} == {t["task_id"] for t in created}
    nothing_left = await client.post(
        "/api/v1/tasks/analysis/submit",
        json={"practice_session_id": session_id},
        headers=alice.headers,
    )
    assert nothing_left.json()["tasks"] == []
    assert await _task_count(engine) == 3

    listing = await client.get(
        f"/api/v1/tasks/analysis/session/{session_id}/status", headers=alice.headers
    )
    assert listing.status_code == 200
    assert len(listing.json()["tasks"]) == 3
    assert {t["status"] for t in listing.json()["tasks"]} == {"pending"}


async def test_queue_position_counts_waiting_jobs(
    client: httpx.AsyncClient, alice: ApiUser
) -> None:
    session_id, record_id, _ = await upload_recording(client, alice)
    positions = [(await submit(client, alice, record_id))["queue_position"]]
    for _ in range(2):
        _, other, _ = await upload_recording(client, alice, session_id=session_id)
        positions.append((await submit(client, alice, other))["queue_position"])
    assert positions == [1, 2, 3]


async def test_redis_down_at_submit_then_reconciled(
    client: httpx.AsyncClient,
    alice: ApiUser,
    redis_server: EmbeddedRedis | None,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    assert redis_server is not None, "needs the embedded Redis (TEST_REDIS_URL is set)"
    _, record_id, _ = await upload_recording(client, alice)
    redis_server.stop()
    try:
        submitted = await submit(client, alice, record_id)
        assert submitted["status"] == "pending" and submitted["queue_position"] is None
    finally:
        redis_server.start()
    await start_worker()
    final = await wait_for_status(client, alice, submitted["task_id"])
    assert final["status"] == "success"
    assert fake_ai.call_count() == 1

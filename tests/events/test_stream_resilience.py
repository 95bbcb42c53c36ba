"""Streams under faults: Redis down while clients leave, states published out of order."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis.progress import stream_key, task_topic
from app.embedded import EmbeddedRedis
from tests.analysis.conftest import new_task, wait_for
from tests.conftest import ApiUser
from tests.events.conftest import read_events
from tests.servers import UvicornThread


async def test_a_client_leaving_while_redis_is_down_gives_its_slot_back(
    live_api: UvicornThread,
    http: httpx.AsyncClient,
    alice: ApiUser,
    redis_server: EmbeddedRedis | None,
) -> None:
    assert redis_server is not None, "needs the embedded Redis (TEST_REDIS_URL is set)"
    state = live_api.app.state.vocalborn  # type: ignore[attr-defined]
    task_id = await new_task(http, alice)
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    async with http.stream("GET", url, headers=alice.headers) as response:
        await read_events(response.aiter_lines(), limit=1)
        assert state.hub.listener_count == 1
        redis_server.stop()
    try:

        async def released() -> bool:
            return state.hub.listener_count == 0 and not state.limiter._open

        await wait_for(released, within=10)
    finally:
        redis_server.start()


async def test_the_opening_state_is_the_newest_of_stream_and_database(
    http: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine, redis: Redis
) -> None:
    task_id = await new_task(http, alice)
    assert await redis.xlen(stream_key(task_topic(task_id))) == 1  # the pending document
    async with engine.begin() as connection:  # its `cancelled` was never published
        await connection.execute(
            text("UPDATE ai_analysis_tasks SET status = 'cancelled', completed_at = now(),"
                 " updated_at = clock_timestamp() WHERE task_id = :t"),
            {"t": task_id},
        )  # fmt: skip
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    async with http.stream("GET", url, headers=alice.headers) as response:
        events = await read_events(response.aiter_lines())
    assert [e.json()["status"] for e in events] == ["cancelled"]


async def test_a_last_event_id_from_the_future_gets_the_current_state(
    http: httpx.AsyncClient, alice: ApiUser
) -> None:
    task_id = await new_task(http, alice)
    headers = alice.headers | {"Last-Event-ID": "99999999999999-0"}
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    async with http.stream("GET", url, headers=headers) as response:
        [event] = await read_events(response.aiter_lines(), limit=1)
    assert event.json()["status"] == "pending"

"""Live progress over SSE against uvicorn on loopback, with real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis.progress import stream_key, task_topic
from app.embedded import EmbeddedRedis
from tests.analysis.conftest import (
    TERMINAL,
    StartWorker,
    new_task,
    submit,
    task_status,
    upload_recording,
    wait_for,
    wait_for_status,
)
from tests.conftest import ApiUser
from tests.events.conftest import read_events
from tests.fake_ai import FakeAI, ok
from tests.servers import UvicornThread


def _events_url(task_id: str) -> str:
    return f"/api/v1/tasks/analysis/{task_id}/events"


async def _stream_ids(redis: Redis, task_id: str) -> list[str]:
    entries = await redis.xrange(stream_key(task_topic(task_id)))
    return [entry_id.decode() for entry_id, _ in entries]


async def test_client_sees_every_step_in_order(
    http: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    redis: Redis,
) -> None:
    fake_ai.reset(default=ok(latency=1.0))
    task_id = await new_task(http, alice)
    async with http.stream("GET", _events_url(task_id), headers=alice.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        await start_worker()
        events = await read_events(response.aiter_lines())  # ends when the server ends it

    documents = [event.json() for event in events]
    assert all(event.event == "status" for event in events)
    assert documents[0]["status"] == "pending" and documents[-1]["status"] == "success"
    assert [d["status"] for d in documents[1:-1]] == ["processing"] * (len(documents) - 2)
    progress = [d["progress"] for d in documents]
    assert progress == sorted(progress) and progress[-1] == 100
    steps = [d["current_step"]["code"] for d in documents]
    for step in ("uploading", "preprocessing", "feature_extraction", "scoring", "completed"):
        assert step in steps
    assert [event.id for event in events] == await _stream_ids(redis, task_id)
    final = await task_status(http, alice, task_id)
    assert documents[-1] | {"queue_position": None} == final | {"queue_position": None}


async def test_reconnect_with_last_event_id_gets_exactly_what_was_missed(
    http: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    redis: Redis,
) -> None:
    fake_ai.reset(default=ok(latency=3.0))
    task_id = await new_task(http, alice)
    await start_worker()
    async with http.stream("GET", _events_url(task_id), headers=alice.headers) as response:
        first = await read_events(response.aiter_lines(), limit=2)
    # The client drops and comes back while the task is still running: what it missed is
    # replayed from the stream, then live events follow, without overlap.
    assert (await task_status(http, alice, task_id))["status"] not in TERMINAL
    headers = alice.headers | {"Last-Event-ID": first[-1].id}
    async with http.stream("GET", _events_url(task_id), headers=headers) as response:
        rest = await read_events(response.aiter_lines())

    received = [event.id for event in first + rest]
    assert received == await _stream_ids(redis, task_id)  # no gap, no duplicate
    assert len(rest) >= 3 and rest[-1].json()["status"] == "success"


async def test_connect_after_the_end_gets_one_terminal_event(
    http: httpx.AsyncClient, alice: ApiUser, fake_ai: FakeAI, start_worker: StartWorker
) -> None:
    task_id = await new_task(http, alice)
    await start_worker()
    await wait_for_status(http, alice, task_id, TERMINAL)
    async with http.stream("GET", _events_url(task_id), headers=alice.headers) as response:
        events = await read_events(response.aiter_lines())
    assert len(events) == 1 and events[0].json()["status"] == "success"


async def test_terminal_task_without_a_stream_is_served_from_postgres(
    http: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine, redis: Redis
) -> None:
    task_id = await new_task(http, alice)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE ai_analysis_tasks SET status = 'failure', error_code = 'validation',"
                " updated_at = now() WHERE task_id = :t"
            ),
            {"t": task_id},
        )
    await redis.delete(stream_key(task_topic(task_id)))  # expired long ago
    async with http.stream("GET", _events_url(task_id), headers=alice.headers) as response:
        events = await read_events(response.aiter_lines())
    assert [e.json()["status"] for e in events] == ["failure"]
    assert events[0].json()["error_code"] == "validation"


async def test_progress_while_pubsub_was_down_arrives_through_the_heartbeat(
    http: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    redis_server: EmbeddedRedis | None,
) -> None:
    assert redis_server is not None, "needs the embedded Redis (TEST_REDIS_URL is set)"
    task_id = await new_task(http, alice)
    async with http.stream("GET", _events_url(task_id), headers=alice.headers) as response:
        lines = response.aiter_lines()
        first = await read_events(lines, limit=1)
        assert first[0].json()["status"] == "pending"
        redis_server.stop()
        try:
            # The worker's progress, written while Redis (and so pub/sub) was down.
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "UPDATE ai_analysis_tasks SET status = 'processing', progress = 40,"
                        " current_step = 'scoring', started_at = now(), updated_at = now()"
                        " WHERE task_id = :t"
                    ),
                    {"t": task_id},
                )
        finally:
            redis_server.start()
        later = await asyncio.wait_for(read_events(lines, limit=1), timeout=10)
    assert later[0].json()["progress"] == 40
    assert later[0].json()["current_step"]["code"] == "scoring"


async def test_two_hundred_clients_share_one_pubsub_connection(
    http: httpx.AsyncClient, alice: ApiUser, redis: Redis, live_api: UvicornThread
) -> None:
    session_id, record_id, _ = await upload_recording(http, alice)
    tasks = [(await submit(http, alice, record_id))["task_id"]]
    for _ in range(9):
        _, other, _ = await upload_recording(http, alice, session_id=session_id)
        tasks.append((await submit(http, alice, other))["task_id"])
    clients = 200
    opened = asyncio.Event()
    connected = 0

    async def client(n: int) -> str:
        nonlocal connected
        async with http.stream(
            "GET", _events_url(tasks[n % len(tasks)]), headers=alice.headers
        ) as r:
            lines = r.aiter_lines()  # kept referenced: a collected iterator closes the stream
            [event] = await read_events(lines, limit=1)
            connected += 1
            if connected == clients:
                opened.set()
            await opened_all.wait()  # hold the stream open until Redis has been inspected
            return str(event.json()["status"])

    opened_all = asyncio.Event()
    readers = [asyncio.create_task(client(n)) for n in range(clients)]
    await asyncio.wait_for(opened.wait(), timeout=60)

    listing = await redis.client_list()
    subscribed = [c for c in listing if int(c.get("sub", 0)) > 0 or int(c.get("psub", 0)) > 0]
    hub = live_api.app.state.vocalborn.hub  # type: ignore[attr-defined]
    assert hub.listener_count == clients
    assert len(subscribed) == 1, subscribed
    assert subscribed[0]["name"].startswith("vocalborn-hub-")
    assert int(subscribed[0]["sub"]) == len(tasks)
    opened_all.set()
    assert set(await asyncio.gather(*readers)) == {"pending"}

    async def all_released() -> bool:  # every disconnect ends its stream and unsubscribes
        return hub.listener_count == 0 and not await _subscribed(redis)

    await wait_for(all_released, within=10)


async def _subscribed(redis: Redis) -> list[dict[str, str]]:
    listing = await redis.client_list()
    return [c for c in listing if int(c.get("sub", 0)) > 0]

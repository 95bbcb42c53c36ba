"""The heartbeat's re-check against PostgreSQL and the stream's ids. The worker commits a state,
then publishes it: a re-check that falls between the two finds a state the stream does not show
yet. It must not send it under an id the client already has (its entry, arriving next, was then
dropped as not newer: the client saw one id twice and never the entry's own, and a reconnect
replayed it). The heartbeat here is an hour: the test ticks the hub itself, so every re-check
happens at a known point."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis.eta import Estimator
from app.analysis.progress import Publisher, stream_key, task_topic
from app.analysis.status import describe, status_columns
from tests.analysis.conftest import new_task
from tests.conftest import ApiUser
from tests.events.conftest import SseEvent, StartApi, read_events
from tests.servers import UvicornThread

WITHIN = 10.0  # far below the heartbeat: nothing here waits for it


@pytest.fixture
def api(start_live_api: StartApi) -> UvicornThread:
    return start_live_api(sse_heartbeat_seconds=3600.0)


@pytest.fixture
async def http(api: UvicornThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        yield client


@pytest.fixture
def publisher(redis: Redis, engine: AsyncEngine) -> Publisher:
    return Publisher(redis, Estimator(engine, 1))


def _tick(api: UvicornThread) -> None:
    """The hub's heartbeat tick, on the server's loop."""
    hub = api.app.state.vocalborn.hub
    hub._tasks[0].get_loop().call_soon_threadsafe(hub.tick_listeners)


async def _commit(engine: AsyncEngine, task_id: str, status: str, progress: int) -> RowMapping:
    """What the worker commits (its publish comes after): the row as RETURNING gives it."""
    async with engine.begin() as connection:
        result = await connection.execute(
            text(
                "UPDATE ai_analysis_tasks SET status = :status, progress = :progress,"
                " current_step = 'scoring', started_at = coalesce(started_at, now()),"
                " completed_at = CASE WHEN :ended THEN now() END,"
                " updated_at = clock_timestamp() WHERE task_id = :t"
                f" RETURNING {status_columns('ai_analysis_tasks')}"
            ),
            {"t": task_id, "status": status, "progress": progress, "ended": status != "processing"},
        )
        return result.mappings().one()


async def _heartbeat(lines: AsyncIterator[str]) -> None:
    """Read up to the next heartbeat comment; no event may come first. The stream's re-check
    runs after the server has sent the comment."""
    async for line in lines:
        if line.startswith(": heartbeat"):
            return
        assert not line, f"an event before the heartbeat: {line}"
    raise AssertionError("the stream ended")


async def _stream_ids(redis: Redis, task_id: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis.xrange(_key(task_id))]


def _key(task_id: str) -> str:
    return stream_key(task_topic(task_id))


def _progress(events: list[SseEvent]) -> list[tuple[str, int]]:
    return [(event.json()["status"], event.json()["progress"]) for event in events]


async def test_a_state_published_after_the_recheck_read_it_comes_with_its_own_id(
    api: UvicornThread,
    http: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    redis: Redis,
    publisher: Publisher,
) -> None:
    task_id = await new_task(http, alice)
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    async with asyncio.timeout(WITHIN):
        async with http.stream("GET", url, headers=alice.headers) as response:
            lines = response.aiter_lines()
            first = await read_events(lines, limit=1)
            row = await _commit(engine, task_id, "processing", 40)
            _tick(api)
            await _heartbeat(lines)  # its re-check reads the commit: the publish is not there
            await publisher.send_row(row)
            await publisher.send_row(await _commit(engine, task_id, "cancelled", 40))
            rest = await read_events(lines)  # ends with the terminal state
    events = first + rest
    assert [event.id for event in events] == await _stream_ids(redis, task_id)
    assert _progress(events) == [("pending", 0), ("processing", 40), ("cancelled", 40)]


async def test_a_state_whose_notice_was_lost_comes_from_the_stream_at_the_heartbeat(
    api: UvicornThread,
    http: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    redis: Redis,
    publisher: Publisher,
) -> None:
    task_id = await new_task(http, alice)
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    async with asyncio.timeout(WITHIN):
        async with http.stream("GET", url, headers=alice.headers) as response:
            lines = response.aiter_lines()
            first = await read_events(lines, limit=1)
            row = await _commit(engine, task_id, "processing", 40)
            document = await describe(row, redis, Estimator(engine, 1))
            await redis.xadd(_key(task_id), {"doc": document.model_dump_json()})  # no notice
            _tick(api)
            second = await read_events(lines, limit=1)
            await publisher.send_row(await _commit(engine, task_id, "cancelled", 40))
            rest = await read_events(lines)
    events = first + second + rest
    assert [event.id for event in events] == await _stream_ids(redis, task_id)
    assert _progress(events) == [("pending", 0), ("processing", 40), ("cancelled", 40)]


async def test_a_state_never_published_comes_from_postgres_a_heartbeat_later(
    api: UvicornThread,
    http: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    redis: Redis,
    publisher: Publisher,
) -> None:
    """The stream gets a whole heartbeat period to show a committed state; then it is sent
    from PostgreSQL, under the client's position (no entry holds it). Should its entry come
    after all, it is sent again with that entry's id."""
    task_id = await new_task(http, alice)
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    async with asyncio.timeout(WITHIN):
        async with http.stream("GET", url, headers=alice.headers) as response:
            lines = response.aiter_lines()
            [pending] = await read_events(lines, limit=1)
            row = await _commit(engine, task_id, "processing", 40)
            _tick(api)
            await _heartbeat(lines)  # its re-check: missing from the stream, given time
            _tick(api)
            await _heartbeat(lines)  # still missing: its publish was lost
            [from_database] = await read_events(lines, limit=1)
            await publisher.send_row(row)  # late after all
            [late] = await read_events(lines, limit=1)
    assert from_database.id == pending.id
    assert from_database.json()["progress"] == late.json()["progress"] == 40
    assert [pending.id, late.id] == await _stream_ids(redis, task_id)


async def test_an_opening_from_postgres_is_followed_by_the_entry_of_that_state(
    http: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    redis: Redis,
    publisher: Publisher,
) -> None:
    """A client that connects between a commit and its publish is sent the committed state at
    once, under the stream's last id; the entry that follows is sent too, so that its id is
    the client's from then on."""
    task_id = await new_task(http, alice)
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    row = await _commit(engine, task_id, "processing", 40)
    async with asyncio.timeout(WITHIN):
        async with http.stream("GET", url, headers=alice.headers) as response:
            lines = response.aiter_lines()
            first = await read_events(lines, limit=1)
            await publisher.send_row(row)
            await publisher.send_row(await _commit(engine, task_id, "cancelled", 40))
            rest = await read_events(lines)
    events = first + rest
    assert [event.id for event in events] == await _stream_ids(redis, task_id)
    assert _progress(events) == [("processing", 40), ("processing", 40), ("cancelled", 40)]

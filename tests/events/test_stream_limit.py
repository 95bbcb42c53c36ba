"""The per-user limit on open streams under concurrent opens: taken in one step before the
response starts, given back exactly once, whether or not the stream ever ran.

The openings are held together at PostgreSQL (the tasks table locked while they queue up), so
that many of them finish their ownership check at the same moment: the moment a check made
apart from the taking lets more than the limit through."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis.stream_auth import StreamLimiter
from tests.analysis.conftest import new_task, wait_for
from tests.conftest import ApiUser
from tests.events.conftest import StartApi, read_events
from tests.servers import UvicornThread, live_client

LIMIT = 5
CLIENTS = 100


@pytest.fixture
def limited_api(start_live_api: StartApi) -> UvicornThread:
    return start_live_api(max_streams_per_user=LIMIT)


@pytest.fixture
async def http(limited_api: UvicornThread) -> AsyncIterator[httpx.AsyncClient]:
    async with live_client(limited_api.url, connections=2 * CLIENTS, timeout=30) as client:
        yield client


def _limiter(server: UvicornThread) -> StreamLimiter:
    limiter: StreamLimiter = server.app.state.vocalborn.limiter
    return limiter


@contextlib.asynccontextmanager
async def _held_together(engine: AsyncEngine, waiting: int = 2 * LIMIT) -> AsyncIterator[None]:
    """The tasks table locked until at least `waiting` queries wait on it (the body starts the
    openings), then released at once."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        await connection.execute(text("LOCK TABLE ai_analysis_tasks IN ACCESS EXCLUSIVE MODE"))
        yield

        async def queued() -> bool:
            async with engine.connect() as observer:
                count = await observer.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                )
            return int(count or 0) >= waiting

        try:
            await wait_for(queued, within=30)
        finally:
            await transaction.commit()


def _released(server: UvicornThread, user: ApiUser) -> Any:
    async def condition() -> bool:
        return _limiter(server).open_streams(user.user_id) == 0

    return condition


@dataclass
class Burst:
    """What CLIENTS openings at once got: how many stream (held open until `release`), and
    what the others were answered."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    streaming: int = 0
    refused: list[Any] = field(default_factory=list)


async def _burst(
    server: UvicornThread,
    user: ApiUser,
    engine: AsyncEngine,
    client: Callable[[Burst], Awaitable[None]],
) -> Burst:
    """Exactly LIMIT stream and hold their places; once they are closed, every place is back."""
    burst = Burst()
    async with _held_together(engine):
        clients = [asyncio.create_task(client(burst)) for _ in range(CLIENTS)]

    async def all_answered() -> bool:
        for opening in clients:  # one that failed says why now, not as a wait run out
            if opening.done() and opening.exception() is not None:
                raise AssertionError("an opening failed") from opening.exception()
        answered = burst.streaming + len(burst.refused) == CLIENTS
        return answered or all(c.done() for c in clients)

    await wait_for(all_answered, within=60)
    assert burst.streaming == LIMIT
    assert _limiter(server).open_streams(user.user_id) == LIMIT
    burst.release.set()
    await asyncio.gather(*clients)
    await wait_for(_released(server, user), within=10)
    return burst


ROUNDS = 3  # the race is timing-dependent: several bursts, each on the places given back


async def test_concurrent_sse_opens_never_pass_the_limit(
    limited_api: UvicornThread, http: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    task_id = await new_task(http, alice)
    url = f"/api/v1/tasks/analysis/{task_id}/events"

    async def client(burst: Burst) -> None:
        async with http.stream("GET", url, headers=alice.headers) as response:
            if response.status_code != 200:
                await response.aread()
                burst.refused.append((response.status_code, response.json()))
                return
            lines = response.aiter_lines()  # kept referenced: a collected iterator closes it
            [event] = await read_events(lines, limit=1)
            assert event.json()["status"] == "pending"
            burst.streaming += 1
            await burst.release.wait()

    for _ in range(ROUNDS):
        burst = await _burst(limited_api, alice, engine, client)
        assert len(burst.refused) == CLIENTS - LIMIT
        for status, body in burst.refused:
            assert status == 429
            assert set(body) == {"error"} and body["error"]["code"] == "too_many_streams"
            assert isinstance(body["error"]["message"], str)


async def test_concurrent_websocket_opens_never_pass_the_limit(
    limited_api: UvicornThread, http: httpx.AsyncClient, alice: ApiUser, engine: AsyncEngine
) -> None:
    task_id = await new_task(http, alice)
    token = await http.post(f"/api/v1/tasks/analysis/{task_id}/stream-token", headers=alice.headers)
    ws_url = limited_api.url.replace("http", "ws") + f"/api/v1/tasks/ws/task/{task_id}"
    url = f"{ws_url}?stream_token={token.json()['stream_token']}"

    async def client(burst: Burst) -> None:
        async with websockets.connect(url) as ws:
            try:
                first = await ws.recv()
            except websockets.ConnectionClosed as closed:
                burst.refused.append(closed.rcvd.code if closed.rcvd else None)
                return
            assert '"pending"' in str(first)
            burst.streaming += 1
            await burst.release.wait()

    for _ in range(ROUNDS):
        burst = await _burst(limited_api, alice, engine, client)
        assert burst.refused == [4429] * (CLIENTS - LIMIT)


async def test_a_response_that_never_streams_gives_its_place_back(
    limited_api: UvicornThread, http: httpx.AsyncClient, alice: ApiUser
) -> None:
    """HEAD is answered with the stream's headers and no body: the stream never runs."""
    task_id = await new_task(http, alice)
    url = f"/api/v1/tasks/analysis/{task_id}/events"
    for _ in range(2 * LIMIT):
        response = await http.head(url, headers=alice.headers)
        assert response.status_code == 200
    await wait_for(_released(limited_api, alice), within=10)
    async with asyncio.timeout(10), http.stream("GET", url, headers=alice.headers) as response:
        assert response.status_code == 200
        await read_events(response.aiter_lines(), limit=1)

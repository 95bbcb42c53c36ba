"""The hub's lean Redis connection and the hub's own connection keeping, against real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from app.analysis.hub import Event, Hub
from app.analysis.progress import DOC_FIELD, channel, stream_key
from app.analysis.resp import RespConnection
from app.settings import Settings
from tests.analysis.conftest import wait_for

TOPIC = "task:resp-test"


@pytest.fixture
async def connection(settings: Settings, redis: Redis) -> AsyncIterator[RespConnection]:
    opened = await RespConnection.open(settings.redis_url, "vocalborn-test")
    yield opened
    await opened.aclose()


async def test_replies_arrive_in_order_and_an_error_reply_raises(
    connection: RespConnection,
) -> None:
    replies: list[Any] = []
    connection.send(
        [(("SET", "k", "v"), replies.append), (("GET", "k"), replies.append)],
    )
    assert await connection.call("INCR", "counter") == 1
    assert replies == [b"OK", b"v"]
    with pytest.raises(ResponseError):
        await connection.call("INCR", "k")  # not an integer
    assert await connection.call("PING") == b"PONG"  # the connection survived


async def test_the_url_selects_the_database_and_names_the_client(
    settings: Settings, redis: Redis
) -> None:
    url = settings.redis_url.rsplit("/", 1)[0] + "/5"
    other = Redis.from_url(url)
    connection = await RespConnection.open(url, "vocalborn-db5")
    try:
        await connection.call("SET", "in-five", "yes")
        assert await other.get("in-five") == b"yes"
        assert await redis.get("in-five") is None
        names = {client["name"] for client in await redis.client_list()}
        assert "vocalborn-db5" in names
    finally:
        await other.delete("in-five")
        await other.aclose()
        await connection.aclose()


async def test_a_killed_connection_fails_what_is_pending_and_resolves_closed(
    connection: RespConnection, redis: Redis
) -> None:
    client_id = await connection.call("CLIENT", "ID")
    pending: list[Any] = []
    connection.send([(("BLPOP", "never-filled", 0), pending.append)])
    await redis.client_kill_filter(_id=str(client_id))
    await asyncio.wait_for(connection.closed, timeout=5)
    assert len(pending) == 1 and isinstance(pending[0], RedisConnectionError)
    assert not connection.is_open
    with pytest.raises(RedisConnectionError):
        connection.send([(("PING",), pending.append)])


async def test_a_failing_consumer_does_not_take_the_connection_down(
    connection: RespConnection, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_reply: Any) -> None:
        raise RuntimeError("consumer bug")

    connection.send([(("PING",), broken)])
    assert await connection.call("ECHO", "still here") == b"still here"
    assert "consumer failed" in caplog.text


# -- the hub keeping its connections ---------------------------------------------------------
async def _announce(redis: Redis, progress: int) -> str:
    document = {"task_id": "resp-test", "status": "processing", "progress": progress}
    document["updated_at"] = f"2026-01-01T00:00:{progress:02d}Z"
    entry_id = await redis.xadd(stream_key(TOPIC), {DOC_FIELD: json.dumps(document)})
    await redis.publish(channel(TOPIC), entry_id)
    return entry_id.decode()


async def _next_event(hub_listener: Any) -> Event:
    while (event := await asyncio.wait_for(hub_listener.next(), timeout=5)) is None:
        pass  # a heartbeat tick
    assert isinstance(event, Event)
    return event


async def _hub_subscription(redis: Redis) -> str | None:
    """The id of the hub's pub/sub connection, once it is subscribed to TOPIC."""
    name = f"vocalborn-hub-{os.getpid()}"
    for client in await redis.client_list():
        if client["name"] == name and int(client.get("sub", 0)) == 1:
            return str(client["id"])
    return None


def _subscribed_anew(redis: Redis, before: str | None) -> Callable[[], Awaitable[bool]]:
    """A condition: the hub is subscribed again, on another connection than `before`."""

    async def condition() -> bool:
        return (await _hub_subscription(redis)) not in (None, before)

    return condition


async def _connected(hub: Hub) -> bool:
    return hub.connected


async def test_the_hub_resubscribes_after_its_connections_are_killed(
    settings: Settings, redis: Redis
) -> None:
    hub = Hub(settings.redis_url, queue_size=8, tick_seconds=60)
    await hub.start()
    try:
        await wait_for(lambda: _connected(hub), within=5)
        listener = await hub.join(TOPIC)
        first = await _announce(redis, 1)
        assert (await _next_event(listener)).id == first
        killed = await _hub_subscription(redis)
        for client in await redis.client_list():
            if client["name"].startswith("vocalborn-hub-"):
                await redis.client_kill_filter(_id=client["id"])
        await wait_for(_subscribed_anew(redis, killed), within=10)
        second = await _announce(redis, 2)
        assert (await _next_event(listener)).id == second
    finally:
        await hub.stop()


async def test_a_hub_whose_pings_go_unanswered_reconnects(
    settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.analysis.hub")
    hub = Hub(settings.redis_url, queue_size=8, tick_seconds=0.2)
    await hub.start()
    try:
        listener = await hub.join(TOPIC)
        paused = await wait_for(lambda: _hub_subscription(redis), within=5)
        await redis.execute_command("CLIENT", "PAUSE", 1000, "ALL")  # Redis stops answering

        await wait_for(_subscribed_anew(redis, paused), within=10)
        assert "did not answer PING" in caplog.text  # the PING check, not a dropped socket
        entry_id = await _announce(redis, 3)
        assert (await _next_event(listener)).id == entry_id
    finally:
        await hub.stop()


async def test_a_tick_right_after_a_loss_still_ticks_and_reconnects(
    settings: Settings, redis: Redis
) -> None:
    """The gap between a connection's loss and the keeper handling it: a heartbeat tick that
    falls into it must neither raise (that would end the ticks of every stream) nor send."""
    hub = Hub(settings.redis_url, queue_size=8, tick_seconds=60)
    await hub.start()
    try:
        listener = await hub.join(TOPIC)
        lost = await wait_for(lambda: _hub_subscription(redis), within=5)
        subscriber = hub._subscriber
        assert subscriber is not None
        subscriber.close()  # lost; the keeper has not run yet
        assert hub.connected and not subscriber.is_open
        hub._check_alive()  # what the tick does first: must not raise
        assert not hub.connected

        await wait_for(_subscribed_anew(redis, lost), within=10)
        entry_id = await _announce(redis, 4)
        assert (await _next_event(listener)).id == entry_id
    finally:
        await hub.stop()

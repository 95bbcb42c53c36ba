"""The hub's one pub/sub connection (redis-py's PubSub), against real Redis: notices carry the
document, and the hub keeps its connection (reconnects and resubscribes when it is killed,
when Redis stops answering PINGs, or when a tick falls between a loss and its handling)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from app.analysis.eta import Estimator
from app.analysis.hub import Event, Hub, Listener
from app.analysis.progress import DOC_FIELD, Publisher, channel, stream_key
from app.analysis.schemas import TaskStatusOut
from app.redis_client import RedisTarget
from app.settings import Settings
from tests.analysis.conftest import wait_for

TOPIC = "task:hub-test"


async def _announce(redis: Redis, progress: int) -> str:
    """A stream entry and its notice, as the publisher writes them: `<id> <document>`."""
    document = {"task_id": "hub-test", "status": "processing", "progress": progress}
    document["updated_at"] = f"2026-01-01T00:00:{progress:02d}Z"
    encoded = json.dumps(document).encode()
    entry_id: bytes = await redis.xadd(stream_key(TOPIC), {DOC_FIELD: encoded})
    await redis.publish(channel(TOPIC), entry_id + b" " + encoded)
    return entry_id.decode()


async def _next_event(listener: Listener, within: float = 5.0) -> Event:
    while (event := await asyncio.wait_for(listener.next(), timeout=within)) is None:
        pass  # a heartbeat tick
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


@pytest.fixture
async def hub(settings: Settings, redis: Redis) -> AsyncIterator[Hub]:
    running = Hub(settings.redis_url, queue_size=8, tick_seconds=60)
    await running.start()
    await wait_for(lambda: _connected(running), within=5)
    yield running
    await running.stop()


async def test_the_published_document_arrives_without_reading_the_stream(
    hub: Hub, redis: Redis, settings: Settings
) -> None:
    """The notice carries the document: the hub delivers it as the publisher sent it, even
    with no stream entry to read (deleted here), under the entry's id."""
    listener = await hub.join(TOPIC)
    document = TaskStatusOut.model_validate(
        {
            "task_id": "00000000-0000-0000-0000-000000000001",
            "practice_record_id": "00000000-0000-0000-0000-000000000002",
            "practice_session_id": None,
            "status": "processing",
            "progress": 40,
            "current_step": {"code": "feature_extraction", "label": "x", "index": 3},
            "total_steps": 5,
            "started_at": None,
            "completed_at": None,
            "estimated_remaining_time": None,
            "worker_name": "w",
            "retry_count": 0,
            "queue_position": None,
            "lane": "interactive",
            "error_code": None,
            "error_message": None,
            "cancel_requested": False,
            "updated_at": "2026-01-01T00:00:00Z",
        }
    )
    task_topic = f"task:{document.task_id}"
    task_listener = await hub.join(task_topic)
    publisher = Publisher(redis, Estimator.__new__(Estimator))  # publish() needs no ETA
    await publisher.publish(document)
    [(entry_id, _)] = await redis.xrange(stream_key(task_topic))
    event = await _next_event(task_listener)
    assert event.id == entry_id.decode()
    assert event.doc == document.model_dump_json().encode()
    assert event.frame.startswith(b"event: status\r\nid: " + entry_id + b"\r\n")

    await redis.delete(stream_key(TOPIC))  # nothing for the hub to read: the notice suffices
    entry = await _announce(redis, 7)
    await redis.delete(stream_key(TOPIC))
    assert (await _next_event(listener)).id == entry
    hub.leave(TOPIC, listener)
    hub.leave(task_topic, task_listener)


async def test_a_notice_without_its_document_is_left_to_the_recheck(hub: Hub, redis: Redis) -> None:
    """An older publisher's notice (the entry id alone) is not an event: the streams'
    heartbeat re-check finds that state; the next full notice is delivered."""
    listener = await hub.join(TOPIC)
    await redis.publish(channel(TOPIC), b"1-0")
    entry = await _announce(redis, 8)
    assert (await _next_event(listener)).id == entry
    assert listener.pop() is None


async def test_the_hub_resubscribes_after_its_connection_is_killed(hub: Hub, redis: Redis) -> None:
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
    pool: Any = hub._redis.connection_pool  # the lost connection went back to the pool
    assert len(pool._in_use_connections) == 1


async def _connected(hub: Hub) -> bool:
    return hub.connected


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


async def test_a_tick_right_after_a_loss_still_ticks_and_reconnects(hub: Hub, redis: Redis) -> None:
    """The gap between a connection's loss and the keeper handling it: a heartbeat check that
    falls into it must neither raise (that would end the ticks of every stream) nor send (nor
    reconnect behind the keeper's back)."""
    listener = await hub.join(TOPIC)
    lost = await wait_for(lambda: _hub_subscription(redis), within=5)
    pubsub: Any = hub._pubsub
    assert pubsub is not None and pubsub.connection is not None
    await pubsub.connection.disconnect(nowait=True)  # lost; the keeper has not run yet
    assert hub.connected and not pubsub.connection.is_connected
    await hub._check_alive()  # what the tick does first: must not raise
    assert not hub.connected
    assert not pubsub.connection.is_connected  # the PING did not reconnect it

    await wait_for(_subscribed_anew(redis, lost), within=10)
    entry_id = await _announce(redis, 4)
    assert (await _next_event(listener)).id == entry_id


async def test_the_hub_speaks_resp3(
    settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """REDIS_PROTOCOL=3 (from redis-py): notices arrive as pushes, PINGs are answered."""
    caplog.set_level(logging.WARNING, logger="app.analysis.hub")
    hub = Hub(RedisTarget(settings.redis_url, protocol=3), queue_size=8, tick_seconds=0.1)
    await hub.start()
    try:
        await wait_for(lambda: _connected(hub), within=5)
        listener = await hub.join(TOPIC)
        entry_id = await _announce(redis, 5)
        assert (await _next_event(listener)).id == entry_id
        ticks = 0
        while ticks < 5:  # five heartbeats, each PINGing Redis
            ticks += await listener.next() is None
        assert "did not answer PING" not in caplog.text and hub.connected
    finally:
        await hub.stop()

"""A worker's shutdown stops its heartbeat in bounded time, even with a heartbeat SET in flight
on a Redis that does not answer, and without cancelling that command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.analysis import queue
from app.settings import Settings
from tests.analysis.conftest import wait_for
from tests.faults import SwallowingConnection, command_held
from worker.main import shutdown, startup

WORKER = "paused-worker"


@pytest.fixture
async def paused(redis: Redis) -> AsyncIterator[Redis]:
    """`redis`, unpaused at the end whatever the test did."""
    yield redis
    await redis.execute_command("CLIENT", "UNPAUSE")


async def heartbeat_in_flight(redis: Redis) -> bool:
    """A client's SET is held by CLIENT PAUSE, i.e. sent and unanswered."""
    return await command_held(redis, "set")


async def stop_within(stopping: asyncio.Task[None], seconds: float) -> float | None:
    """How long the worker's shutdown (started as `stopping`) took, or None if it is still
    running after `seconds`: measured, not cut by a timeout, whose cancel could be swallowed."""
    started = time.monotonic()
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    if not done:
        return None
    stopping.result()
    return time.monotonic() - started


async def test_shutdown_lets_a_heartbeat_in_flight_finish(
    paused: Redis, worker_settings: Settings
) -> None:
    """Redis holds the heartbeat's SET for a second: shutdown waits for it (a bounded wait)
    rather than cancelling the command, so that beat is written."""
    ctx: dict[str, Any] = {"settings": worker_settings.model_copy(update={"worker_name": WORKER})}
    await paused.execute_command("CLIENT", "PAUSE", 1000, "WRITE")
    await startup(ctx)
    await wait_for(lambda: heartbeat_in_flight(paused), within=5)

    took = await stop_within(asyncio.create_task(shutdown(ctx)), 10)

    assert took is not None and took < 3
    assert ctx["heartbeat"].done()
    assert await paused.exists(queue.WORKER_KEY_PREFIX + WORKER) == 1


async def test_shutdown_is_bounded_when_the_heartbeat_cannot_be_cancelled(
    paused: Redis, worker_settings: Settings
) -> None:
    """Redis holds the heartbeat's SET for 30 s and the client swallows a cancel: shutdown
    still returns within a few seconds, and the heartbeat task has ended."""
    ctx: dict[str, Any] = {
        "settings": worker_settings.model_copy(update={"worker_name": WORKER}),
        "redis_connection_class": SwallowingConnection,
    }
    await paused.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
    SwallowingConnection.made.clear()
    await startup(ctx)
    await wait_for(lambda: heartbeat_in_flight(paused), within=5)
    assert len(SwallowingConnection.made) == 1

    heartbeat: asyncio.Task[None] = ctx["heartbeat"]
    stopping = asyncio.create_task(shutdown(ctx))
    try:
        took = await stop_within(stopping, 10)
        assert took is not None, "shutdown still running after 10 s"
        assert took < 5
        assert heartbeat.done()
    finally:  # after a failure: end the heartbeat loop, then the shutdown waiting for it
        await paused.execute_command("CLIENT", "UNPAUSE")
        for _ in range(20):
            if heartbeat.done():
                break
            heartbeat.cancel()
            await asyncio.wait({heartbeat}, timeout=0.5)
        await asyncio.wait({stopping}, timeout=10)

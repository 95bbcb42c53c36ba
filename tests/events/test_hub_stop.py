"""Stopping the hub while Redis does not answer (CLIENT PAUSE on the real Redis): `stop()`
returns at once, its loops ending on the stop event, never by a cancellation that would have to
reach a command in flight (a client may swallow it: redis-py #2028, #2551)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from app.analysis.hub import Hub
from app.settings import Settings
from tests.analysis.conftest import wait_for

ROUNDS = 100
STOP_WITHIN = 1.0  # far below the pause a round has left: a stop that waited on Redis shows
IN_FLIGHT_WITHIN = 2.0  # a round's wait for the hub's handshake to reach Redis
ROUND_SECONDS = IN_FLIGHT_WITHIN + STOP_WITHIN + 1.0  # the pause left when a round starts
PAUSE_MS = 6000


class _Pause:
    """CLIENT PAUSE ALL, renewed so that every round runs inside a pause with at least
    `ROUND_SECONDS` of it left. Redis holds CLIENT PAUSE and UNPAUSE too while it is paused
    (6.2), so a pause is renewed once the current one has ended, and a pause is left in place
    while it still covers a round (rounds take milliseconds: one pause covers many)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._until = -1.0  # time.monotonic() until which the pause surely holds

    async def cover(self, seconds: float) -> None:
        """A pause that holds for at least `seconds` more."""
        if time.monotonic() + seconds <= self._until:
            return
        await self._redis.ping()  # answered once the current pause, if any, has ended
        sent = time.monotonic()
        await self._redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        self._until = sent + PAUSE_MS / 1000  # Redis started it after `sent`

    @property
    def holding(self) -> bool:
        return time.monotonic() < self._until


def _awaiting_a_reply(task: asyncio.Task[None]) -> bool:
    """Whether `task` is suspended in redis-py's `read_response`: a command is in flight."""
    awaited: Any = task.get_coro()
    while awaited is not None and hasattr(awaited, "cr_await"):
        if awaited.cr_code.co_name == "read_response":
            return True
        awaited = awaited.cr_await
    return False


async def test_stop_returns_at_once_while_a_command_is_in_flight(
    settings: Settings, redis: Redis
) -> None:
    pause = _Pause(redis)
    try:
        for _ in range(ROUNDS):
            await pause.cover(ROUND_SECONDS)
            hub = Hub(settings.redis_url, queue_size=8, tick_seconds=0.01)
            await hub.start()
            loops = list(hub._tasks)
            keeper = loops[0]

            async def in_flight(keeper: asyncio.Task[None] = keeper) -> bool:
                return _awaiting_a_reply(keeper)  # its handshake, which Redis holds

            await wait_for(in_flight, within=IN_FLIGHT_WITHIN, interval=0.001)
            async with asyncio.timeout(STOP_WITHIN):
                await hub.stop()
            assert pause.holding  # the whole round ran while Redis held the handshake
            assert all(loop.done() for loop in loops)
            assert not any(loop.cancelled() for loop in loops)  # they saw the stop event
            assert not hub.connected
    finally:
        async with asyncio.timeout(PAUSE_MS / 1000 + 10):
            await redis.ping()  # answered when the pause ends


async def test_a_stopped_hub_stays_stopped(settings: Settings, redis: Redis) -> None:
    """After `stop()` nothing reconnects: the hub's connections are gone from Redis."""
    hub = Hub(settings.redis_url, queue_size=8, tick_seconds=0.01)
    await hub.start()

    async def connected() -> bool:
        return hub.connected

    await wait_for(connected, within=5)
    async with asyncio.timeout(STOP_WITHIN):
        await hub.stop()

    async def gone() -> bool:
        names = [client["name"] for client in await redis.client_list()]
        return not any(name.startswith("vocalborn-hub-") for name in names)

    await wait_for(gone, within=5)
    assert not hub.connected and hub.listener_count == 0

"""The global concurrency cap of an AI provider: a Redis semaphore whose slots are leases.

Each capped provider has a sorted set (`vocalborn:ai_slots:<name>`): member = the holder (one
attempt's AI call: `<worker>:<job id>:<random>`), score = when its lease ends (Unix ms, Redis's
own clock: TIME inside the scripts, so the workers' clocks never matter). Taking a slot first
reaps the expired holders, then adds one if fewer than the cap are left, and only if the
provider's circuit is not open, in one script; releasing removes the holder. A worker renews
all the slots it holds with one script per lease round (`Slots.renew`, called by the worker's
lease loop, worker/lease.py), each to one lease (LEASE_SECONDS) from then: a killed worker's
slots come back at most one lease after its last renewal, at the next try of anyone waiting.

A job that finds every slot taken waits in its worker, holding no database connection: it
looks again with a backoff (up to AI_SLOT_POLL_SECONDS), and a slot freed in its own worker
wakes the worker's longest waiter at once.

Written here (about 60 lines of it) because the maintained asyncio libraries do not fit:
redis-rate-limiters' AsyncSemaphore hands out tokens from a list whose keys expire as a whole
(a killed holder's token is lost until the whole semaphore expires) and raises after a fixed
wait; asyncio-advanced-semaphores says it is not for production and renews each holding with
a task of its own (ours ride the lease loop: one round trip per worker, however many slots);
redis-semaphore and aioredis-semaphore are synchronous or built on the retired aioredis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from app.ai_client.providers import slots_key
from app.metrics import AI_SLOTS_HELD, AI_SLOTS_IN_USE, AI_SLOTS_LOST

log = logging.getLogger(__name__)

# KEYS: slots, breaker's open key. ARGV: holder, lease (ms), cap.
# {1 taken | 0 full | -1 circuit open, holders now, the open key's PTTL (ms)}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local used = redis.call('ZCARD', KEYS[1])
local open_ms = redis.call('PTTL', KEYS[2])
if open_ms > 0 then return {-1, used, open_ms} end
if used >= tonumber(ARGV[3]) then return {0, used, 0} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return {1, used + 1, 0}
"""

# KEYS: the slots key of each holding (repeated as needed). ARGV: lease (ms), then the
# holders in the order of KEYS. Each holding's lease is set to one lease from now, whether it
# was still there (1) or had expired or vanished (0: added back, it is still in use).
_RENEW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local lease = tonumber(ARGV[1])
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('ZSCORE', key, ARGV[i + 1]) and 1 or 0
  redis.call('ZADD', key, now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * lease)
end
return found
"""


# KEYS: slots, breaker's open key. ARGV: cap. -1 when the circuit is open, else the slots
# free now (the cap less the holders whose lease has not ended).
_FREE = """
if redis.call('PTTL', KEYS[2]) > 0 then return -1 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local free = tonumber(ARGV[1]) - redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
if free < 0 then return 0 end
return free
"""


class Try(enum.Enum):
    """What one try for a provider's slot found."""

    TAKEN = 1
    FULL = 0
    CIRCUIT_OPEN = -1


@dataclass(frozen=True, slots=True)
class Tried:
    outcome: Try
    in_use: int  # the provider's live holders after the try
    open_for: float = 0.0  # seconds the provider's circuit stays open (CIRCUIT_OPEN)


class SlotPool:
    """One provider's slots: `cap` of them, shared by every worker."""

    def __init__(self, redis: Redis, provider: str, cap: int, breaker_open_key: str) -> None:
        self.provider = provider
        self.cap = cap
        self.key = slots_key(provider)
        self._redis = redis
        self._open_key = breaker_open_key
        self._in_use = AI_SLOTS_IN_USE.labels(provider)

    async def try_acquire(self, holder: str, lease: float) -> Tried:
        """Take a slot for `holder` for `lease` seconds if one is free and the provider's
        circuit is not open (one round trip). Raises on a Redis error."""
        script = self._redis.eval(
            _ACQUIRE, 2, self.key, self._open_key, holder, str(int(lease * 1000)), str(self.cap)
        )
        outcome, in_use, open_ms = await cast(Awaitable[list[int]], script)
        self._in_use.set(int(in_use))
        return Tried(Try(int(outcome)), int(in_use), int(open_ms) / 1000)

    async def free(self) -> int | None:
        """The slots free now; None while the provider's circuit is open (one round trip).
        Raises on a Redis error."""
        script = self._redis.eval(_FREE, 2, self.key, self._open_key, str(self.cap))
        free = int(await cast(Awaitable[int], script))
        return None if free < 0 else free

    async def release(self, holder: str) -> None:
        """Give `holder`'s slot back. Raises on a Redis error (the slot then expires with its
        lease)."""
        await cast(Awaitable[int], self._redis.zrem(self.key, holder))


class Slots:
    """The slots one worker holds, renewed together by its lease loop (`renew`), and the
    worker's jobs waiting for one (`wait`), woken when one of its own slots is freed."""

    def __init__(self, redis: Redis, lease: float) -> None:
        """`lease`: seconds a slot lasts after each renewal (LEASE_SECONDS)."""
        self.lease = lease
        self._redis = redis
        self._held: dict[str, SlotPool] = {}  # by holder
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def held(self) -> int:
        return len(self._held)

    async def try_acquire(self, pool: SlotPool, holder: str) -> Tried:
        """One try for a slot of `pool` (SlotPool.try_acquire); a slot taken is renewed from
        now on until `release`."""
        tried = await pool.try_acquire(holder, self.lease)
        if tried.outcome is Try.TAKEN:
            self._held[holder] = pool
            AI_SLOTS_HELD.labels(pool.provider).inc()
        return tried

    async def release(self, holder: str) -> None:
        """Give the slot back (best effort: one that cannot be removed expires with its
        lease) and wake this worker's longest waiter. Never raises."""
        pool = self._held.pop(holder, None)
        if pool is None:
            return
        AI_SLOTS_HELD.labels(pool.provider).dec()
        try:
            await pool.release(holder)
        except Exception as exc:
            log.warning("AI slot %s not released (%r); it expires with its lease", holder, exc)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def wait(self, seconds: float) -> None:
        """Wait up to `seconds` for a slot of this worker to be freed (then look again)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def renew(self) -> None:
        """Extend every slot held here to one lease from now, in one round trip; a slot found
        expired is added back (its call is still running) and counted (`vocalborn_ai_slots_
        lost`). Raises on a Redis error (the lease loop logs it and tries at its next round)."""
        held = list(self._held.items())
        if not held:
            return
        keys = [pool.key for _, pool in held]
        holders = [holder for holder, _ in held]
        script = self._redis.eval(_RENEW, len(keys), *keys, str(int(self.lease * 1000)), *holders)
        found = await cast(Awaitable[list[int]], script)
        for (holder, pool), there in zip(held, found, strict=True):
            if holder not in self._held:  # released while the renewal was in flight: the
                await pool.release(holder)  # renewal may have added it back after its ZREM
            elif not there:
                AI_SLOTS_LOST.labels(pool.provider).inc()
                log.warning("AI slot %s had expired; added back", holder)

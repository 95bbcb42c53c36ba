"""A circuit breaker for the AI service, shared by every worker through Redis.

Closed: calls go through and consecutive service failures are counted. After
`breaker_failure_threshold` of them it opens for `breaker_cooldown_seconds` (a key with that
TTL): no worker calls, jobs are deferred. When the key expires, one worker wins the probe slot
(SET NX) and calls; success closes the breaker, failure opens it again.

Hand-written (about 50 lines) because the maintained breakers (pybreaker, aiobreaker) keep
their state in process memory or in a synchronous Redis client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from app.metrics import BREAKER_UNREADABLE, CIRCUIT_OPEN

log = logging.getLogger(__name__)

PREFIX = "vocalborn:breaker:ai"
FAILURES = f"{PREFIX}:failures"
OPEN = f"{PREFIX}:open"
PROBE = f"{PREFIX}:probe"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_in: float = 0.0  # seconds until the breaker may let a call through


class CircuitBreaker:
    def __init__(self, redis: Redis, threshold: int, cooldown: float) -> None:
        self._redis = redis
        self._threshold = threshold
        self._cooldown_ms = int(cooldown * 1000)

    async def before_call(self) -> Decision:
        """Whether to call the AI service now. Never raises: a breaker whose state cannot be
        read (Redis down) lets the call through, logged and counted
        (`vocalborn_breaker_unreadable`): a Redis blip must not turn into a retry of work that
        has not failed."""
        try:
            return await self._decide()
        except Exception as exc:
            BREAKER_UNREADABLE.inc()
            log.warning("circuit breaker unreadable (%r); calling the AI service", exc)
            return Decision(True)

    async def _decide(self) -> Decision:
        open_ttl = await self._redis.pttl(OPEN)
        if open_ttl > 0:
            return Decision(False, open_ttl / 1000)
        failures = int(await self._redis.get(FAILURES) or 0)
        if failures < self._threshold:
            return Decision(True)
        # Half-open: one probe at a time.
        if await self._redis.set(PROBE, "1", px=self._cooldown_ms, nx=True):
            return Decision(True)
        return Decision(False, max(await self._redis.pttl(PROBE), 100) / 1000)

    async def record_success(self) -> None:
        """Close the breaker. Raises on a Redis error (the caller decides how hard to try)."""
        await self._redis.delete(FAILURES, PROBE, OPEN)
        CIRCUIT_OPEN.set(0)

    async def record_failure(self) -> None:
        """Count a failure of the AI service; open the breaker at the threshold. Raises on a
        Redis error."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(FAILURES)
            pipe.delete(PROBE)
            failures, _ = await pipe.execute()
        if int(failures) >= self._threshold:
            await self._redis.set(OPEN, "1", px=self._cooldown_ms)
            CIRCUIT_OPEN.set(1)

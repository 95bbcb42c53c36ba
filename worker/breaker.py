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
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

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


# KEYS: open, failures, probe. ARGV: threshold, cooldown (ms). One round trip: {allowed (0/1),
# retry in (ms), failures counted}.
_DECIDE = """
local open_ttl = redis.call('PTTL', KEYS[1])
if open_ttl > 0 then return {0, open_ttl, -1} end
local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
if failures < tonumber(ARGV[1]) then return {1, 0, failures} end
if redis.call('SET', KEYS[3], '1', 'PX', ARGV[2], 'NX') then return {1, 0, failures} end
return {0, math.max(redis.call('PTTL', KEYS[3]), 100), failures}
"""

# KEYS: failures, open, probe. ARGV: threshold, cooldown (ms). Counts a failure and, at the
# threshold, opens the breaker before the probe slot is freed, in one atomic step: with the
# slot freed first (a failed probe), another worker could read "closed, threshold reached, no
# probe" in between and send a second probe within the same cool-down. The failures counted.
_FAIL = """
local failures = redis.call('INCR', KEYS[1])
if failures >= tonumber(ARGV[1]) then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
redis.call('DEL', KEYS[3])
return failures
"""


class CircuitBreaker:
    def __init__(self, redis: Redis, threshold: int, cooldown: float) -> None:
        self._redis = redis
        self._threshold = threshold
        self._cooldown_ms = int(cooldown * 1000)
        # The last read found no failure counted, no probe and the breaker closed: a success
        # then has nothing to reset (one round trip less per task). A failure counted by
        # another worker since is reset by the next success whose read sees it.
        self._seen_clear = False

    async def before_call(self) -> Decision:
        """Whether to call the AI service now (one round trip). Never raises: a breaker whose
        state cannot be read (Redis down) lets the call through, logged and counted
        (`vocalborn_breaker_unreadable`): a Redis blip must not turn into a retry of work that
        has not failed."""
        try:
            return await self._decide()
        except Exception as exc:
            self._seen_clear = False
            BREAKER_UNREADABLE.inc()
            log.warning("circuit breaker unreadable (%r); calling the AI service", exc)
            return Decision(True)

    async def _decide(self) -> Decision:
        script = self._redis.eval(
            _DECIDE, 3, OPEN, FAILURES, PROBE, str(self._threshold), str(self._cooldown_ms)
        )
        allowed, retry_in_ms, failures = await cast(Awaitable[list[int]], script)
        self._seen_clear = failures == 0
        # Every worker's gauge follows what it last read, whoever opened or closed it.
        if not allowed:
            CIRCUIT_OPEN.set(1)
        elif failures < self._threshold:
            CIRCUIT_OPEN.set(0)
        return Decision(bool(allowed), 0.0 if allowed else int(retry_in_ms) / 1000)

    async def record_success(self) -> None:
        """Close the breaker: failures, probe and open state cleared, unless the last read
        found them clear already. Raises on a Redis error (the caller decides how hard to
        try)."""
        if self._seen_clear:
            return
        await self._redis.delete(FAILURES, PROBE, OPEN)
        self._seen_clear = True
        CIRCUIT_OPEN.set(0)

    async def record_failure(self) -> None:
        """Count a failure of the AI service; open the breaker at the threshold, in the same
        step as the probe slot is freed (one round trip). Raises on a Redis error."""
        self._seen_clear = False
        script = self._redis.eval(
            _FAIL, 3, FAILURES, OPEN, PROBE, str(self._threshold), str(self._cooldown_ms)
        )
        failures = await cast(Awaitable[int], script)
        if int(failures) >= self._threshold:
            CIRCUIT_OPEN.set(1)

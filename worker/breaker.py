"""A circuit breaker for the AI service, shared by every worker through Redis.

Closed: calls go through and consecutive service failures are counted. After
`breaker_failure_threshold` of them it opens for `breaker_cooldown_seconds` (a key with that
TTL): no worker calls, jobs are deferred. When the key expires, one worker wins the probe slot
(SET NX) and calls; success closes the breaker, failure opens it again.

"Consecutive" is judged per call: a success resets the count only if no failure was counted
since that call was let through (a total of failures, never reset, tells). A call admitted
before an outage that ends well during it (an analysis can last minutes) says nothing about
the service now: it no longer resets the failures of the calls that met the outage, which
kept the breaker closed while they piled up. And the count lasts `breaker_failure_window_seconds`
after the last failure: calls that end well are not always there to reset it (a success admitted
at no failures does not look), and sporadic failures minutes apart are no outage.

Each AI provider has its own breaker (`name`, app/ai_client/providers.py): its keys are
`vocalborn:breaker:ai:<name>:*`, the default provider's `vocalborn:breaker:ai:*` as before
providers came; its state is exported per provider (`vocalborn_ai_provider_circuit_open`), the
first provider's also as `vocalborn_ai_circuit_open`.

A clean read (closed, no failure counted) holds for `read_every` seconds
(BREAKER_READ_SECONDS) in the worker that made it: its calls in that time go through without
a round trip, as BullMQ renews all of a worker's locks in one call instead of one per job. A
breaker opened by another worker is therefore seen within that time; this worker's own failure
at once (it forgets the clean read).

Hand-written (about 70 lines) because the maintained breakers (pybreaker, aiobreaker) keep
their state in process memory or in a synchronous Redis client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from app.ai_client.providers import DEFAULT_PROVIDER, Keys, breaker_prefix
from app.metrics import BREAKER_UNREADABLE, CIRCUIT_OPEN, PROVIDER_CIRCUIT_OPEN

log = logging.getLogger(__name__)

PREFIX = breaker_prefix(DEFAULT_PROVIDER)
FAILURES = f"{PREFIX}:failures"  # consecutive failures
FAILED_EVER = f"{PREFIX}:failed_ever"  # every failure counted, never reset
OPEN = f"{PREFIX}:open"
PROBE = f"{PREFIX}:probe"


UNKNOWN = -1  # what a call was admitted with when the breaker could not be read


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a call may go through, and what the breaker had counted when it was let
    through (`failures`, `failed_ever`; UNKNOWN when unreadable): its later success resets the
    count only if nothing was counted since."""

    allowed: bool
    retry_in: float = 0.0  # seconds until the breaker may let a call through
    failures: int = UNKNOWN
    failed_ever: int = UNKNOWN


# KEYS: open, failures, probe, failed_ever. ARGV: threshold, cooldown (ms). One round trip:
# {allowed (0/1), retry in (ms), failures counted, failures ever}.
_DECIDE = """
local ever = tonumber(redis.call('GET', KEYS[4]) or '0')
local open_ttl = redis.call('PTTL', KEYS[1])
if open_ttl > 0 then return {0, open_ttl, -1, ever} end
local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
if failures < tonumber(ARGV[1]) then return {1, 0, failures, ever} end
if redis.call('SET', KEYS[3], '1', 'PX', ARGV[2], 'NX') then return {1, 0, failures, ever} end
return {0, math.max(redis.call('PTTL', KEYS[3]), 100), failures, ever}
"""

# KEYS: failures, open, probe, failed_ever. ARGV: threshold, cooldown (ms), window (ms).
# Counts a failure (the count expires a window after it) and, at the threshold, opens the
# breaker before the probe slot is freed, in one atomic step: with the slot freed first (a
# failed probe), another worker could read "closed, threshold reached, no probe" in between
# and send a second probe within the same cool-down. The failures counted.
_FAIL = """
redis.call('INCR', KEYS[4])
local failures = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if failures >= tonumber(ARGV[1]) then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
redis.call('DEL', KEYS[3])
return failures
"""

# KEYS: failures, probe, open, failed_ever. ARGV: failures ever when the call was let through
# (-1: unknown). Closes the breaker unless a failure was counted since; 1 if it did.
_SUCCEED = """
local ever = tonumber(redis.call('GET', KEYS[4]) or '0')
if tonumber(ARGV[1]) >= 0 and ever ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""


class CircuitBreaker:
    def __init__(
        self,
        redis: Redis,
        threshold: int,
        cooldown: float,
        window: float = 60.0,
        *,
        name: str = DEFAULT_PROVIDER,
        first: bool = True,
        read_every: float = 0.0,
    ) -> None:
        """`threshold` failures, each within `window` seconds of the next, open the breaker for
        `cooldown` seconds. `name`: the provider's; `first`: the preferred provider, whose
        state is also `vocalborn_ai_circuit_open`; `read_every`: how long (seconds) a clean
        read lets this worker's calls through without reading again (0: read at every call)."""
        self.name = name
        self.keys = Keys.of(name)
        self._gauges = [PROVIDER_CIRCUIT_OPEN.labels(name)] + ([CIRCUIT_OPEN] if first else [])
        self._redis = redis
        self._threshold = threshold
        self._cooldown_ms = int(cooldown * 1000)
        self._window_ms = int(window * 1000)
        self._read_every = read_every
        self._clean: Decision | None = None  # the last clean read, while it holds
        self._clean_until = 0.0  # time.monotonic() until which it holds
        self._failures_here = 0  # failures this worker counted: a read sent before one is stale
        # The read in flight and the failures counted when it was sent: concurrent calls share
        # it (single flight) while no failure was counted since.
        self._reading: tuple[asyncio.Future[Decision], int] | None = None

    async def before_call(self) -> Decision:
        """Whether to call the AI service now: one round trip, none while a clean read holds
        (`read_every`), shared by the calls that come while it is in flight (but for a
        half-open breaker's one probe: the call that sent the read takes it). Never raises: a
        breaker whose state cannot be read (Redis down) lets the call through, logged and
        counted (`vocalborn_breaker_unreadable`): a Redis blip must not turn into a retry of
        work that has not failed."""
        if self._clean is not None and time.monotonic() < self._clean_until:
            return self._clean
        try:
            read, sent_here = self._read()
            decision = await asyncio.shield(read)
            if not sent_here and decision.allowed and decision.failures >= self._threshold:
                # That read won the half-open breaker's one probe, for the call that sent it.
                decision = await self._decide()
            return decision
        except Exception as exc:
            BREAKER_UNREADABLE.inc()
            log.warning("circuit breaker unreadable (%r); calling the AI service", exc)
            return Decision(True)

    def _read(self) -> tuple[asyncio.Future[Decision], bool]:
        """The read in flight, or a new one when there is none or a failure was counted
        since it was sent (it may not see that failure); and whether it is new."""
        if self._reading is not None and self._reading[1] == self._failures_here:
            return self._reading[0], False
        read = asyncio.ensure_future(self._decide())
        reading = self._reading = (read, self._failures_here)

        def done(_: asyncio.Future[Decision]) -> None:
            if self._reading is reading:
                self._reading = None
            if not read.cancelled():
                read.exception()  # retrieved: every caller may have gone

        read.add_done_callback(done)
        return read, True

    async def _decide(self) -> Decision:
        keys = self.keys
        counted = self._failures_here
        script = self._redis.eval(
            _DECIDE,
            4,
            keys.open,
            keys.failures,
            keys.probe,
            keys.failed_ever,
            str(self._threshold),
            str(self._cooldown_ms),
        )
        allowed, retry_in_ms, failures, ever = await cast(Awaitable[list[int]], script)
        # Every worker's gauge follows what it last read, whoever opened or closed it.
        if not allowed:
            self._gauge(1)
        elif failures < self._threshold:
            self._gauge(0)
        if not allowed:
            self._clean = None
            return Decision(False, int(retry_in_ms) / 1000)
        decision = Decision(True, 0.0, int(failures), int(ever))
        # A read sent before this worker counted a failure (its answer came after) does not
        # hold: it may not have seen that failure.
        holds = decision.failures == 0 and self._read_every > 0 and counted == self._failures_here
        self._clean = decision if holds else None
        self._clean_until = time.monotonic() + self._read_every
        return decision

    async def record_success(self, admitted: Decision) -> None:
        """A call let through by `admitted` succeeded: close the breaker (failures, probe and
        open state cleared) unless a failure was counted since the call was let through. No
        round trip when nothing was counted then (anything counted since is not this call's
        to reset). Raises on a Redis error (the caller decides how hard to try)."""
        if admitted.failures == 0:
            return
        keys = self.keys
        script = self._redis.eval(
            _SUCCEED,
            4,
            keys.failures,
            keys.probe,
            keys.open,
            keys.failed_ever,
            str(admitted.failed_ever),
        )
        if await cast(Awaitable[int], script):
            self._gauge(0)

    async def record_failure(self) -> None:
        """Count a failure of the AI service; open the breaker at the threshold, in the same
        step as the probe slot is freed (one round trip); this worker's next call reads the
        breaker again (a read still on its way does not hold either). Raises on a Redis error."""
        self._clean = None
        self._failures_here += 1
        keys = self.keys
        script = self._redis.eval(
            _FAIL,
            4,
            keys.failures,
            keys.open,
            keys.probe,
            keys.failed_ever,
            str(self._threshold),
            str(self._cooldown_ms),
            str(self._window_ms),
        )
        failures = await cast(Awaitable[int], script)
        if int(failures) >= self._threshold:
            self._gauge(1)

    def _gauge(self, value: int) -> None:
        for gauge in self._gauges:
            gauge.set(value)

"""The AI providers of one worker (AI_PROVIDERS, app/ai_client/providers.py), each with its
client, its circuit breaker and, when capped, its slots (worker/slots.py), and the choice of
provider for a call (`Providers.acquire`):

- the first provider, in the order configured, whose circuit is closed and that has a free
  slot (an uncapped provider always has one) takes the call;
- when every provider with a closed circuit is full, the job waits for the first slot freed
  at any of them, holding no database connection (its lease is renewed meanwhile);
- when every provider's circuit is open, nothing is called: the task is deferred as before.

A provider is taken only once the breaker lets the call through (`before_call`, after the
slot, so that a half-open breaker's single probe goes to a job that holds a slot); a call the
breaker refuses gives its slot back at once.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

from redis.asyncio import Redis

from app.ai_client.client import AIClient, Connector
from app.ai_client.providers import AIProvider, cap_of
from app.metrics import AI_SLOT_WAIT
from app.settings import Settings
from worker.breaker import CircuitBreaker, Decision
from worker.slots import SlotPool, Slots, Try

log = logging.getLogger(__name__)

# The first look again after a full round comes this soon; each next one twice as late, up to
# AI_SLOT_POLL_SECONDS (jittered).
FIRST_POLL_SECONDS = 0.05


@dataclass
class Provider:
    config: AIProvider
    ai: AIClient
    breaker: CircuitBreaker
    slots: SlotPool | None  # None: uncapped

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Grant:
    """A provider taken for one call: its breaker's `decision` and the slot's `holder` (None
    for an uncapped provider), given back by `Providers.release`."""

    provider: Provider
    decision: Decision
    holder: str | None
    waited: float  # seconds spent waiting for the slot
    passed: list[str]  # why the better providers were passed over, in words


@dataclass(frozen=True, slots=True)
class AllOpen:
    """Every provider left to try has its circuit open; the first may close in `retry_in`
    seconds."""

    retry_in: float


class Providers:
    """The worker's providers, in order of preference."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        slots: Slots,
        connector: Connector | None = None,
    ) -> None:
        self.slots = slots
        self._poll = settings.ai_slot_poll_seconds
        self.all: list[Provider] = []
        for index, config in enumerate(settings.providers):
            breaker = CircuitBreaker(
                redis,
                settings.breaker_failure_threshold,
                settings.breaker_cooldown_seconds,
                settings.breaker_failure_window_seconds,
                name=config.name,
                first=index == 0,
                read_every=settings.breaker_read_seconds,
            )
            cap = cap_of(config, settings.ai_max_concurrency)
            pool = None if cap is None else SlotPool(redis, config.name, cap, breaker.keys.open)
            ai = AIClient(settings, provider=config, connector=connector)
            self.all.append(Provider(config, ai, breaker, pool))

    @property
    def first(self) -> Provider:
        return self.all[0]

    async def aclose(self) -> None:
        for provider in self.all:
            await provider.ai.aclose()

    async def acquire(
        self, owner: str, skip: Collection[str], on_wait: Callable[[], None]
    ) -> Grant | AllOpen:
        """A provider for one call of `owner` (`<worker>/<job id>`), skipping those named in
        `skip` (those this attempt already left); waits while every provider with a closed
        circuit is full (calling `on_wait` once, when the wait begins). Cancel it to stop
        waiting. Raises nothing of its own: a slot that cannot be tried for a Redis error
        counts as taken (the cap holds through a Redis outage; the job keeps waiting)."""
        started = time.monotonic()
        delay = FIRST_POLL_SECONDS
        waiting = False
        while True:
            candidates = [p for p in self.all if p.name not in skip]
            found = await self._one_round(owner, candidates)
            if isinstance(found, Grant):
                found.waited = time.monotonic() - started
                AI_SLOT_WAIT.observe(found.waited)
                return found
            if found is not None:
                return found  # every circuit open
            if not waiting:
                waiting = True
                on_wait()
            await self.slots.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._poll)

    async def _one_round(self, owner: str, candidates: list[Provider]) -> Grant | AllOpen | None:
        """One look at each candidate in order: a Grant, AllOpen, or None (some are full).
        A degraded provider is never taken while a better one is only full: it stands in for
        providers that are down, not for a busy one."""
        retry_in: float | None = None
        full = False
        passed: list[str] = []
        for provider in candidates:
            if provider.config.degraded and full:
                continue
            holder = None
            if provider.slots is not None:
                holder = f"{owner}:{uuid.uuid4().hex[:8]}"
                try:
                    tried = await self.slots.try_acquire(provider.slots, holder)
                except Exception as exc:
                    log.warning("AI slots of %s unreadable (%r); waiting", provider.name, exc)
                    full = True
                    continue
                if tried.outcome is Try.FULL:
                    full = True
                    continue
                if tried.outcome is Try.CIRCUIT_OPEN:
                    retry_in = _sooner(retry_in, tried.open_for)
                    passed.append(f"{provider.name}: circuit open")
                    continue
            try:
                decision = await provider.breaker.before_call()  # never raises but a cancel
            except BaseException:
                if holder is not None:  # never left held (and renewed) by nobody
                    await self.slots.release(holder)
                raise
            if decision.allowed:
                return Grant(provider, decision, holder, 0.0, passed)
            if holder is not None:
                await self.slots.release(holder)
            retry_in = _sooner(retry_in, decision.retry_in)
            passed.append(f"{provider.name}: circuit open")
        if full:
            return None
        return AllOpen(retry_in or 0.0)

    async def room(self) -> int | None:
        """How many more calls could start now, as the bound of a worker's pick: the free
        slots of the capped providers whose circuit is not open (a degraded one counts only
        when every better one is open, as `acquire` takes it). None for no bound: a provider
        it could use has no cap, every circuit is open (an attempt then meets it and is
        deferred, as without a cap), or Redis did not answer (`acquire` holds every cap)."""
        room = 0
        healthy = False  # a provider better than a degraded one has a closed circuit
        closed = False
        try:
            for provider in self.all:
                if provider.config.degraded and healthy:
                    continue
                if provider.slots is None:
                    return None
                free = await provider.slots.free()
                if free is None:  # circuit open
                    continue
                closed = True
                healthy = healthy or not provider.config.degraded
                room += free
        except Exception as exc:
            log.debug("AI room unknown (%r)", exc)
            return None
        return room if closed else None

    async def release(self, grant: Grant) -> None:
        """Give the grant's slot back (never raises)."""
        if grant.holder is not None:
            await self.slots.release(grant.holder)
            grant.holder = None


def _sooner(known: float | None, seconds: float) -> float:
    return seconds if known is None else min(known, seconds)

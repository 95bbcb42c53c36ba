"""The circuit breaker on a real Redis: one round trip to decide, failures counted by any worker
open it, and a success resets the count only if no failure was counted since its call was let
through."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.settings import Settings
from tests.analysis.conftest import wait_for
from tests.analysis.test_enqueue_script import _calls
from worker.breaker import FAILURES, OPEN, CircuitBreaker
from worker.providers import Providers
from worker.slots import Slots


async def test_a_success_resets_what_was_counted_before_its_call_and_nothing_more(
    redis: Redis, clean: None
) -> None:
    ours, theirs = CircuitBreaker(redis, 3, 60.0), CircuitBreaker(redis, 3, 60.0)
    calls = await _calls(redis, "eval")
    clear = await ours.before_call()
    assert clear.allowed
    assert await _calls(redis, "eval") - calls == 1  # one round trip
    evals = await _calls(redis, "eval")
    await ours.record_success(clear)
    assert await _calls(redis, "eval") == evals  # nothing was counted: nothing to reset

    # A call let through before a failure ends well after it: the failure stays counted (the
    # call says nothing about the service since).
    await theirs.record_failure()
    await ours.record_success(clear)
    assert await redis.get(FAILURES) == b"1"

    # A call let through after the failure, with none counted since, resets it.
    after = await ours.before_call()
    assert after.allowed and after.failures == 1
    await ours.record_success(after)
    assert await redis.get(FAILURES) is None

    # One let through at 1 failure, a second counted meanwhile: it resets nothing.
    await theirs.record_failure()
    meanwhile = await ours.before_call()
    await theirs.record_failure()
    await ours.record_success(meanwhile)
    assert await redis.get(FAILURES) == b"2"

    await theirs.record_failure()  # the third: open, for every worker
    decision = await ours.before_call()
    assert not decision.allowed and 0 < decision.retry_in <= 60
    assert await redis.exists(OPEN)
    assert _circuit_open() == 1  # our gauge too, though another worker opened it

    await redis.delete(OPEN, FAILURES)  # closed elsewhere (a probe's success on their side)
    assert (await ours.before_call()).allowed
    assert _circuit_open() == 0  # the alert clears on every worker


async def test_the_probe_success_closes_the_breaker(redis: Redis, clean: None) -> None:
    breaker = CircuitBreaker(redis, 2, 0.2)
    for _ in range(2):
        await breaker.record_failure()
    assert not (await breaker.before_call()).allowed
    await redis.delete(OPEN)  # the cool-down is over
    probe = await breaker.before_call()
    assert probe.allowed
    assert not (await breaker.before_call()).allowed  # one probe at a time
    await breaker.record_success(probe)
    assert not await redis.exists(OPEN) and await redis.get(FAILURES) is None
    assert (await breaker.before_call()).allowed


def _circuit_open() -> float | None:
    return REGISTRY.get_sample_value("vocalborn_ai_circuit_open")


async def test_failures_further_apart_than_the_window_never_open_it(
    redis: Redis, clean: None
) -> None:
    """Sporadic failures (each outliving the window) do not add up to an outage, though no
    success was there to reset them; failures within the window still open it."""
    sporadic = CircuitBreaker(redis, 2, 60.0, window=0.05)
    await sporadic.record_failure()
    assert 0 < await redis.pttl(FAILURES) <= 50
    await _until_gone(redis, FAILURES)
    await sporadic.record_failure()
    assert await redis.get(FAILURES) == b"1" and not await redis.exists(OPEN)

    close_together = CircuitBreaker(redis, 2, 60.0, window=60.0)
    await close_together.record_failure()
    assert await redis.exists(OPEN)


async def _until_gone(redis: Redis, key: str) -> None:
    """Poll until `key` has expired (Redis expires it; no fixed sleep)."""
    deadline = asyncio.get_running_loop().time() + 5
    while await redis.exists(key):
        assert asyncio.get_running_loop().time() < deadline, f"{key} never expired"
        await asyncio.sleep(0.01)


async def test_a_clean_read_holds_for_read_every_in_its_worker(redis: Redis, clean: None) -> None:
    """BREAKER_READ_SECONDS: after a clean read (closed, nothing counted) a worker's calls go
    through without a round trip while it holds; a breaker opened by another worker is seen
    once it lapses, this worker's own failure at its next call."""
    ours = CircuitBreaker(redis, 2, 60.0, read_every=60.0)
    theirs = CircuitBreaker(redis, 2, 60.0)
    first = await ours.before_call()
    assert first.allowed and first.failures == 0
    evals = await _calls(redis, "eval")
    for _ in range(3):
        assert await ours.before_call() == first
    assert await _calls(redis, "eval") == evals  # no round trip while the read holds

    for _ in range(2):
        await theirs.record_failure()  # opened elsewhere: not seen while the read holds
    assert (await ours.before_call()).allowed
    await ours.record_failure()  # our own failure: the next call reads again
    assert not (await ours.before_call()).allowed

    await redis.delete(OPEN, FAILURES)
    lapsing = CircuitBreaker(redis, 2, 60.0, read_every=0.05)
    assert (await lapsing.before_call()).allowed
    for _ in range(2):
        await theirs.record_failure()
    deadline = asyncio.get_running_loop().time() + 5
    while (await lapsing.before_call()).allowed:  # seen once the read lapses
        assert asyncio.get_running_loop().time() < deadline, "the clean read never lapsed"
        await asyncio.sleep(0.01)


async def test_read_every_zero_reads_at_every_call(redis: Redis, clean: None) -> None:
    breaker = CircuitBreaker(redis, 2, 60.0)
    await breaker.before_call()
    evals = await _calls(redis, "eval")
    await breaker.before_call()
    assert await _calls(redis, "eval") == evals + 1


class FirstAnswerHeld(Redis):
    """The real Redis, the answer to its first EVAL held back until `release` is set: a read
    Redis has made whose answer is still on its way (`answered` is set once it is made)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answered = asyncio.Event()
        self.release = asyncio.Event()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        result = await super().execute_command(*args, **options)
        if args[0] == "EVAL" and not self.answered.is_set():
            self.answered.set()
            await self.release.wait()
        return result


async def test_a_read_made_before_the_workers_own_failure_does_not_hold(
    redis: Redis, clean: None
) -> None:
    """A clean read whose answer comes back after this worker counted a failure (read before
    it) says nothing about the breaker now: the next call reads again, and sees the breaker
    that failure opened."""
    held = FirstAnswerHeld(connection_pool=redis.connection_pool)
    ours = CircuitBreaker(held, 1, 60.0, read_every=60.0)
    reading = asyncio.create_task(ours.before_call())
    await held.answered.wait()  # Redis made the read; its answer is on its way
    await ours.record_failure()  # the threshold: open
    held.release.set()
    read = await reading
    assert read.allowed and read.failures == 0  # the read was made before the failure
    assert not (await ours.before_call()).allowed


async def test_calls_that_come_while_a_read_is_in_flight_share_it(
    redis: Redis, clean: None
) -> None:
    """Single flight: a worker's calls that come while its read is in flight wait for that
    read, not one round trip each (all of a worker's tasks read at once when a clean read
    lapses); a call that comes after this worker counted a failure sends its own."""
    held = FirstAnswerHeld(connection_pool=redis.connection_pool)
    ours = CircuitBreaker(held, 1, 60.0)  # read_every 0: a call reads unless one is in flight
    evals = await _calls(redis, "eval")
    first = asyncio.create_task(ours.before_call())
    await held.answered.wait()  # Redis made the read; its answer is on its way
    joined = [asyncio.create_task(ours.before_call()) for _ in range(5)]
    await asyncio.sleep(0)  # one turn of the loop: each call has run to its wait
    await ours.record_failure()  # the threshold: open
    after = asyncio.create_task(ours.before_call())  # the read in flight was sent before
    held.release.set()
    decisions = await asyncio.gather(first, *joined)
    assert all(decision == decisions[0] and decision.allowed for decision in decisions)
    assert not (await after).allowed
    assert await _calls(redis, "eval") == evals + 3  # the shared read, the failure, `after`


async def test_a_shared_read_that_wins_the_probe_lets_only_its_sender_through(
    redis: Redis, clean: None
) -> None:
    """A half-open breaker lets one probe through. A read that wins it is the call's that
    sent it: the calls that shared the read ask again (and are refused), or every task of
    the worker would call a service that may still be down."""
    theirs = CircuitBreaker(redis, 1, 0.2)
    await theirs.record_failure()  # the threshold: open for 0.2 s

    async def half_open() -> bool:
        return not await redis.exists(OPEN)

    await wait_for(half_open, within=5)
    held = FirstAnswerHeld(connection_pool=redis.connection_pool)
    ours = CircuitBreaker(held, 1, 60.0)
    first = asyncio.create_task(ours.before_call())
    await held.answered.wait()  # the read that wins the probe, its answer on its way
    joined = [asyncio.create_task(ours.before_call()) for _ in range(3)]
    await asyncio.sleep(0)  # one turn of the loop: each call has run to its wait
    held.release.set()
    assert (await first).allowed
    assert not any(decision.allowed for decision in await asyncio.gather(*joined))


async def test_a_workers_breakers_hold_their_reads_for_breaker_read_seconds(
    redis: Redis, clean: None, settings: Settings
) -> None:
    """The worker builds its providers' breakers with BREAKER_READ_SECONDS (not the
    constructor's default 0, which would read Redis at every call)."""
    held = Providers(
        settings.model_copy(update={"breaker_read_seconds": 60.0}), redis, Slots(redis, 1.0)
    )
    try:
        breaker = held.first.breaker
        await breaker.before_call()
        evals = await _calls(redis, "eval")
        await breaker.before_call()
        assert await _calls(redis, "eval") == evals
    finally:
        await held.aclose()

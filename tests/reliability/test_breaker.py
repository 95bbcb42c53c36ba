"""The circuit breaker on a real Redis: one round trip to decide, a success resets only what a
read found counted, and failures counted by any worker open it."""

from __future__ import annotations

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from tests.analysis.test_enqueue_script import _calls
from worker.breaker import FAILURES, OPEN, CircuitBreaker


async def test_a_success_resets_what_any_worker_counted_and_nothing_more(
    redis: Redis, clean: None
) -> None:
    ours, theirs = CircuitBreaker(redis, 3, 60.0), CircuitBreaker(redis, 3, 60.0)
    calls = await _calls(redis, "eval")
    assert (await ours.before_call()).allowed
    assert await _calls(redis, "eval") - calls == 1  # one round trip
    deletes = await _calls(redis, "del")
    await ours.record_success()
    assert await _calls(redis, "del") == deletes  # nothing was counted: nothing to reset

    await theirs.record_failure()
    assert (await ours.before_call()).allowed  # 1 of 3
    await ours.record_success()
    assert await redis.get(FAILURES) is None  # the count this read saw is reset

    for _ in range(3):
        await theirs.record_failure()
    decision = await ours.before_call()
    assert not decision.allowed and 0 < decision.retry_in <= 60
    assert await redis.exists(OPEN)
    assert _circuit_open() == 1  # our gauge too, though another worker opened it

    await redis.delete(OPEN, FAILURES)  # closed elsewhere (a probe's success on their side)
    assert (await ours.before_call()).allowed
    assert _circuit_open() == 0  # the alert clears on every worker


def _circuit_open() -> float | None:
    return REGISTRY.get_sample_value("vocalborn_ai_circuit_open")

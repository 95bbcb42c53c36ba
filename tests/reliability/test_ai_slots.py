"""The AI concurrency cap's semaphore (worker/slots.py) on a real Redis: slots are leases shared
by every worker, an expired holder is reaped by the next try, a provider whose circuit is open
gives no slot, a renewal adds back a slot that vanished, a release wakes the worker's longest
waiter; and the providers' state as the admin stats read it."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from app.ai_client.providers import (
    DEFAULT_PROVIDER,
    AIProvider,
    Keys,
    provider_states,
    slots_key,
)
from app.settings import Settings
from worker.slots import SlotPool, Slots, Try

KEY = slots_key("p")


def _pool(redis: Redis, cap: int = 2) -> SlotPool:
    return SlotPool(redis, "p", cap, Keys.of("p").open)


async def test_the_cap_holds_across_workers_and_a_release_wakes_a_waiter(
    redis: Redis, clean: None
) -> None:
    one, two = Slots(redis, 30.0), Slots(redis, 30.0)
    pool = _pool(redis)
    assert (await one.try_acquire(pool, "w1/a")).outcome is Try.TAKEN
    assert (await two.try_acquire(pool, "w2/a")).outcome is Try.TAKEN
    full = await two.try_acquire(pool, "w2/b")
    assert full.outcome is Try.FULL and full.in_use == 2
    assert one.held == 1 and two.held == 1

    waiting = asyncio.create_task(two.wait(30.0))
    await asyncio.sleep(0)  # the waiter is queued (a yield, not a wait for time)
    started = time.monotonic()
    await two.release("w2/a")
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - started < 1.0  # woken, not timed out
    assert (await two.try_acquire(pool, "w2/b")).outcome is Try.TAKEN
    assert await redis.zcard(KEY) == 2


async def test_an_expired_holder_is_reaped_by_the_next_try(redis: Redis, clean: None) -> None:
    dead, live = Slots(redis, 0.05), Slots(redis, 30.0)  # `dead` never renews
    pool = _pool(redis, cap=1)
    assert (await dead.try_acquire(pool, "dead/a")).outcome is Try.TAKEN
    assert (await live.try_acquire(pool, "live/a")).outcome is Try.FULL
    deadline = time.monotonic() + 5
    while (tried := await live.try_acquire(pool, "live/a")).outcome is not Try.TAKEN:
        assert time.monotonic() < deadline, "the expired slot was never reaped"
        await asyncio.sleep(0.01)
    assert tried.in_use == 1
    assert await redis.zrange(KEY, 0, -1) == [b"live/a"]


async def test_no_slot_while_the_circuit_is_open(redis: Redis, clean: None) -> None:
    slots = Slots(redis, 30.0)
    await redis.set(Keys.of("p").open, "1", px=2000)
    tried = await slots.try_acquire(_pool(redis), "w/a")
    assert tried.outcome is Try.CIRCUIT_OPEN and 0 < tried.open_for <= 2.0
    assert await redis.zcard(KEY) == 0 and slots.held == 0


async def test_a_renewal_extends_every_slot_and_adds_back_one_that_vanished(
    redis: Redis, clean: None
) -> None:
    slots = Slots(redis, 30.0)
    pool = _pool(redis)
    await slots.try_acquire(pool, "w/a")
    await slots.try_acquire(pool, "w/b")
    before = dict(await redis.zrange(KEY, 0, -1, withscores=True))
    await redis.delete(KEY)  # Redis restarted empty, say: the calls still run
    await slots.renew()
    after = dict(await redis.zrange(KEY, 0, -1, withscores=True))
    assert set(after) == {b"w/a", b"w/b"}
    assert all(after[holder] >= before[holder] for holder in after)
    await slots.release("w/a")
    await slots.release("w/b")
    assert await redis.zcard(KEY) == 0


async def test_provider_states_for_the_admin_stats(redis: Redis, clean: None) -> None:
    capped = AIProvider(name="p", url="http://p.test", max_concurrency=2, model="m1")
    uncapped = AIProvider(name="q", url="http://q.test", max_concurrency=0, degraded=True)
    await Slots(redis, 30.0).try_acquire(_pool(redis), "w/a")
    await redis.set(Keys.of("q").failures, "5")  # at the threshold, cool-down over
    states = await provider_states(redis, [capped, uncapped], default_cap=4, threshold=5)
    assert [s.model_dump() for s in states] == [
        {
            "name": "p",
            "model": "m1",
            "degraded": False,
            "cap": 2,
            "in_use": 1,
            "breaker": "closed",
            "failures": 0,
            "open_for_seconds": None,
        },
        {
            "name": "q",
            "model": None,
            "degraded": True,
            "cap": None,
            "in_use": None,
            "breaker": "half_open",
            "failures": 5,
            "open_for_seconds": None,
        },
    ]
    await redis.set(Keys.of("p").open, "1", px=10_000)
    (state,) = await provider_states(redis, [capped], default_cap=4, threshold=5)
    assert state.breaker == "open" and 0 < (state.open_for_seconds or 0) <= 10


def test_providers_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    alone = Settings(ai_service_url="http://ai.test", ai_service_api_key="k", ai_max_concurrency=3)
    (default,) = alone.providers
    assert (default.name, default.url, default.key) == (DEFAULT_PROVIDER, "http://ai.test", "k")
    # The default provider keeps the breaker keys of the single breaker before providers.
    assert Keys.of(DEFAULT_PROVIDER).open == "vocalborn:breaker:ai:open"
    assert Keys.of("p").open == "vocalborn:breaker:ai:p:open"
    monkeypatch.setenv(
        "AI_PROVIDERS", '[{"name": "a", "url": "http://a"}, {"name": "b", "url": "http://b"}]'
    )
    listed = Settings()
    assert [p.name for p in listed.providers] == ["a", "b"]
    with pytest.raises(ValidationError, match="distinct"):
        Settings(ai_providers=(AIProvider(name="a", url="x"), AIProvider(name="a", url="y")))
    with pytest.raises(ValidationError):
        AIProvider(name="Not A Slug", url="http://a")

"""Failover's bookkeeping (worker/attempt.py), with an in-process worker, two fake AI services
over HTTP, real PostgreSQL and Redis: a provider's failure is counted once on its breaker,
however the attempt ends; a busy provider never hands its work to a degraded one."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from redis.asyncio import Redis

from app.ai_client.providers import AIProvider, Keys
from tests.analysis.conftest import StartWorker, new_task, wait_for_status
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok, status


@pytest.fixture
def second_ai() -> Iterator[FakeAI]:
    server = FakeAI().start()
    yield server
    server.stop()


async def test_a_failure_that_failed_over_is_counted_once(
    client: httpx.AsyncClient,
    alice: ApiUser,
    redis: Redis,
    fake_ai: FakeAI,
    second_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    """The first answers 500 (the attempt moves on, counting it on the first's breaker); the
    second's circuit is open, so the attempt ends with the first's error: that outcome must
    not count it on the first's breaker a second time."""
    fake_ai.reset(default=status(500))
    second_ai.reset(default=ok())
    await redis.set(Keys.of("second").open, b"1", px=60_000)
    providers = (
        AIProvider(name="first", url=fake_ai.url),
        AIProvider(name="second", url=second_ai.url),
    )
    task_id = await new_task(client, alice)
    await start_worker(ai_providers=providers, breaker_failure_threshold=50)
    await wait_for_status(client, alice, task_id, statuses={"retry", "failure"}, within=30)
    # Each call to the first counted once (its retry may have called it again meanwhile).
    failures = int(await redis.get(Keys.of("first").failures) or 0)
    assert second_ai.call_count() == 0
    assert failures == fake_ai.call_count() >= 1, (failures, fake_ai.call_count())


async def test_a_busy_provider_never_hands_its_work_to_a_degraded_one(
    client: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    second_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    """A 503 with Retry-After is backpressure from a healthy service: the task waits as told
    for the first, never analysed (acoustic-only) by the degraded fallback."""
    fake_ai.reset(default=status(503, retry_after="1"))
    second_ai.reset(default=ok())
    providers = (
        AIProvider(name="first", url=fake_ai.url),
        AIProvider(name="reference", url=second_ai.url, degraded=True),
    )
    task_id = await new_task(client, alice)
    await start_worker(ai_providers=providers)
    await wait_for_status(client, alice, task_id, statuses={"retry"}, within=30)
    assert fake_ai.call_count() >= 1 and second_ai.call_count() == 0

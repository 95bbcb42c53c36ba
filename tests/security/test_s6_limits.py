"""S6: per-user limits. Submits: SUBMIT_RATE_LIMIT per user across every API replica (shared
through Redis), 429 with Retry-After in the one error shape beyond it, nothing created, other
users unaffected; with Redis refusing or not answering, a submit is let through within the
pool's socket timeout, logged and counted. Open streams: 429 with Retry-After beyond
MAX_STREAMS_PER_USER."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import ConnectionPool, Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import redis_client
from app.embedded import free_port
from app.errors import TooManyRequests
from app.main import create_app
from app.ratelimit import SubmitRateLimit
from app.settings import Settings
from tests.analysis.conftest import new_task, upload_recording
from tests.conftest import ApiUser
from tests.events.conftest import StartApi, read_events
from tests.faults import IN_ATTEMPT, Fault, FaultPlan
from tests.security.conftest import figure

pytestmark = pytest.mark.scenario("S6")

RATE = 3


@contextlib.asynccontextmanager
async def _replica(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """One API replica (its own process state, the shared PostgreSQL and Redis)."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


async def _task_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM ai_analysis_tasks")) or 0)


async def test_s6_submit_rate_is_per_user_and_shared_by_replicas(
    settings: Settings, alice: ApiUser, bob: ApiUser, engine: AsyncEngine, clean: None
) -> None:
    limited = settings.model_copy(update={"submit_rate_limit": f"{RATE}/minute"})
    async with _replica(limited) as one, _replica(limited) as two:
        records = [(await upload_recording(one, alice))[1] for _ in range(RATE + 1)]
        _, bobs_record, _ = await upload_recording(one, bob)
        answers = []
        for index, record_id in enumerate(records):  # alternately on either replica
            replica = (one, two)[index % 2]
            answers.append(
                await replica.post(
                    "/api/v1/tasks/analysis/submit",
                    json={"practice_record_id": record_id},
                    headers=alice.headers,
                )
            )
        assert [a.status_code for a in answers] == [202] * RATE + [429]
        refused = answers[-1]
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        error = refused.json()["error"]
        assert error["code"] == "too_many_requests" and error["retry_after"] == retry_after
        assert await _task_count(engine) == RATE  # the refused submit created nothing

        # Another user's quota is their own.
        bobs = await two.post(
            "/api/v1/tasks/analysis/submit",
            json={"practice_record_id": bobs_record},
            headers=bob.headers,
        )
        assert bobs.status_code == 202, bobs.text
    figure(
        "S6",
        f"submit limit {RATE}/minute over 2 replicas: submit {RATE + 1} -> 429, "
        f"Retry-After {retry_after} s; another user unaffected",
    )


async def test_s6_open_streams_beyond_the_limit_get_429_with_retry_after(
    start_live_api: StartApi, alice: ApiUser
) -> None:
    server = start_live_api(max_streams_per_user=1, sse_heartbeat_seconds=2.5)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        task_id = await new_task(http, alice)
        url = f"/api/v1/tasks/analysis/{task_id}/events"
        async with http.stream("GET", url, headers=alice.headers) as first:
            lines = first.aiter_lines()
            await read_events(lines, limit=1)
            second = await http.get(url, headers=alice.headers)
    assert second.status_code == 429
    assert second.headers["Retry-After"] == str(math.ceil(2.5))
    assert second.json()["error"]["code"] == "too_many_streams"
    figure("S6", "open streams beyond MAX_STREAMS_PER_USER -> 429, Retry-After one heartbeat")


UNCHECKED = "vocalborn_submit_limit_unchecked_total"
SOCKET_TIMEOUT = 0.5  # the test pool's; the API's is redis_client.connect's (checked below)


@pytest.fixture
async def paused(redis: Redis) -> AsyncIterator[Redis]:
    """`redis`, unpaused at the end whatever the test did."""
    yield redis
    await redis.execute_command("CLIENT", "UNPAUSE")


def _unchecked() -> float:
    return REGISTRY.get_sample_value(UNCHECKED) or 0.0


def _let_through_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        "not checked" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )


async def test_s6_a_redis_that_does_not_answer_lets_a_submit_through_in_bounded_time(
    settings: Settings, paused: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis holds every script (CLIENT PAUSE WRITE): the check gives up at the pool's socket
    timeout and lets the submit through, logged and counted; a limit of 1 would refuse it."""
    pool = ConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
    )
    limit = SubmitRateLimit(pool, "1/minute")
    user = uuid.uuid4()
    try:
        await limit.check(user)  # the one allowed; connected, scripts loaded
        await paused.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        before = _unchecked()
        started = time.monotonic()
        await limit.check(user)  # refused if Redis answered: it raises TooManyRequests
        took = time.monotonic() - started
    finally:
        await pool.aclose()
    assert took < SOCKET_TIMEOUT + 2, took
    assert _unchecked() == before + 1
    assert _let_through_logged(caplog)

    # The API's own pool (what the limiter runs on) has both timeouts: no submit waits longer.
    api_pool = redis_client.connect(settings.redis_url).connection_pool
    try:
        for name in ("socket_timeout", "socket_connect_timeout"):
            assert 0 < api_pool.connection_kwargs[name] <= 5, name
    finally:
        await api_pool.aclose()
    figure("S6", f"Redis not answering: submit let through after {took:.2f} s, counted")


async def test_s6_a_redis_that_is_down_lets_a_submit_through_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = ConnectionPool.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=SOCKET_TIMEOUT
    )
    before = _unchecked()
    try:
        await SubmitRateLimit(pool, "1/minute").check(uuid.uuid4())
    finally:
        await pool.aclose()
    assert _unchecked() == before + 1
    assert _let_through_logged(caplog)


async def test_s6_a_refused_submit_whose_window_cannot_be_read_stays_refused(
    settings: Settings, redis: Redis
) -> None:
    """Redis counts the submit as one too many, then drops the connection before the second
    round trip (when the window's oldest submit leaves it): still a 429, Retry-After a whole
    window, not a submit let through."""
    plan = FaultPlan()
    pool = ConnectionPool.from_url(
        settings.redis_url, connection_class=plan.redis_connection_class()
    )
    limit = SubmitRateLimit(pool, "1/minute")
    user = uuid.uuid4()
    token = IN_ATTEMPT.set(True)  # the plan counts and targets this context's commands
    try:
        await limit.check(user)
        with pytest.raises(TooManyRequests):  # both scripts loaded, the window read
            await limit.check(user)
        evalshas = plan.calls.count("redis:EVALSHA")
        plan.fault = Fault("redis:EVALSHA", nth=evalshas + 2)  # the next window read
        with pytest.raises(TooManyRequests) as refused:
            await limit.check(user)
    finally:
        IN_ATTEMPT.reset(token)
        await pool.aclose()
    assert plan.fired
    assert refused.value.headers == {"Retry-After": "60"}

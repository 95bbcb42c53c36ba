"""A worker's leases are renewed together: one statement per round for all of them; a row that
another transaction holds locked is skipped for that round, not taken for lost; a lost task or
a requested cancel stops only its own attempt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import redis_client
from app.analysis import lifecycle, queue
from app.analysis.lifecycle import Claim
from app.analysis.progress import _PUBLISH_LUA
from app.db import create_pg_pool
from app.settings import Settings
from tests.analysis.conftest import StartWorker, new_task, wait_for, wait_for_status
from tests.analysis.test_enqueue_script import _calls
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok
from worker.lease import Lease, Leases, StopReason

LEASE = 0.8  # a round every 0.2 s


def _now(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def _claimed(client: httpx.AsyncClient, user: ApiUser, pg: asyncpg.Pool) -> Claim:
    task_id = await new_task(client, user)
    claimed = await lifecycle.claim(pg, task_id, f"{task_id}:0", "unit", lease=LEASE)
    assert claimed is not None
    return claimed


async def test_one_statement_renews_every_lease_and_a_locked_row_waits_its_turn(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    pg: asyncpg.Pool,
    worker_settings: Settings,
) -> None:
    sizes: list[int] = []  # how many leases each renewal statement carried

    class Watched(asyncpg.Connection):
        async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[Any]:
            if "lease_expires_at = now()" in query:
                sizes.append(len(args[0]))
            return await super().fetch(query, *args, **kwargs)

    watched = await create_pg_pool(worker_settings, connection_class=Watched)
    arq = redis_client.connect(worker_settings.redis_url)
    leases = Leases(LEASE, watched, arq)
    claims = [await _claimed(client, alice, pg) for _ in range(3)]
    held: list[Lease] = []
    try:
        async with engine.connect() as locker:
            await locker.execute(
                text("SELECT 1 FROM ai_analysis_tasks WHERE task_id = :t FOR UPDATE"),
                {"t": claims[0].task_id},
            )
            leases.start()
            started = time.monotonic()
            held = [leases.hold(c, f"{c.task_id}:{c.attempt}", started) for c in claims]
            await wait_for(_now(lambda: all(lease.deadline > started for lease in held[1:])))
            assert sizes and set(sizes) == {3}  # one statement per round, for all of them
            assert held[0].deadline == started and not held[0].stopped.done()  # skipped
            await locker.rollback()
        await wait_for(_now(lambda: held[0].deadline > started))  # its turn, once free
        assert not any(lease.stopped.done() for lease in held)
    finally:
        for lease in held:
            lease.close()
        await leases.stop()
        await arq.aclose(close_connection_pool=True)
        await watched.close()


async def test_a_lost_task_and_a_cancel_stop_only_their_own_attempt(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    pg: asyncpg.Pool,
    worker_settings: Settings,
) -> None:
    arq = redis_client.connect(worker_settings.redis_url)
    leases = Leases(LEASE, pg, arq)
    lost, cancelled, running = [await _claimed(client, alice, pg) for _ in range(3)]
    leases.start()
    held = [
        leases.hold(c, f"{c.task_id}:{c.attempt}", time.monotonic())
        for c in (lost, cancelled, running)
    ]
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE ai_analysis_tasks SET attempt = attempt + 1 WHERE task_id = :t"),
                {"t": lost.task_id},
            )
            await connection.execute(
                text("UPDATE ai_analysis_tasks SET cancel_requested_at = now() WHERE task_id = :t"),
                {"t": cancelled.task_id},
            )
        await wait_for(_now(lambda: held[0].stopped.done() and held[1].stopped.done()))
        assert held[0].stopped.result() is StopReason.LEASE_LOST
        assert held[1].stopped.result() is StopReason.CANCEL_REQUESTED
        renewed = held[2].deadline
        await wait_for(_now(lambda: held[2].deadline > renewed))  # still renewed
        assert not held[2].stopped.done()
    finally:
        for lease in held:
            lease.close()
        await leases.stop()
        await arq.aclose(close_connection_pool=True)


_PUBLISH_SCRIPT = _PUBLISH_LUA.encode()


class _PublishHeld(Connection):
    """A redis-py connection whose status-document publishes (EVAL of the publish script)
    wait until `released` is set: the claim's publish, held."""

    released: asyncio.Event

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = command if isinstance(command, list | tuple) else [command]
        if _PUBLISH_SCRIPT in b"".join(bytes(chunk) for chunk in chunks):
            await _PublishHeld.released.wait()
        await super().send_packed_command(command, check_health)


async def test_the_lease_is_renewed_from_the_claim_on(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    """Between the claim and the AI call come the claim's publish and the breaker's read; on
    a saturated event loop they can take seconds of the lease. Held here for three leases:
    the row's lease is renewed meanwhile (before, renewals began with the AI call and the
    lease ran out), and the analysis ends with one AI call."""
    _PublishHeld.released = asyncio.Event()
    fake_ai.reset(default=ok())
    task_id = await new_task(client, alice)
    await start_worker(ctx={"redis_connection_class": _PublishHeld}, lease_seconds=1.0)

    async def expires_at() -> Any:
        async with engine.connect() as connection:
            return await connection.scalar(
                text(
                    "SELECT lease_expires_at FROM ai_analysis_tasks"
                    " WHERE task_id = :t AND status = 'processing'"
                ),
                {"t": task_id},
            )

    claimed = await wait_for(expires_at)

    async def renewed_past_three_leases() -> bool:  # the claim took 1.25 s: renewed since
        current = await expires_at()
        return current is not None and (current - claimed).total_seconds() >= 3.0

    try:
        await wait_for(renewed_past_three_leases, within=10)
    finally:
        _PublishHeld.released.set()
    assert (await wait_for_status(client, alice, task_id))["status"] == "success"
    assert fake_ai.call_count() == 1


async def test_a_job_waiting_for_its_claim_keeps_its_in_progress_key(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    redis: Redis,
) -> None:
    """A pick holds its job's in-progress key for one lease, and the lease loop took the key
    over only once the claim had answered: a claim that waited longer (the database pool
    busy under load) let the key lapse, and another worker could pick the job meanwhile.
    Held here by a lock on the task's row: the key is extended past the pick's one lease
    while the claim waits, and the analysis ends with one AI call once the lock is gone."""
    fake_ai.reset(default=ok())
    task_id = await new_task(client, alice)
    key = in_progress_key_prefix + queue.job_id_for(task_id, 0)
    pick_ttl_ms = 1000  # the pick's: one lease

    async def extended() -> bool:  # a PTTL above the pick's: extended since the pick
        return bool(await redis.pttl(key) > pick_ttl_ms)

    async with engine.connect() as locker:
        await locker.execute(
            text("SELECT 1 FROM ai_analysis_tasks WHERE task_id = :t FOR UPDATE"),
            {"t": task_id},
        )
        await start_worker(lease_seconds=pick_ttl_ms / 1000)
        await wait_for(_picked(redis, key), within=10)
        await wait_for(extended, within=10)  # a renewal round every quarter lease
        await locker.rollback()
    assert (await wait_for_status(client, alice, task_id))["status"] == "success"
    assert fake_ai.call_count() == 1


def _picked(redis: Redis, key: str) -> Callable[[], Awaitable[bool]]:
    async def exists() -> bool:
        return bool(await redis.exists(key))

    return exists


async def test_a_claiming_jobs_key_is_extended_before_the_rows_renewal_answers(
    client: httpx.AsyncClient,
    alice: ApiUser,
    pg: asyncpg.Pool,
    worker_settings: Settings,
) -> None:
    """A job waiting for its claim has only its pick's one lease on its in-progress key, and
    the round extended it only once the rows' renewal had answered, which may wait half a
    lease for a connection (the pool busy: what makes a claim wait too): a pick just after
    a round began got its first extension up to a lease and a quarter later, the key gone
    meanwhile. Here the renewal statement waits until the round's timeout ends it: the
    claiming job's key is extended while it still waits."""
    lease = 6.0  # a round every 1.5 s; a renewal given up after 3 s
    renewed = asyncio.Event()

    class Busy(asyncpg.Connection):
        async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[Any]:
            if "lease_expires_at = now()" in query:
                try:
                    await asyncio.Event().wait()  # ended by the round's own timeout
                finally:
                    renewed.set()
            return await super().fetch(query, *args, **kwargs)

    busy = await create_pg_pool(worker_settings, connection_class=Busy)
    arq = redis_client.connect(worker_settings.redis_url)
    leases = Leases(lease, busy, arq)
    claimed = await _claimed(client, alice, pg)
    picked = "picked:0"  # a job of another task, waiting for its claim
    key = in_progress_key_prefix + picked
    held: Lease | None = None
    try:
        await arq.set(key, b"token", px=int(lease * 1000))  # the pick's: one lease
        with leases.claiming(picked):
            leases.start()
            held = leases.hold(claimed, f"{claimed.task_id}:{claimed.attempt}", time.monotonic())

            async def extended() -> bool:
                return bool(await arq.pttl(key) > lease * 1000)

            await wait_for(extended, within=lease)
            assert not renewed.is_set(), "extended only once the rows' renewal had answered"
    finally:
        if held is not None:
            held.close()
        await leases.stop()
        await arq.delete(key)
        await arq.aclose(close_connection_pool=True)
        await busy.close()


@pytest.fixture
async def claimed(client: httpx.AsyncClient, alice: ApiUser, pg: asyncpg.Pool) -> Claim:
    return await _claimed(client, alice, pg)


async def _round_trips(redis: Redis) -> None:
    """Three round trips to Redis, one after the other: what another client sent while the
    first was on its way has been run when the third is answered."""
    for _ in range(3):
        await redis.ping()


async def test_an_attempt_that_ends_before_the_next_round_costs_no_key_extension(
    claimed: Claim, pg: asyncpg.Pool, arq: ArqRedis, redis: Redis
) -> None:
    """An attempt's in-progress key follows its lease, and its closing hold is set, from the
    next round on (the pick made it live one lease): an attempt held, closed and released
    between two rounds sends no PEXPIRE (it sent two, one at its hold and one at its close,
    before the next round of every short attempt)."""
    leases = Leases(60.0, pg, arq)  # the first round after 15 s
    job_id = f"{claimed.task_id}:{claimed.attempt}"
    await arq.ping()  # connected: an extension would go out in the loop's next turn
    leases.start()
    try:
        before = await _calls(redis, "pexpire")
        lease = leases.hold(claimed, job_id, time.monotonic() + 60)
        await _round_trips(redis)
        lease.close(hold_for=90.0)
        await _round_trips(redis)
        lease.release()
        assert await _calls(redis, "pexpire") == before
    finally:
        await leases.stop()


async def test_a_closing_attempts_key_is_held_for_its_outcome(
    claimed: Claim, pg: asyncpg.Pool, arq: ArqRedis
) -> None:
    """A closing attempt's hold is set by the lease loop (from its next round): the key the
    pick made live one lease then lives as long as the hold, so that arq does not start the
    job again while the attempt commits its outcome."""
    leases = Leases(LEASE, pg, arq)
    job_id = f"{claimed.task_id}:{claimed.attempt}"
    key = in_progress_key_prefix + job_id
    await arq.set(key, b"token", px=int(LEASE * 1000))  # the pick's: one lease
    leases.start()
    try:
        lease = leases.hold(claimed, job_id, time.monotonic() + LEASE)
        lease.close(hold_for=30.0)  # its outcome and effects may take that long

        async def held() -> bool:
            return bool(await arq.pttl(key) > 10_000)

        await wait_for(held, within=5)
        lease.release()
    finally:
        await leases.stop()
        await arq.delete(key)

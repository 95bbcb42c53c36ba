"""A worker's leases are renewed together: one statement per round for all of them; a row that
another transaction holds locked is skipped for that round, not taken for lost; a lost task or
a requested cancel stops only its own attempt."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis import lifecycle, queue
from app.analysis.lifecycle import Claim
from app.db import create_pg_pool
from app.settings import Settings
from tests.analysis.conftest import new_task, wait_for
from tests.conftest import ApiUser
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
    arq = queue.connect(worker_settings.redis_url)
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
    arq = queue.connect(worker_settings.redis_url)
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

"""A worker's progress writes as one group commit (worker/relay.py `progress_writes`, against the
real PostgreSQL): concurrent writes share statements, each fenced by its own attempt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from app.ai_client.wire import AIResult
from app.analysis import lifecycle
from app.analysis.lifecycle import Claim, Reported
from app.db import create_pg_pool
from app.settings import Settings
from tests.analysis.conftest import new_task
from tests.conftest import ApiUser
from tests.fake_ai import AI_RESULT
from worker.relay import progress_writes


class _Counting(asyncpg.Connection):
    """Counts the statements its connections send (fetch and fetchrow: the relays' calls)."""

    sent = 0

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        type(self).sent += 1
        return await super().fetchrow(query, *args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        type(self).sent += 1
        return await super().fetch(query, *args, **kwargs)


@pytest.fixture
async def counted_pg(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, type[_Counting]]]:
    counting = type("Counting", (_Counting,), {"sent": 0})
    pool = await create_pg_pool(settings, connection_class=counting)
    yield pool, counting
    await pool.close()


async def _claimed(
    client: httpx.AsyncClient, user: ApiUser, pg: asyncpg.Pool, n: int
) -> list[Claim]:
    claims = []
    for _ in range(n):
        task_id = await new_task(client, user)
        claimed = await lifecycle.claim(pg, task_id, f"{task_id}:0", "worker-a", lease=30)
        assert claimed is not None
        claims.append(claimed)
    return claims


async def test_concurrent_writes_share_statements_and_each_gets_its_row(
    client: httpx.AsyncClient, alice: ApiUser, counted_pg: tuple[asyncpg.Pool, type[_Counting]]
) -> None:
    pg, counting = counted_pg
    claims = await _claimed(client, alice, pg, 12)
    writes = progress_writes(pg)
    before = counting.sent
    rows = await asyncio.gather(
        *(writes(Reported(claimed, 10 + n, "analyzing")) for n, claimed in enumerate(claims))
    )
    sent = counting.sent - before
    for n, (claimed, row) in enumerate(zip(claims, rows, strict=True)):
        assert row is not None
        assert (row["task_id"], row["attempt"]) == (claimed.task_id, claimed.attempt)
        assert (row["progress"], row["current_step"]) == (10 + n, "analyzing")
        assert row["practice_session_id"] == claimed.row["practice_session_id"]
    # One statement each would be twelve: the first goes alone, the rest together.
    assert sent <= 3, sent


async def test_a_grouped_write_is_fenced_by_its_own_attempt(
    client: httpx.AsyncClient, alice: ApiUser, pg: asyncpg.Pool
) -> None:
    live, lost, ended = await _claimed(client, alice, pg, 3)
    assert await lifecycle.succeed(pg, ended, AIResult.model_validate(AI_RESULT)) is not None
    # Another attempt takes `lost` over (its lease gone, as after a crash).
    async with pg.acquire() as connection:
        await connection.execute(
            "UPDATE ai_analysis_tasks SET lease_expires_at = now() - interval '1 second'"
            " WHERE task_id = $1",
            lost.task_id,
        )
    task_id = str(lost.task_id)
    taker = await lifecycle.claim(pg, task_id, f"{task_id}:1", "worker-b", lease=30)
    assert taker is not None and taker.attempt == lost.attempt + 1
    # `live` already further on: progress never goes back, the step is the newest.
    assert await lifecycle.report_progress(pg, live, 60, "scoring") is not None

    rows = await lifecycle.report_progress_many(
        pg,
        [
            Reported(live, 40, "analyzing"),
            Reported(lost, 80, "stale"),
            Reported(taker, 20, "analyzing"),
            Reported(ended, 90, "stale"),
        ],
    )
    assert rows[1] is None  # the lost attempt wrote nothing
    assert rows[3] is None  # nor the attempt whose task has ended
    assert rows[0] is not None and (rows[0]["progress"], rows[0]["current_step"]) == (
        60,
        "analyzing",
    )
    assert rows[2] is not None and (rows[2]["attempt"], rows[2]["progress"]) == (taker.attempt, 20)
    own = await lifecycle.own_row(pg, taker)
    assert own is not None and own["current_step"] == "analyzing"
    done = await lifecycle.own_row(pg, ended)
    assert done is not None and (done["status"], done["progress"]) == ("success", 100)

"""Waiting for an AI slot (worker/attempt.py, worker/providers.py), with an in-process worker,
the fake AI over HTTP, real PostgreSQL and Redis: the wait never counts against the AI call's
deadline, and a wait longer than AI_SLOT_WAIT_SECONDS sends the task back to the queue without
spending its retry budget."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analysis.conftest import FAST, StartWorker, new_task, wait_for_status
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok

DEADLINE = FAST["ai_deadline_seconds"]  # 4 s

ROWS = text(
    "SELECT status, retry_count, retry_counts FROM ai_analysis_tasks"
    " WHERE task_id = ANY(CAST(:ids AS uuid[]))"
)


async def test_the_wait_for_a_slot_never_counts_against_the_ai_deadline(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    """One slot, three tasks of 1.6 s each: the last waits 3.2 s for its slot and then calls
    for 1.6 s, past the 4 s deadline counted from its claim, within it counted from its slot."""
    latency = 1.6
    fake_ai.reset(default=ok(latency=latency))
    task_ids = [await new_task(client, alice) for _ in range(3)]
    await start_worker(
        ai_max_concurrency=1,
        worker_max_jobs=3,
        ai_slot_poll_seconds=0.1,
        ai_pick_within_cap=False,  # all three picked: two wait in the worker
    )
    done = await asyncio.gather(*(wait_for_status(client, alice, t, within=60.0) for t in task_ids))
    assert [d["status"] for d in done] == ["success"] * 3
    assert fake_ai.max_in_flight == 1
    calls = sorted(call.at for call in fake_ai.calls)
    assert calls[-1] - calls[0] >= 2 * latency * 0.9  # one after another: the last waited
    assert 2 * latency + latency > DEADLINE  # what the last one's claim-to-answer took
    async with engine.connect() as connection:
        rows = (await connection.execute(ROWS, {"ids": task_ids})).all()
    assert [(row.retry_count, row.retry_counts) for row in rows] == [(0, {})] * 3


@pytest.mark.parametrize("wait", [0.5, 0.0])  # 0: one look, then back to the queue
async def test_a_wait_past_ai_slot_wait_seconds_requeues_without_spending_budget(
    wait: float,
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    fake_ai.reset(default=ok(latency=2.0))
    task_ids = [await new_task(client, alice) for _ in range(2)]
    await start_worker(
        ai_max_concurrency=1,
        worker_max_jobs=2,
        ai_slot_poll_seconds=0.1,
        ai_slot_wait_seconds=wait,
        ai_pick_within_cap=False,  # both picked: the second waits in the worker
    )
    done = await asyncio.gather(*(wait_for_status(client, alice, t, within=60.0) for t in task_ids))
    assert [d["status"] for d in done] == ["success"] * 2
    assert fake_ai.max_in_flight == 1
    async with engine.connect() as connection:
        rows = (await connection.execute(ROWS, {"ids": task_ids})).all()
    assert all(row.retry_count == 0 for row in rows)
    waits = sorted(row.retry_counts.get("ai_slot_wait", 0) for row in rows)
    assert waits[0] == 0 and waits[1] >= 1, waits  # the second went back to the queue
    assert all(set(row.retry_counts) <= {"ai_slot_wait"} for row in rows)


STARTS = text(
    "SELECT started_at FROM ai_analysis_tasks WHERE task_id = ANY(CAST(:ids AS uuid[]))"
    " ORDER BY started_at"
)


async def test_a_worker_picks_an_attempt_only_when_a_slot_is_free(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    """One slot, a worker of three jobs, three tasks: each is claimed only once the call
    before it has ended, so that what waits for the AI service waits in the queue, in its
    fair order, not in the worker (which would claim all three at once)."""
    latency = 1.0
    fake_ai.reset(default=ok(latency=latency))
    task_ids = [await new_task(client, alice) for _ in range(3)]
    await start_worker(ai_max_concurrency=1, worker_max_jobs=3, ai_slot_poll_seconds=0.1)
    done = await asyncio.gather(*(wait_for_status(client, alice, t, within=60.0) for t in task_ids))
    assert [d["status"] for d in done] == ["success"] * 3
    async with engine.connect() as connection:
        starts = [row.started_at for row in await connection.execute(STARTS, {"ids": task_ids})]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= latency * 0.9 for gap in gaps), gaps

"""The commit path depends on PostgreSQL alone: a finished analysis survives Redis going down,
a short PostgreSQL outage, and a slow Redis while the attempt records its retry. Real servers,
really stopped and paused."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.analysis.conftest import (
    StartWorker,
    new_task,
    submit,
    upload_recording,
    wait_for,
    wait_for_status,
)
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok, status


async def _ai_called(fake_ai: FakeAI) -> None:
    """Until the AI service has been called once (the task is claimed and in its call)."""

    async def called() -> bool:
        return fake_ai.call_count() == 1

    await wait_for(called)


async def _task_row(engine: AsyncEngine, task_id: str) -> dict[str, object]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT status, error_code, crash_count, retry_count, retry_counts,"
                    " (SELECT count(*) FROM ai_analysis_results r WHERE r.task_id = t.task_id)"
                    " AS results FROM ai_analysis_tasks t WHERE task_id = :t"
                ),
                {"t": task_id},
            )
        ).one()
    return dict(row._mapping)


async def test_redis_down_when_the_ai_answers_keeps_the_analysis(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    redis_server: EmbeddedRedis | None,
) -> None:
    """Redis stops during the AI call and is still down when the result arrives: the result
    is committed (before: the breaker's bookkeeping failed first and the task went to `retry`
    with `resource`, and the AI was called again)."""
    if redis_server is None:
        pytest.skip("stops the embedded Redis (TEST_REDIS_URL is set)")
    fake_ai.reset(default=ok(latency=2.0))
    task_id = await new_task(client, alice)
    # arq polls once at start (it takes the job) and not again before the end of the test:
    # its own loop would stop at a failed poll, which is not what this test is about.
    await start_worker(worker_poll_delay_seconds=30.0)

    await _ai_called(fake_ai)
    await asyncio.to_thread(redis_server.stop)  # blocking: not on the loop the worker runs on
    try:

        async def settled() -> bool:
            return (await _task_row(engine, task_id))["status"] != "processing"

        await wait_for(settled, within=20)
        row = await _task_row(engine, task_id)
    finally:
        await asyncio.to_thread(redis_server.start)
    assert row["status"] == "success", row
    assert (row["error_code"], row["retry_count"], row["results"]) == (None, 0, 1)
    assert fake_ai.call_count() == 1


async def test_a_short_postgres_outage_at_the_final_write_costs_nothing(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
    postgres_server: EmbeddedPostgres | None,
    pg: asyncpg.Pool,
) -> None:
    """PostgreSQL stops during the AI call and comes back after the result arrived, well
    within the lease: the result is written, no crash is counted, the AI is called once
    (before: the progress write failed the call, the retry write failed too, the row stayed
    `processing` until the lease ran out, and the next claim counted a crash)."""
    if postgres_server is None:
        pytest.skip("stops the embedded PostgreSQL (TEST_DATABASE_URL is set)")
    fake_ai.reset(default=ok(latency=2.0))
    task_id = await new_task(client, alice)
    await start_worker(lease_seconds=8.0)

    await _ai_called(fake_ai)
    await asyncio.to_thread(postgres_server.stop)
    try:

        async def answered() -> bool:  # or, before the fix, the attempt gave up the call
            return fake_ai.calls[0].finished or fake_ai.calls[0].closed_by_client

        await wait_for(answered)
    finally:
        await asyncio.to_thread(postgres_server.start)
        await engine.dispose()  # the tests' own pooled connections died with the server
        await pg.expire_connections()
    final = await wait_for_status(client, alice, task_id, within=30)
    row = await _task_row(engine, task_id)
    assert final["status"] == "success", final
    assert (row["crash_count"], row["retry_count"], row["results"]) == (0, 0, 1)
    assert fake_ai.call_count() == 1


async def test_recording_a_retry_is_not_cut_short_by_the_lease_keeper(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    """A renewal that comes while the attempt records its retry must not take the row's
    `retry` for a lost lease and cancel the attempt in the middle of publishing and
    re-enqueueing (before: arq logged "cancelled, will be run again" and ran it again).
    The retry write is held on a lock of the recording's row until a renewal queues behind
    it on the task's row, then both go on at once."""
    fake_ai.reset(default=ok())
    fake_ai.then(status(502, latency=0.8))
    _, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    worker = await start_worker(lease_seconds=1.5, reconcile_interval_seconds=30)

    await _ai_called(fake_ai)
    async with engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM practice_records WHERE practice_record_id = :r FOR UPDATE"),
            {"r": record_id},
        )

        async def blocked(statement: str) -> bool:
            return bool(await _waiting_on_a_lock(engine, statement))

        await wait_for(partial(blocked, "status = 'retry'"))  # the 502's retry write
        with contextlib.suppress(AssertionError):  # the keeper may have stopped already
            await wait_for(partial(blocked, "lease_expires_at = now()"), within=1.5)
        await holder.rollback()
    final = await wait_for_status(client, alice, task_id, within=20)
    row = await _task_row(engine, task_id)
    assert final["status"] == "success", final
    assert row["retry_counts"] == {"network": 1} and row["crash_count"] == 0
    assert worker.jobs_retried == 0  # arq never had to run a cancelled attempt again
    assert fake_ai.call_count() == 2


async def _waiting_on_a_lock(engine: AsyncEngine, statement: str) -> int:
    """How many sessions wait on a lock while running a statement containing `statement`."""
    async with engine.connect() as connection:
        count = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND position(:s in query) > 0"
            ),
            {"s": statement},
        )
    return int(count or 0)


async def test_a_shutdown_while_the_outcome_is_written_keeps_it(
    client: httpx.AsyncClient,
    alice: ApiUser,
    engine: AsyncEngine,
    fake_ai: FakeAI,
    start_worker: StartWorker,
) -> None:
    """arq cancels the job (its shutdown after the grace, an abort, its timeout) while the
    success is being written: the write finishes, then the cancel goes on (before: the write
    was cancelled, the row stayed `processing`, and the next worker counted a crash and called
    the AI service again)."""
    fake_ai.reset(default=ok(latency=1.0))
    _, record_id, _ = await upload_recording(client, alice)
    task_id = (await submit(client, alice, record_id))["task_id"]
    worker = await start_worker()

    await _ai_called(fake_ai)  # claimed: the claim itself moves the record
    async with engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM practice_records WHERE practice_record_id = :r FOR UPDATE"),
            {"r": record_id},
        )

        async def success_write_waits() -> bool:
            return bool(await _waiting_on_a_lock(engine, "status = 'success'"))

        await wait_for(success_write_waits)
        closing = asyncio.create_task(worker.close())

        async def job_cancelled() -> bool:  # and still writing, or (before the fix) gone
            return all(task.cancelling() for task in worker.job_tasks.values())

        await wait_for(job_cancelled)
        await holder.rollback()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    await start_worker()  # would run it again if it had been left `processing`
    final = await wait_for_status(client, alice, task_id, within=20)
    row = await _task_row(engine, task_id)
    assert final["status"] == "success", final
    assert (row["crash_count"], row["results"]) == (0, 1)
    assert fake_ai.call_count() == 1

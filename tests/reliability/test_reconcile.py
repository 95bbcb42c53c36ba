"""The reconciler repairs every due row whatever the backlog, in a number of Redis round trips
that does not grow with it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import deserialize_job_raw, serialize_job
from arq.utils import timestamp_ms
from prometheus_client import REGISTRY
from redis.asyncio import Connection, ConnectionPool, Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis import queue
from app.settings import Settings
from tests.conftest import MakeUser
from worker import cron
from worker.main import shutdown, startup


@pytest.fixture
async def worker_ctx(worker_settings: Settings, clean: None) -> AsyncIterator[dict[str, Any]]:
    """arq's ctx as a worker's start-up builds it, without the worker: cron jobs are called
    directly."""
    ctx: dict[str, Any] = {"settings": worker_settings}
    await startup(ctx)
    yield ctx
    await shutdown(ctx)


class CountingConnection(Connection):
    """A redis-py connection that counts what it sends: one send per command, or per pipeline
    or transaction (sent at once, answered at once), so one per round trip."""

    round_trips = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        await super().send_packed_command(command, check_health)


def counting_client(url: str) -> ArqRedis:
    """Like redis_client.connect, over counting connections and without health-check PINGs."""
    pool = ConnectionPool.from_url(url, connection_class=CountingConnection)
    return ArqRedis(
        connection_pool=pool,
        job_serializer=queue.serialize,
        job_deserializer=queue.deserialize,
        default_queue_name=queue.QUEUE_NAME,
    )


BULK = text(
    """
    WITH s AS (
        INSERT INTO practice_sessions (user_id) VALUES (:user_id) RETURNING practice_session_id
    ), r AS (
        INSERT INTO practice_records (practice_session_id, audio_storage_key, audio_content_type,
                                      audio_size_bytes, record_status)
        SELECT s.practice_session_id, 'bulk/' || gen_random_uuid(), 'audio/wav', 1, 'ai_queued'
        FROM s, generate_series(1, :count)
        RETURNING practice_record_id
    )
    INSERT INTO ai_analysis_tasks (practice_record_id, user_id, status, attempt, created_at,
                                   next_attempt_at, lease_expires_at, job_id, enqueued_at)
    SELECT practice_record_id, :user_id, CAST(:status AS text), :attempt,
           now() - make_interval(secs => :age), now() - make_interval(secs => :overdue),
           CASE WHEN CAST(:status AS text) = 'processing' THEN now() - interval '1 second' END,
           CASE WHEN CAST(:status AS text) = 'processing' THEN 'elsewhere:0' END, now()
    FROM r
    RETURNING task_id, attempt
    """
)


async def insert_tasks(
    engine: AsyncEngine,
    user_id: uuid.UUID,
    count: int,
    *,
    status: str = "pending",
    attempt: int = 0,
    age: float = 3600.0,
) -> list[tuple[uuid.UUID, int]]:
    """`count` task rows of one status in one statement; all of one age (ties in created_at)."""
    params = {"user_id": user_id, "count": count, "status": status, "attempt": attempt}
    async with engine.begin() as connection:
        rows = await connection.execute(BULK, params | {"age": age, "overdue": 1.0})
        return [(row.task_id, row.attempt) for row in rows]


async def enqueue_in_bulk(redis: Redis, tasks: list[tuple[uuid.UUID, int]]) -> None:
    """Queue these tasks' jobs exactly as arq's enqueue_job writes them, 1,000 a round trip."""
    now = timestamp_ms()
    for start in range(0, len(tasks), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for task_id, attempt in tasks[start : start + 1000]:
                job_id = queue.job_id_for(task_id, attempt)
                job = serialize_job(
                    queue.ANALYZE_FUNCTION,
                    (str(task_id),),
                    {},
                    None,
                    now,
                    serializer=queue.serialize,
                )
                pipe.psetex(job_key_prefix + job_id, 86_400_000, job)
                pipe.zadd(queue.QUEUE_NAME, {job_id: now})
            await pipe.execute()


async def lost_tasks(engine: AsyncEngine, user_id: uuid.UUID) -> list[tuple[uuid.UUID, int]]:
    """Three rows due for repair whose jobs arq does not hold, each newer than every other row:
    a due retry, an expired lease and a pending row past the grace."""
    retry = await insert_tasks(engine, user_id, 1, status="retry", attempt=1, age=0.0)
    expired = await insert_tasks(engine, user_id, 1, status="processing", attempt=1, age=0.0)
    pending = await insert_tasks(engine, user_id, 1, age=10.0)
    return retry + expired + pending


async def assert_queued(redis: Redis, tasks: list[tuple[uuid.UUID, int]]) -> None:
    for task_id, attempt in tasks:
        job_id = queue.job_id_for(task_id, attempt)
        assert await redis.zscore(queue.QUEUE_NAME, job_id) is not None, job_id
        raw = await redis.get(job_key_prefix + job_id)
        assert raw is not None, job_id
        function, args, kwargs, _, _ = deserialize_job_raw(raw, deserializer=queue.deserialize)
        assert (function, args, kwargs) == (queue.ANALYZE_FUNCTION, [str(task_id)], {})


async def test_lost_tasks_behind_a_large_backlog_are_enqueued_in_round_trips_per_page(
    worker_ctx: dict[str, Any],
    worker_settings: Settings,
    engine: AsyncEngine,
    redis: Redis,
    make_user: MakeUser,
) -> None:
    user = await make_user()
    counting = counting_client(worker_settings.redis_url)
    ctx = worker_ctx | {"deps": dataclasses.replace(worker_ctx["deps"], arq=counting)}
    try:
        await cron.reconcile(ctx)  # opens the connection: not part of what is counted

        async def tick() -> tuple[dict[str, int], int]:
            before = CountingConnection.round_trips
            outcome = await cron.reconcile(ctx)
            return outcome, CountingConnection.round_trips - before

        queued = await insert_tasks(engine, user.user_id, 100)
        await enqueue_in_bulk(redis, queued)
        lost = await lost_tasks(engine, user.user_id)
        small, small_trips = await tick()
        assert small == {"due": 103, "enqueued": 3}
        await assert_queued(redis, lost)

        queued = await insert_tasks(engine, user.user_id, 9_900)
        await enqueue_in_bulk(redis, queued)
        lost = await lost_tasks(engine, user.user_id)
        large, large_trips = await tick()
        # The first tick's lost rows are now held by arq, like the backlog.
        assert large == {"due": 10_006, "enqueued": 3}
        await assert_queued(redis, lost)
        assert await redis.zcard(queue.QUEUE_NAME) == 10_006

        again, _ = await tick()
        assert again == {"due": 10_006, "enqueued": 0}
    finally:
        await counting.aclose(close_connection_pool=True)

    # 100 times the rows, the same round trips: one pipelined check, one enqueue script.
    print(f"reconcile round trips: {small_trips} for 103 due rows, {large_trips} for 10,006")
    assert small_trips <= 8
    assert large_trips == small_trips


async def test_more_due_rows_than_a_page_all_enqueued_in_one_tick(
    worker_ctx: dict[str, Any], engine: AsyncEngine, redis: Redis, make_user: MakeUser
) -> None:
    """2,500 lost rows created at the same instant (ties for the keyset's created_at): each is
    read once, none skipped, and all are enqueued by one tick."""
    user = await make_user()
    tasks = await insert_tasks(engine, user.user_id, 2_500)
    repairs = _repairs("enqueued")
    outcome = await cron.reconcile(worker_ctx)
    assert outcome == {"due": 2_500, "enqueued": 2_500}
    assert _repairs("enqueued") - repairs == 2_500  # vocalborn_reconcile_repairs_total
    await assert_queued(redis, tasks)
    assert await redis.zcard(queue.QUEUE_NAME) == 2_500


def _repairs(kind: str) -> float:
    value = REGISTRY.get_sample_value("vocalborn_reconcile_repairs_total", {"kind": kind})
    return value or 0.0


async def test_an_expired_lease_whose_claiming_job_arq_still_runs_is_left_to_its_attempt(
    worker_ctx: dict[str, Any], engine: AsyncEngine, redis: Redis, make_user: MakeUser
) -> None:
    """An attempt commits its outcome after its lease's end when the database pool is busy
    (its in-progress key is held for that); the reconciler enqueued the next attempt's job
    meanwhile, whose claim fenced the outcome out: the AI service was called twice
    (test_attempts_settle, 500 tasks at once, failed so in CI). While arq holds the job that
    claimed the row, the row is its attempt's; once Redis has lost that job, it is enqueued."""
    user = await make_user()
    [(task_id, attempt)] = await insert_tasks(
        engine, user.user_id, 1, status="processing", attempt=1, age=0.0
    )
    claiming = in_progress_key_prefix + queue.job_id_for(task_id, attempt - 1)
    await redis.set(claiming, b"1", px=60_000)  # its attempt still runs: it holds the key

    assert await cron.reconcile(worker_ctx) == {"due": 1, "enqueued": 0}
    assert await redis.zscore(queue.QUEUE_NAME, queue.job_id_for(task_id, attempt)) is None

    await redis.delete(claiming)  # Redis lost it (its worker gone, or Redis restarted empty)
    assert await cron.reconcile(worker_ctx) == {"due": 1, "enqueued": 1}
    await assert_queued(redis, [(task_id, attempt)])

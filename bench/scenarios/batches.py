"""A batch: N tasks due at one instant on a worker that is already polling, timed from that
instant until an observer sees the last one done (polled every 10 ms: arq's queue empty for
ours and bare arq, which remove a job when it ends; every task row finished for Celery),
with the worker's CPU (psutil, over the same interval), its peak RSS (sampled every 50 ms),
the fake AI's count of calls in flight, and the servers' own counts over the batch: Redis
commands (INFO commandstats, all clients: the other workers' idle polling included, the
observer's own polls left out) and PostgreSQL write transactions (transaction ids assigned:
the next id before and after; a statement outside a transaction that writes is one, reads and
connection pings are none; pg_stat_database's counts would lag by up to 10 s)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.context import Context
from bench.fixtures import (
    ENQUEUE_CONCURRENCY,
    FAR_FUTURE,
    Task,
    create_records,
    create_tasks,
    create_users,
    enqueue,
    release,
    task_counts,
)
from bench.harness import Child
from bench.procstat import RssSampler, cpu_seconds
from bench.profile import Profile

POLL_SECONDS = 0.01
WARM_UP_TASKS = 20  # a first, unmeasured batch: imports and connections made on first use
BARE_QUEUE = "arq:queue"
RECORDING_BYTES = 64_000  # 2 s of 16 kHz mono 16-bit: the recording each task streams


@dataclass
class Batch:
    tasks: int
    seconds: float
    cpu_seconds: float
    peak_rss: int
    max_in_flight: int = 0
    ai_calls: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False
    redis_commands: int = 0
    pg_transactions: int = 0
    stale_messages: int = 0  # Celery: messages of an earlier batch still there, dropped first

    @property
    def per_second(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000 * self.cpu_seconds / self.tasks

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / 1e6

    @property
    def redis_per_task(self) -> float:
        return self.redis_commands / self.tasks

    @property
    def pg_per_task(self) -> float:
        return self.pg_transactions / self.tasks

    @property
    def not_succeeded(self) -> int:
        if not self.statuses:  # bare arq: no rows
            return 0
        return self.tasks - self.statuses.get("success", 0)


def recording(ctx: Context, size: int = RECORDING_BYTES) -> Path:
    from bench.fixtures import write_recording

    path = ctx.workdir / "recordings" / f"source-{size}.wav"
    return path if path.exists() else write_recording(path, size)


async def seed(
    ctx: Context,
    count: int,
    size: int = RECORDING_BYTES,
    users: int = 10,
    *,
    celery: bool = False,
) -> list[Task]:
    """Clean databases and queue, then `count` pending tasks whose recordings exist: in our
    database, or in the Celery baseline's own (`celery`), where our worker's reconciler does not
    see them (bench/stack.py `CELERY_DATABASE`)."""
    stack = ctx.stack
    await stack.clean()
    pg_url = stack.celery_pg_url if celery else stack.pg_url
    made = await create_users(pg_url, stack.settings(), min(users, count))
    per_user = math.ceil(count / len(made))
    records = await create_records(
        pg_url,
        made,
        per_user,
        storage_dir=stack.storage_dir,
        source=recording(ctx, size),
        size=size,
    )
    flat = [record for per in records for record in per][:count]
    return await create_tasks(pg_url, flat)


class Counters:
    """Redis commands and PostgreSQL write transactions between `start()` and `stop()`, less
    the observer's own Redis commands (`observed_redis`, counted by the caller)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.observed_redis = 0
        self._redis0 = self._pg0 = 0
        self.redis = self.pg = 0

    async def _redis_calls(self) -> int:
        stats = await self.ctx.stack.queue_redis.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    async def _next_xid(self) -> int:
        """The next transaction id PostgreSQL will assign (reading it assigns none)."""
        connection = await asyncpg.connect(self.ctx.stack.pg_url)
        try:
            value = await connection.fetchval(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            )
        finally:
            await connection.close()
        return int(value)

    async def start(self) -> None:
        self._pg0 = await self._next_xid()
        self._redis0 = await self._redis_calls()

    async def stop(self) -> None:
        self.redis = await self._redis_calls() - self._redis0 - self.observed_redis
        self.pg = await self._next_xid() - self._pg0


async def _until(done: Callable[[], Awaitable[bool]], within: float) -> bool:
    deadline = time.monotonic() + within
    while not await done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


def _queue_empty(
    ctx: Context, queue_name: str, counters: Counters
) -> Callable[[], Awaitable[bool]]:
    """No job of ours left in arq's queue (the reconciler's cron jobs pass through it too)."""
    redis = ctx.stack.queue_redis

    async def empty() -> bool:
        counters.observed_redis += 1
        size = int(await redis.zcard(queue_name))
        if size == 0:
            return True
        if size > 20:
            return False
        counters.observed_redis += 1
        members = await redis.zrange(queue_name, 0, -1)
        return all(member.startswith(b"cron:") for member in members)

    return empty


async def run_ours(
    ctx: Context,
    worker: Child,
    tasks: Sequence[Task],
    *,
    latency: float,
    within: float,
    profile: str | None = None,
) -> Batch:
    from app import redis_client
    from app.analysis import queue

    stack = ctx.stack
    arq = redis_client.connect(stack.redis_url())
    try:
        await enqueue(arq, tasks, deferred=True)
    finally:
        await arq.aclose()
    await stack.ai.configure(latency)
    await stack.ai.reset()
    counters = Counters(ctx)
    await counters.start()
    sampler = RssSampler(worker.pid).start()
    profiler = Profile(ctx.processes, worker.pid, profile).start() if profile else None
    cpu0 = cpu_seconds(worker.pid)
    t0 = await release(stack.queue_redis, queue.QUEUE_NAME, [t.job_id for t in tasks])
    finished = await _until(_queue_empty(ctx, queue.QUEUE_NAME, counters), within)
    t1 = time.time()
    cpu1 = cpu_seconds(worker.pid)
    peak = await sampler.stop()
    await counters.stop()
    if profiler is not None:
        await profiler.finish()
    stats = await stack.ai.stats()
    return Batch(
        tasks=len(tasks),
        seconds=t1 - t0 if finished else float("nan"),
        cpu_seconds=cpu1 - cpu0,
        peak_rss=peak,
        max_in_flight=int(stats["max_in_flight"]),
        ai_calls=int(stats["calls"]),
        statuses=await task_counts(stack.pg_url),
        timed_out=not finished,
        redis_commands=counters.redis,
        pg_transactions=counters.pg,
    )


async def run_bare(ctx: Context, worker: Child, count: int, *, within: float) -> Batch:
    from arq.connections import RedisSettings, create_pool

    stack = ctx.stack
    await stack.queue_redis.delete(BARE_QUEUE)
    pool = await create_pool(RedisSettings.from_dsn(stack.redis_url()))
    try:
        gate = asyncio.Semaphore(ENQUEUE_CONCURRENCY)
        defer_until = datetime.now(UTC) + FAR_FUTURE

        async def one() -> str:
            async with gate:
                job = await pool.enqueue_job("noop", _defer_until=defer_until)
            if job is None:
                raise RuntimeError("bare arq refused a job")
            return job.job_id

        ids = await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await pool.aclose()
    counters = Counters(ctx)
    await counters.start()
    sampler = RssSampler(worker.pid).start()
    cpu0 = cpu_seconds(worker.pid)
    t0 = await release(stack.queue_redis, BARE_QUEUE, ids)
    finished = await _until(_queue_empty(ctx, BARE_QUEUE, counters), within)
    t1 = time.time()
    cpu1 = cpu_seconds(worker.pid)
    peak = await sampler.stop()
    await counters.stop()
    return Batch(
        tasks=count,
        seconds=t1 - t0 if finished else float("nan"),
        cpu_seconds=cpu1 - cpu0,
        peak_rss=peak,
        timed_out=not finished,
        redis_commands=counters.redis,
        pg_transactions=counters.pg,
    )


async def run_celery(
    ctx: Context, tasks: Sequence[Task], *, latency: float, within: float
) -> Batch:
    """A Celery batch of `tasks`, seeded with `seed(..., celery=True)` (its own database)."""
    stack = ctx.stack
    celery = await ctx.celery()
    stale = await celery.publish(tasks)
    if stale:
        ctx.log(f"celery: dropped {stale} stale message(s) of an earlier batch")
    await stack.ai.configure(latency)
    await stack.ai.reset()
    counters = Counters(ctx)
    await counters.start()
    sampler = RssSampler(celery.child.pid, tree=True).start()
    connection = await asyncpg.connect(stack.celery_pg_url)
    try:

        async def all_finished() -> bool:
            done = await connection.fetchval(
                "SELECT count(*) FROM ai_analysis_tasks WHERE status IN ('success', 'failure')"
            )
            return int(done) >= len(tasks)

        cpu0 = celery.cpu_seconds()
        t0 = await celery.release()
        finished = await _until(all_finished, within)
        t1 = time.time()
        cpu1 = celery.cpu_seconds()
    finally:
        await connection.close()
    peak = await sampler.stop()
    await counters.stop()
    stats = await stack.ai.stats()
    return Batch(
        tasks=len(tasks),
        seconds=t1 - t0 if finished else float("nan"),
        cpu_seconds=cpu1 - cpu0,
        peak_rss=peak,
        max_in_flight=int(stats["max_in_flight"]),
        ai_calls=int(stats["calls"]),
        statuses=await task_counts(stack.celery_pg_url),
        timed_out=not finished,
        redis_commands=counters.redis,
        pg_transactions=counters.pg,
        stale_messages=stale,
    )


def stale_note(batches: Sequence[Batch]) -> list[str]:
    """The note for Celery batches that found messages of an earlier batch (dropped)."""
    stale = sum(b.stale_messages for b in batches)
    if not stale:
        return []
    return [
        f"Celery: {stale} message(s) of earlier batches (queued, staged or unacknowledged) "
        "were dropped before a batch (bench/celery_baseline/control.py `drop_stale`)."
    ]


async def warm_up(ctx: Context, ours: Child | None, bare: Child | None, celery: bool) -> None:
    """A small batch on each side, not measured: what a process does once (lazy imports,
    connection pools filling) stays out of the rounds."""
    n = WARM_UP_TASKS
    if ours is not None:
        await run_ours(ctx, ours, await seed(ctx, n), latency=0.0, within=60.0)
    if bare is not None:
        await ctx.stack.clean()
        await run_bare(ctx, bare, n, within=60.0)
    if celery:
        await run_celery(ctx, await seed(ctx, n, celery=True), latency=0.0, within=60.0)

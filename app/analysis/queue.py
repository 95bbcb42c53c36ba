"""Our port onto arq: the API and the reconciler enqueue through here, so arq stays replaceable.

Jobs are serialised as JSON (never pickle). One queue, `ai_analysis`; the job id is
`{task_id}:{attempt}`, so each attempt is a distinct arq job and the database fences them.
"""

from __future__ import annotations

import json
import time
import uuid
import weakref
from datetime import datetime
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.constants import abort_jobs_ss, in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

QUEUE_NAME = "ai_analysis"
ANALYZE_FUNCTION = "analyze_recording"
WORKER_KEY_PREFIX = "vocalborn:worker:"  # a heartbeat key per live worker (worker/cron.py)


def serialize(obj: Any) -> bytes:
    return json.dumps(obj, default=repr, separators=(",", ":")).encode()


def deserialize(data: bytes) -> Any:
    return json.loads(data)


def job_id_for(task_id: uuid.UUID | str, attempt: int) -> str:
    return f"{task_id}:{attempt}"


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 0
    return settings


def connect(url: str, connection_class: type[Connection] | None = None) -> ArqRedis:
    """A client for the queue (and any other Redis use); connects lazily, so a process can
    start while Redis is down. `connection_class`: redis-py's, unless given (a test seam)."""
    options: dict[str, Any] = {"connection_class": connection_class} if connection_class else {}
    pool = ConnectionPool.from_url(
        url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=15, **options
    )
    return ArqRedis(
        connection_pool=pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_NAME,
    )


async def enqueue_analysis(
    pool: ArqRedis, task_id: uuid.UUID | str, attempt: int, defer_until: datetime | None = None
) -> bool:
    """Enqueue the analysis job; False when a job with this id already exists (arq dedup)."""
    job = await pool.enqueue_job(
        ANALYZE_FUNCTION,
        str(task_id),
        _job_id=job_id_for(task_id, attempt),
        _queue_name=QUEUE_NAME,
        _defer_until=defer_until,
    )
    return job is not None


async def abort(pool: Redis, job_id: str) -> None:
    """Ask arq to abort the job: a running one is cancelled, a queued one never starts."""
    async with pool.pipeline(transaction=True) as pipe:
        pipe.zadd(abort_jobs_ss, {job_id: timestamp_ms()})
        pipe.zadd(QUEUE_NAME, {job_id: 1}, xx=True)  # a deferred job is looked at right away
        await pipe.execute()


async def extend_in_progress(pool: Redis, job_id: str, ttl_ms: int) -> None:
    """Cut or extend arq's in-progress marker so a dead worker's job is retried after ttl."""
    await pool.pexpire(in_progress_key_prefix + job_id, ttl_ms)


async def queue_position(pool: Redis, job_id: str) -> int | None:
    """1-based position among jobs waiting to start; None when the job is not waiting.

    arq keeps running jobs in the queue too, so the jobs ahead are its rank (arq takes jobs in
    score, then member order, which is what ZRANK counts) less the running ones (an estimate
    refreshed once a second): one round trip whatever the length of the queue.
    """
    async with pool.pipeline(transaction=False) as pipe:
        pipe.zrank(QUEUE_NAME, job_id)
        pipe.exists(in_progress_key_prefix + job_id)
        ahead, running = await pipe.execute()
    if ahead is None or running:
        return None
    return max(int(ahead) - await _running_jobs(pool), 0) + 1


_RUNNING_SCAN = 500
_running_estimates: weakref.WeakKeyDictionary[Redis, tuple[float, int]] = (
    weakref.WeakKeyDictionary()
)


async def _running_jobs(pool: Redis) -> int:
    """Running jobs sit at the head of the queue (they were due first): count those."""
    taken_at, count = _running_estimates.get(pool, (-1e9, 0))
    if time.monotonic() - taken_at < 1.0:
        return count
    head = await pool.zrange(QUEUE_NAME, 0, _RUNNING_SCAN - 1)
    async with pool.pipeline(transaction=False) as pipe:
        for member in head:
            pipe.exists(in_progress_key_prefix + member.decode())
        flags = await pipe.execute() if head else []
    count = sum(1 for flag in flags if flag)
    _running_estimates[pool] = (time.monotonic(), count)
    return count


async def queued_count(pool: ArqRedis) -> int:
    return int(await pool.zcard(QUEUE_NAME))

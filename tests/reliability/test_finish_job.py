"""A worker ends its jobs as arq does (`HealingWorker.finish_job`: arq's commands in one script,
through a group commit), checked against arq's own finish_job on real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.worker import Worker
from redis.asyncio import Connection, Redis

from app import redis_client
from app.analysis import queue
from app.settings import Settings
from tests.round_trips import counting_connection
from worker.healing import HealingWorker
from worker.main import worker_options

_PREFIXES = (in_progress_key_prefix, job_key_prefix, retry_key_prefix, result_key_prefix)

# finish_job's arguments after the job id, as arq's run_job passes them.
CASES: dict[str, dict[str, Any]] = {
    "done, no result kept": dict(finish=True, result_data=None, result_timeout_s=0),
    "done, result kept a while": dict(finish=True, result_data=b"r", result_timeout_s=60),
    "done, result kept for ever": dict(
        finish=True, result_data=b"r", result_timeout_s=None, keep_result_forever=True
    ),
    "put back, score raised": dict(finish=False, result_data=None, incr_score=5000),
    "put back, held on": dict(finish=False, result_data=None, keep_in_progress=30.0),
    "done, held on": dict(finish=True, result_data=None, keep_in_progress=30.0),
}
_DEFAULTS: dict[str, Any] = dict(
    result_timeout_s=None, keep_result_forever=False, incr_score=None, keep_in_progress=None
)


@pytest.fixture
def counting() -> type[Connection]:
    """The connection class of the worker's pool: `counting.sent` is its round trips."""
    return counting_connection()


@pytest.fixture
async def worker(
    settings: Settings, clean: None, counting: type[Connection]
) -> AsyncIterator[HealingWorker]:
    options = worker_options(settings) | {"handle_signals": False}
    options["redis_pool"] = redis_client.connect(settings.redis_url, connection_class=counting)
    worker = HealingWorker(**options)
    yield worker
    await worker.pool.aclose()


async def _job(redis: Redis, job_id: str) -> None:
    """A running job as arq leaves it: in the queue and the abort set, its keys set."""
    await redis.zadd(queue.QUEUE_NAME, {job_id: 1000})
    await redis.zadd(abort_jobs_ss, {job_id: 1})
    for prefix in (in_progress_key_prefix, job_key_prefix, retry_key_prefix):
        await redis.set(prefix + job_id, b"x", px=600_000)


async def _state(redis: Redis, job_id: str) -> dict[str, object]:
    """What Redis holds of `job_id`: each key's value and whether it expires, its scores."""
    state: dict[str, object] = {
        "queue": await redis.zscore(queue.QUEUE_NAME, job_id),
        "abort": await redis.zscore(abort_jobs_ss, job_id),
    }
    for prefix in _PREFIXES:
        ttl = await redis.pttl(prefix + job_id)
        state[prefix] = (await redis.get(prefix + job_id), "expires" if ttl > 0 else ttl)
    return state


@pytest.mark.parametrize("case", CASES)
async def test_a_finish_leaves_what_arqs_own_leaves(
    worker: HealingWorker, redis: Redis, case: str
) -> None:
    arguments = _DEFAULTS | CASES[case]
    await _job(redis, "arq-job")
    await _job(redis, "our-job")
    await Worker.finish_job(worker, "arq-job", **arguments)  # arq's own, on the same pool
    await worker.finish_job("our-job", **arguments)
    assert await _state(redis, "our-job") == await _state(redis, "arq-job")


async def test_concurrent_finishes_share_round_trips(
    worker: HealingWorker, redis: Redis, counting: type[Connection]
) -> None:
    ids = [f"job-{i}" for i in range(40)]
    for job_id in ids:
        await _job(redis, job_id)
    arguments = _DEFAULTS | CASES["done, no result kept"]
    await worker.pool.ping()  # connected: the handshake is not counted
    before = counting.sent
    await asyncio.gather(*(worker.finish_job(job_id, **arguments) for job_id in ids))
    sent = counting.sent - before
    nothing_left = await _state(redis, "never-ran")
    assert [await _state(redis, job_id) for job_id in ids] == [nothing_left] * len(ids)
    # A MULTI pipeline each (arq's) would be forty (a second connection's handshake two more).
    assert sent <= 4, sent

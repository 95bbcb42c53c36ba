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
from worker.healing import HealingWorker
from worker.main import worker_options

_PREFIXES = (in_progress_key_prefix, job_key_prefix, retry_key_prefix, result_key_prefix)

# finish_job's arguments after the job id, as arq's run_job passes them (and the edges).
CASES: dict[str, dict[str, Any]] = {
    "done, no result kept": dict(finish=True, result_data=None, result_timeout_s=0),
    "done, result kept a while": dict(finish=True, result_data=b"r", result_timeout_s=60),
    "done, result kept for ever": dict(
        finish=True, result_data=b"r", result_timeout_s=None, keep_result_forever=True
    ),
    "done, for ever over a timeout of 0": dict(
        finish=True, result_data=b"r", result_timeout_s=0, keep_result_forever=True
    ),
    "done, an empty result": dict(finish=True, result_data=b"", result_timeout_s=60),
    "a cron job done (its result kept, held on)": dict(
        finish=True, result_data=b"r", result_timeout_s=3600, keep_in_progress=60.0
    ),
    "put back, score raised": dict(finish=False, result_data=None, incr_score=5000),
    "put back, a score raised by 0": dict(finish=False, result_data=None, incr_score=0),
    "put back as it was (cancelled)": dict(finish=False, result_data=None),
    "put back, held on": dict(finish=False, result_data=None, keep_in_progress=30.0),
    "put back, held on for 0": dict(finish=False, result_data=None, keep_in_progress=0.0),
    "done, held on": dict(finish=True, result_data=None, keep_in_progress=30.0),
}
_DEFAULTS: dict[str, Any] = dict(
    result_timeout_s=None, keep_result_forever=False, incr_score=None, keep_in_progress=None
)


@pytest.fixture
async def worker(
    settings: Settings, clean: None, counting: type[Connection]
) -> AsyncIterator[HealingWorker]:
    options = worker_options(settings) | {"handle_signals": False}
    options["redis_pool"] = redis_client.connect(settings.redis_url, connection_class=counting)
    worker = HealingWorker(**options)
    yield worker
    await worker.pool.aclose(close_connection_pool=True)


async def _job(redis: Redis, job_id: str) -> None:
    """A running job as arq leaves it: in the queue and the abort set, its keys set (their life
    an hour: longer than any a finish sets)."""
    await redis.zadd(queue.QUEUE_NAME, {job_id: 1000})
    await redis.zadd(abort_jobs_ss, {job_id: 1})
    for prefix in (in_progress_key_prefix, job_key_prefix, retry_key_prefix):
        await redis.set(prefix + job_id, b"x", px=3_600_000)


async def _state(redis: Redis, job_id: str) -> dict[str, Any]:
    """What Redis holds of `job_id`: its scores, each key's value and life (ms; -1 for ever,
    -2 none)."""
    state: dict[str, Any] = {
        "queue": await redis.zscore(queue.QUEUE_NAME, job_id),
        "abort": await redis.zscore(abort_jobs_ss, job_id),
    }
    for prefix in _PREFIXES:
        state[prefix] = (await redis.get(prefix + job_id), await redis.pttl(prefix + job_id))
    return state


def _same(ours: dict[str, Any], arqs: dict[str, Any]) -> bool:
    """The same scores and values, and each key's life the same (-1, -2) or, when it expires,
    within a second of the other's (they are read a few ms apart)."""
    for name, arq in arqs.items():
        if name not in _PREFIXES:
            if ours[name] != arq:
                return False
            continue
        (our_value, our_life), (arq_value, arq_life) = ours[name], arq
        both_expire = min(our_life, arq_life) > 0 and abs(our_life - arq_life) < 1000
        if our_value != arq_value or not (our_life == arq_life or both_expire):
            return False
    return True


@pytest.mark.parametrize("case", CASES)
async def test_a_finish_leaves_what_arqs_own_leaves(
    worker: HealingWorker, redis: Redis, case: str
) -> None:
    arguments = _DEFAULTS | CASES[case]
    await _job(redis, "arq-job")
    await _job(redis, "our-job")
    await Worker.finish_job(worker, "arq-job", **arguments)  # arq's own, on the same pool
    await worker.finish_job("our-job", **arguments)
    ours, arqs = await _state(redis, "our-job"), await _state(redis, "arq-job")
    assert _same(ours, arqs), (ours, arqs)


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

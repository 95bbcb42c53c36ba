"""What we leave in arq's keys: no abort entry without its job, no kept result blocking a job id
we enqueue again; cron jobs still run once per scheduled time."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix, result_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from app.analysis import queue
from tests.analysis.conftest import StartWorker, new_task, wait_for
from tests.conftest import ApiUser
from tests.reliability.test_reconcile import worker_ctx
from worker import cron

__all__ = ["worker_ctx"]


async def test_abort_of_a_job_arq_does_not_hold_adds_no_abort_entry(
    client: httpx.AsyncClient, alice: ApiUser, redis: Redis
) -> None:
    """A pending task whose enqueue failed: its cancel leaves nothing in arq's abort set."""
    task_id = await new_task(client, alice)
    job_id = queue.job_id_for(task_id, 0)
    await redis.delete(job_key_prefix + job_id)  # as if the enqueue had failed
    await redis.zrem(queue.QUEUE_NAME, job_id)

    response = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=alice.headers)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert await redis.zrange(abort_jobs_ss, 0, -1) == []


async def test_abort_of_a_queued_job_is_consumed_by_the_worker(
    client: httpx.AsyncClient, alice: ApiUser, redis: Redis, start_worker: StartWorker
) -> None:
    """A queued job's cancel adds its abort entry (and brings it to the head of the queue);
    the worker that takes the job removes both."""
    task_id = await new_task(client, alice)
    job_id = queue.job_id_for(task_id, 0)
    response = await client.delete(f"/api/v1/tasks/analysis/{task_id}", headers=alice.headers)
    assert response.status_code == 202
    assert await redis.zrange(abort_jobs_ss, 0, -1) == [job_id.encode()]
    assert await redis.zscore(queue.QUEUE_NAME, job_id) == 1

    await start_worker()

    async def consumed() -> bool:
        gone = await redis.zscore(queue.QUEUE_NAME, job_id) is None
        return gone and await redis.zcard(abort_jobs_ss) == 0

    await wait_for(consumed)


async def test_reconcile_removes_abort_entries_of_jobs_arq_no_longer_holds(
    worker_ctx: dict[str, Any], redis: Redis
) -> None:
    """Entries left by earlier code (or a job lost with Redis) go; a held job's entry stays."""
    held = queue.job_id_for(uuid.uuid4(), 0)
    await queue.enqueue_analysis(worker_ctx["deps"].arq, held.split(":")[0], 0)
    gone = [queue.job_id_for(uuid.uuid4(), n) for n in range(3)]
    now = timestamp_ms()
    await redis.zadd(abort_jobs_ss, {job_id: now for job_id in [*gone, held]})

    await cron.reconcile(worker_ctx)

    assert await redis.zrange(abort_jobs_ss, 0, -1) == [held.encode()]


async def test_a_job_that_failed_before_it_started_can_be_enqueued_again(
    redis: Redis, start_worker: StartWorker, arq: ArqRedis
) -> None:
    """arq fails a job it cannot decode, and one aborted before it started, without running
    it: no result may be kept under that job id, or arq's dedup refuses it for as long."""
    undecodable = queue.job_id_for(uuid.uuid4(), 0)
    await redis.psetex(job_key_prefix + undecodable, 60_000, b"not json")
    await redis.zadd(queue.QUEUE_NAME, {undecodable: timestamp_ms()})
    aborted_task = uuid.uuid4()
    aborted = queue.job_id_for(aborted_task, 0)
    assert await queue.enqueue_analysis(arq, aborted_task, 0)
    await queue.abort(arq, aborted)

    await start_worker()

    async def both_failed() -> bool:  # the queue also holds the worker's cron jobs
        scores = [await redis.zscore(queue.QUEUE_NAME, job) for job in (undecodable, aborted)]
        return scores == [None, None]

    await wait_for(both_failed)
    assert await redis.exists(result_key_prefix + undecodable, result_key_prefix + aborted) == 0
    assert await queue.enqueue_analysis(arq, undecodable.split(":")[0], 0)
    assert await queue.enqueue_analysis(arq, aborted_task, 0)


async def test_a_cron_job_runs_once_per_scheduled_time(
    redis: Redis, start_worker: StartWorker, arq: ArqRedis
) -> None:
    """Another worker's late enqueue of a cron job that already ran (what arq's run_cron does
    when that worker's poll comes after the run) is refused: its result is kept for that, or
    arq would run it again once its in-progress marker expires."""
    await start_worker()

    async def reconcile_ran() -> list[bytes]:
        return [key async for key in redis.scan_iter(f"{result_key_prefix}cron:reconcile:*")]

    keys = await wait_for(reconcile_ran)
    job_id = keys[0].decode().removeprefix(result_key_prefix)
    assert await arq.enqueue_job("cron:reconcile", _job_id=job_id) is None

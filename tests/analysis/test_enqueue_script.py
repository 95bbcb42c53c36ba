"""The enqueue script and the running-jobs estimate, on a real Redis: arq's job format and
dedup, one round trip, and one scan per expiry however many requests ask at once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import Job
from arq.utils import timestamp_ms, to_unix_ms
from redis.asyncio import Redis

from app.analysis import lanes, queue


async def _calls(redis: Redis, command: str) -> int:
    """How many times Redis has run `command` (scripts' own calls included)."""
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_the_job_is_the_one_arq_enqueue_job_writes(arq: ArqRedis, redis: Redis) -> None:
    ours, theirs = uuid.uuid4(), uuid.uuid4()
    due = datetime.now(UTC) + timedelta(minutes=5)
    assert await queue.enqueue_analysis(arq, ours, 2, defer_until=due)
    await arq.enqueue_job(
        queue.ANALYZE_FUNCTION,
        str(theirs),
        _job_id=queue.job_id_for(theirs, 2),
        _queue_name=queue.QUEUE_NAME,
        _defer_until=due,
    )
    jobs = []
    for task_id in (ours, theirs):
        job_id = queue.job_id_for(task_id, 2)
        raw = await redis.get(job_key_prefix + job_id)
        assert raw is not None
        job = queue.deserialize(raw)  # arq's fields: t(ry), f(unction), a(rgs), k(wargs), et
        assert job.pop("a") == [str(task_id)]
        assert abs(job.pop("et") - timestamp_ms()) < 5_000
        score = await redis.zscore(queue.QUEUE_NAME, job_id)
        jobs.append((job, score, await redis.pttl(job_key_prefix + job_id)))
    (job, score, ttl), (their_job, their_score, their_ttl) = jobs
    assert job == their_job == {"t": None, "f": queue.ANALYZE_FUNCTION, "k": {}}
    assert score == their_score == to_unix_ms(due)
    assert abs(ttl - their_ttl) < 1000  # arq's expiry: the deferral plus a day
    info = await Job(queue.job_id_for(ours, 2), arq, queue.QUEUE_NAME, queue.deserialize).info()
    assert info is not None and info.function == queue.ANALYZE_FUNCTION  # arq reads it


async def test_a_job_due_now_is_queued_due_at_its_fair_tag(arq: ArqRedis, redis: Redis) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    assert await queue.enqueue_analysis(arq, first, 0)
    assert await queue.enqueue_analysis(arq, second, 0)
    scores = [await redis.zscore(queue.QUEUE_NAME, queue.job_id_for(t, 0)) for t in (first, second)]
    # The first tag of the fair order (app/analysis/lanes.py), then the same flow's next:
    # due (long past), and in order.
    assert scores == [lanes.FAIR_EPOCH_MS, lanes.FAIR_EPOCH_MS + lanes.UNOWNED.cost]


@pytest.mark.parametrize("prefix", [job_key_prefix, in_progress_key_prefix, result_key_prefix])
async def test_a_held_or_finished_job_is_refused_and_left_alone(
    arq: ArqRedis, redis: Redis, prefix: str
) -> None:
    task_id = uuid.uuid4()
    job_id = queue.job_id_for(task_id, 0)
    await redis.set(prefix + job_id, b"x", px=60_000)

    assert not await queue.enqueue_analysis(arq, task_id, 0)
    assert await queue.enqueue_with_position(arq, task_id, 0) == (False, None)

    assert await redis.zscore(queue.QUEUE_NAME, job_id) is None
    assert await redis.get(prefix + job_id) == b"x"
    assert await redis.exists(job_key_prefix + job_id) == (prefix == job_key_prefix)


async def test_a_second_enqueue_is_refused(arq: ArqRedis) -> None:
    task_id = uuid.uuid4()
    assert await queue.enqueue_with_position(arq, task_id, 0) == (True, 1)
    assert await queue.enqueue_with_position(arq, task_id, 0) == (False, 1)
    assert not await queue.enqueue_analysis(arq, task_id, 0)


async def test_enqueue_answers_the_position_in_one_round_trip(arq: ArqRedis, redis: Redis) -> None:
    running = queue.job_id_for(uuid.uuid4(), 0)
    await redis.zadd(queue.QUEUE_NAME, {running: 1})  # due first, and running
    await redis.set(in_progress_key_prefix + running, b"1", px=60_000)
    assert await queue.enqueue_with_position(arq, uuid.uuid4(), 0) == (True, 1)

    evals = await _calls(redis, "eval")
    zranks = await _calls(redis, "zrank")
    # arq orders jobs due in the same millisecond by id: enqueue in id order
    tasks = sorted((uuid.uuid4() for _ in range(3)), key=str)
    positions = [(await queue.enqueue_with_position(arq, task, 0))[1] for task in tasks]
    assert positions == [2, 3, 4]
    assert await _calls(redis, "eval") - evals == 3  # the running estimate is still fresh
    assert await _calls(redis, "zrank") - zranks == 3


async def test_the_running_estimate_is_taken_once_by_concurrent_callers(
    arq: ArqRedis, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [queue.job_id_for(uuid.uuid4(), 0) for _ in range(5)]
    await redis.zadd(queue.QUEUE_NAME, {job_id: n for n, job_id in enumerate(jobs)})
    await redis.set(in_progress_key_prefix + jobs[0], b"1", px=60_000)
    monkeypatch.setattr(queue, "SNAPSHOT_SECONDS", 0.2)

    for _ in range(2):  # the first scan, then one more after the estimate expired
        scans = await _calls(redis, "zrange")
        zranks = await _calls(redis, "zrank")
        positions = await asyncio.gather(
            *(queue.queue_position(arq, job_id) for job_id in jobs[1:] * 25)
        )
        assert positions == [1, 2, 3, 4] * 25
        assert await _calls(redis, "zrange") - scans == 1
        assert await _calls(redis, "zrank") == zranks  # every job was in the snapshot
        await asyncio.sleep(0.25)


async def test_a_cancelled_caller_does_not_cancel_the_shared_scan(
    arq: ArqRedis, redis: Redis
) -> None:
    running = queue.job_id_for(uuid.uuid4(), 0)
    await redis.zadd(queue.QUEUE_NAME, {running: 1})
    await redis.set(in_progress_key_prefix + running, b"1", px=60_000)
    scans = await _calls(redis, "zrange")
    first = asyncio.create_task(queue._running_jobs(arq))
    await asyncio.sleep(0)  # the first caller starts the scan and waits for it
    second = asyncio.create_task(queue._running_jobs(arq))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == 1
    assert first.cancelled()
    assert await _calls(redis, "zrange") - scans == 1


async def test_a_job_enqueued_after_the_snapshot_is_found_all_the_same(
    arq: ArqRedis, redis: Redis
) -> None:
    tasks = sorted((uuid.uuid4() for _ in range(3)), key=str)
    for task in tasks[:2]:
        await queue.enqueue_analysis(arq, task, 0)
    assert await queue.queue_position(arq, queue.job_id_for(tasks[1], 0)) == 2  # the snapshot
    await queue.enqueue_analysis(arq, tasks[2], 0)
    zranks = await _calls(redis, "zrank")
    assert await queue.queue_position(arq, queue.job_id_for(tasks[2], 0)) == 3
    assert await _calls(redis, "zrank") - zranks == 1  # not in the snapshot: asked for itself
    assert await queue.queue_position(arq, queue.job_id_for(uuid.uuid4(), 0)) is None


@pytest.mark.parametrize(
    ("job_id", "argument", "accepted"),
    [
        ("{task}:1", "{task}", True),
        ("{TASK}:2", "{task}", True),  # the same task, spelled otherwise
        ("{task}:1", "{other}", False),  # another task than the job id names
        ("{task}", "{task}", False),  # no attempt
        ("{task}:x", "{task}", False),
        ("forged:1", "{task}", False),
        ("{task}:1", "not-a-uuid", False),
        ("{task}:1", None, False),
        ("{task}:1", ["{task}"], False),
    ],
)
def test_a_job_may_act_only_on_the_task_its_id_names(
    job_id: str, argument: object, accepted: bool
) -> None:
    task, other = uuid.uuid4(), uuid.uuid4()
    names = {"task": str(task), "TASK": str(task).upper(), "other": str(other)}
    if isinstance(argument, str):
        argument = argument.format(**names)
    elif isinstance(argument, list):
        argument = [item.format(**names) for item in argument]
    expected = task if accepted else None
    assert queue.task_of_job(job_id.format(**names), argument) == expected

"""The fair order of arq's queue (app/analysis/lanes.py), on a real Redis: users interleave
within a lane, lanes share by weight and batch never starves, due retries and cron jobs take
their place, an admin's lane change moves a waiting job, and a reported queue position is
the order in which jobs start.

`serve` starts jobs as the worker does (worker/healing.py): promote the due wall-clock jobs,
take the lowest due score (arq's read), start it with `queue.pick` (the claim, which advances
the virtual time with its score), and the job leaves the queue (it ran)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from app.analysis import lanes, queue
from app.analysis.lanes import Flow, Lane, LaneWeights

WEIGHTS = LaneWeights(interactive=9, batch=1)


def flow(lane: Lane, user: str) -> Flow:
    return WEIGHTS.flow(lane, user)


async def enqueue(arq: ArqRedis, owner: Flow, count: int) -> list[str]:
    """`count` jobs of `owner`, due now; their job ids in enqueue order."""
    jobs = []
    for _ in range(count):
        task = uuid.uuid4()
        assert await queue.enqueue_analysis(arq, task, 0, flow=owner)
        jobs.append(queue.job_id_for(task, 0))
    return jobs


def offered(job_id: str, life_ms: int = 4_000) -> queue.PickedJob:
    """`job_id` as a worker offers it to a pick."""
    return queue.PickedJob(job_id, life_ms, queue.is_attempt_job(job_id))


async def serve(arq: ArqRedis, count: int) -> list[str]:
    """Start (and finish) up to `count` jobs as workers do; their ids in start order."""
    started = []
    for _ in range(count):
        await queue.promote_due(arq, WEIGHTS)
        head = await arq.zrangebyscore(queue.QUEUE_NAME, "-inf", timestamp_ms(), start=0, num=1)
        if not head:
            break
        job_id = head[0].decode()
        assert job_id in await queue.pick(arq, [offered(job_id, 60_000)], timestamp_ms(), 1)
        await arq.zrem(queue.QUEUE_NAME, job_id)  # as its job's end does
        started.append(job_id)
    return started


async def test_a_pick_starts_only_the_due_jobs_no_worker_holds(arq: ArqRedis) -> None:
    due, deferred, held, gone = (str(uuid.uuid4()) for _ in range(4))
    for task in (due, deferred, held):
        assert await queue.enqueue_analysis(arq, task, 0, flow=flow(Lane.INTERACTIVE, "ann"))
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert await queue.enqueue_analysis(arq, deferred, 1, defer_until=later)
    await arq.set(in_progress_key_prefix + queue.job_id_for(held, 0), b"1")  # another worker's
    jobs = [offered(queue.job_id_for(due, 0)), offered(queue.job_id_for(deferred, 1))]
    jobs += [offered(queue.job_id_for(held, 0)), offered(queue.job_id_for(gone, 0))]
    started = await queue.pick(arq, jobs, timestamp_ms(), 10)
    assert list(started) == [queue.job_id_for(due, 0)]
    assert 0 < await arq.pttl(in_progress_key_prefix + queue.job_id_for(due, 0)) <= 4_000
    assert not await arq.exists(in_progress_key_prefix + queue.job_id_for(deferred, 1))
    assert await arq.pttl(in_progress_key_prefix + queue.job_id_for(held, 0)) == -1  # untouched


async def test_a_pick_spends_its_room_only_on_the_jobs_it_starts(arq: ArqRedis) -> None:
    """A running job stays at the queue's head: a worker whose read begins with another's
    running jobs still starts as many as it has room for (R1 met a worker that started none),
    and the AI slots' bound counts attempts only."""
    running = [str(uuid.uuid4()) for _ in range(2)]
    waiting = [str(uuid.uuid4()) for _ in range(3)]
    for task in running + waiting:
        assert await queue.enqueue_analysis(arq, task, 0, flow=flow(Lane.INTERACTIVE, "ann"))
    for task in running:
        await arq.set(in_progress_key_prefix + queue.job_id_for(task, 0), b"1")
    jobs = [offered(queue.job_id_for(task, 0)) for task in running + waiting]
    started = await queue.pick(arq, jobs, timestamp_ms(), 2)
    assert list(started) == [queue.job_id_for(task, 0) for task in waiting[:2]]
    cron = "cron:cleanup_expired:1764460620123"
    await arq.zadd(queue.QUEUE_NAME, {cron: timestamp_ms() - 1})
    jobs = [offered(queue.job_id_for(waiting[2], 0)), offered(cron)]
    assert list(await queue.pick(arq, jobs, timestamp_ms(), 5, most_attempts=0)) == [cron]


async def test_a_pick_sent_again_answers_the_jobs_it_started(arq: ArqRedis) -> None:
    """The worker's Redis client sends a command again when its answer was lost (a dropped
    connection, a timeout): the pick that ran the first time must still hand its jobs to the
    worker, or they stay held by nobody until their in-progress key expires."""
    task = str(uuid.uuid4())
    assert await queue.enqueue_analysis(arq, task, 0, flow=flow(Lane.INTERACTIVE, "ann"))
    jobs = [offered(queue.job_id_for(task, 0))]
    first = await queue.pick(arq, jobs, timestamp_ms(), 1, token="pick-1")
    again = await queue.pick(arq, jobs, timestamp_ms(), 1, token="pick-1")
    assert list(again) == list(first) == [queue.job_id_for(task, 0)]
    assert not await queue.pick(arq, jobs, timestamp_ms(), 1, token="pick-2")  # another's


async def test_a_users_single_job_waits_for_no_other_users_backlog(arq: ArqRedis) -> None:
    alice = await enqueue(arq, flow(Lane.INTERACTIVE, "alice"), 200)
    assert await serve(arq, 10) == alice[:10]  # alone, first in first out
    # A started job's flow key is gone (only a waiting job needs it); a waiting one's stays.
    assert not await arq.exists(lanes.FLOW_KEY_PREFIX + alice[0])
    assert await arq.exists(lanes.FLOW_KEY_PREFIX + alice[10])
    [bob] = await enqueue(arq, flow(Lane.INTERACTIVE, "bob"), 1)
    assert await queue.queue_position(arq, bob) == 1  # before alice's 190 waiting
    assert (await serve(arq, 1)) == [bob]
    # And with several backlogs, each user's jobs take turns.
    carol = await enqueue(arq, flow(Lane.INTERACTIVE, "carol"), 3)
    dave = await enqueue(arq, flow(Lane.INTERACTIVE, "dave"), 3)
    first_nine = await serve(arq, 9)
    assert set(carol + dave) <= set(first_nine)


async def test_lanes_share_by_weight_and_batch_never_starves(arq: ArqRedis) -> None:
    interactive = set(await enqueue(arq, flow(Lane.INTERACTIVE, "ann"), 100))
    batch = set(await enqueue(arq, flow(Lane.BATCH, "therapist"), 100))
    order = await serve(arq, 100)
    lanes_served = ["interactive" if job in interactive else "batch" for job in order]
    for start in range(0, 100, 10):  # every ten starts: nine interactive, one batch
        assert Counter(lanes_served[start : start + 10]) == {"interactive": 9, "batch": 1}
    assert len(batch & set(order)) == 10
    # The batch index holds the waiting batch jobs only: a started one leaves it.
    assert set(await arq.zrange(lanes.BATCH_KEY, 0, -1)) == {j.encode() for j in batch - set(order)}


async def test_a_due_retry_takes_a_fair_place_and_a_future_one_waits(
    arq: ArqRedis, redis: Redis
) -> None:
    backlog = await enqueue(arq, flow(Lane.INTERACTIVE, "alice"), 100)
    await serve(arq, 5)
    due, later = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    bob = flow(Lane.INTERACTIVE, "bob")
    assert await queue.enqueue_analysis(arq, due, 1, now - timedelta(seconds=1), bob)
    assert await queue.enqueue_analysis(arq, later, 1, now + timedelta(hours=1), bob)
    # Before its promotion the due retry's wall-clock score sorts after every tagged job.
    assert await redis.zrank(queue.QUEUE_NAME, queue.job_id_for(due, 1)) == 95
    assert await queue.promote_due(arq, WEIGHTS) == (1, 0)  # the later one stays
    assert await serve(arq, 1) == [queue.job_id_for(due, 1)]
    later_score = await redis.zscore(queue.QUEUE_NAME, queue.job_id_for(later, 1))
    assert later_score is not None and later_score > lanes.WALL_FLOOR_MS
    assert await serve(arq, 95) == backlog[5:]


async def test_a_cron_job_is_promoted_to_the_head(arq: ArqRedis, redis: Redis) -> None:
    await enqueue(arq, flow(Lane.BATCH, "therapist"), 300)
    cron = "cron:reconcile:1"
    await redis.zadd(queue.QUEUE_NAME, {cron: timestamp_ms() - 10})  # as arq's cron enqueue
    assert await queue.promote_due(arq, WEIGHTS) == (1, 0)
    assert await redis.zscore(queue.QUEUE_NAME, cron) == lanes.SYSTEM_SCORE
    assert await serve(arq, 1) == [cron]


async def test_a_lane_change_moves_a_waiting_job(arq: ArqRedis) -> None:
    batch = await enqueue(arq, flow(Lane.BATCH, "therapist"), 50)
    await enqueue(arq, flow(Lane.BATCH, "other"), 50)
    last = batch[-1]
    assert await queue.queue_position(arq, last) in (99, 100)  # its tie: the other's last
    assert await queue.move_to_flow(arq, last, flow(Lane.INTERACTIVE, "therapist"))
    order = await serve(arq, 3)
    assert last in order  # the interactive job goes ahead of the 98 batch jobs behind it
    assert not await queue.move_to_flow(arq, order[0], flow(Lane.BATCH, "therapist"))


async def test_the_reported_position_is_the_start_order(arq: ArqRedis) -> None:
    jobs: list[str] = []
    for lane, user, count in (
        (Lane.BATCH, "therapist", 60),
        (Lane.INTERACTIVE, "alice", 25),
        (Lane.INTERACTIVE, "bob", 3),
        (Lane.BATCH, "clinic", 10),
        (Lane.INTERACTIVE, "carol", 1),
    ):
        jobs += await enqueue(arq, flow(lane, user), count)
    # The reconciler's enqueue (a missing job of a new user) keeps the same order too.
    task = uuid.uuid4()
    assert await queue.enqueue_missing(arq, [(task, 0, flow(Lane.INTERACTIVE, "dan"))])
    jobs.append(queue.job_id_for(task, 0))
    await queue.promote_due(arq, WEIGHTS)  # a worker's poll: the reservation rule is known
    positions = {job: await queue.queue_position(arq, job) for job in jobs}
    order = await serve(arq, len(jobs))
    assert len(order) == len(jobs)
    assert {job: order.index(job) + 1 for job in jobs} == positions


async def test_a_user_whose_jobs_all_ran_starts_afresh(arq: ArqRedis) -> None:
    """The virtual time follows the jobs started: past service is not held against a user."""
    await enqueue(arq, flow(Lane.INTERACTIVE, "alice"), 10)
    await serve(arq, 10)
    await enqueue(arq, flow(Lane.INTERACTIVE, "bob"), 20)
    [again] = await enqueue(arq, flow(Lane.INTERACTIVE, "alice"), 1)
    position = await queue.queue_position(arq, again)
    assert position is not None and position <= 3


async def test_batch_keeps_its_share_against_many_one_off_interactive_users(
    arq: ArqRedis,
) -> None:
    """Each new user's first job gets the virtual time V, so a stream of one-job users alone
    would never let V reach the batch lane's second job: the batch lane's reserved share
    (one start in every 1 + interactive/batch weight while batch waits) keeps it served."""
    batch = set(await enqueue(arq, flow(Lane.BATCH, "therapist"), 50))
    order: list[str] = []
    for n in range(100):  # two new users arrive for every start: interactive never runs dry
        await enqueue(arq, flow(Lane.INTERACTIVE, f"patient-{2 * n}"), 1)
        await enqueue(arq, flow(Lane.INTERACTIVE, f"patient-{2 * n + 1}"), 1)
        order += await serve(arq, 1)
    served = [job in batch for job in order]
    for start in range(0, 100, 10):
        assert sum(served[start : start + 10]) >= 1, served
    assert sum(served) <= 12  # interactive is still served first


async def test_a_new_jobs_reported_position_is_its_start_order(arq: ArqRedis) -> None:
    """A job enqueued after the process's snapshot of the queue was taken (the submit's own
    answer, or a status read within the snapshot's second) is placed in it by its rank and
    lane, the reserved batch starts reckoned."""
    await enqueue(arq, flow(Lane.BATCH, "therapist"), 40)
    await enqueue(arq, flow(Lane.BATCH, "clinic"), 5)
    for user in ("alice", "bob", "carol"):
        await enqueue(arq, flow(Lane.INTERACTIVE, user), 20)
    await queue.promote_due(arq, WEIGHTS)
    await serve(arq, 7)  # interactive starts since the last batch one: not zero
    first = (await arq.zrange(queue.QUEUE_NAME, 0, 0))[0].decode()
    assert await queue.queue_position(arq, first) == 1  # the snapshot is taken here
    task, batch_task = uuid.uuid4(), uuid.uuid4()
    enqueued, position = await queue.enqueue_with_position(
        arq, task, 0, flow(Lane.INTERACTIVE, "carol")
    )
    assert enqueued and position is not None
    assert await queue.enqueue_analysis(arq, batch_task, 0, flow=flow(Lane.BATCH, "dora"))
    new = queue.job_id_for(task, 0)
    batch_new = queue.job_id_for(batch_task, 0)
    batch_position = await queue.queue_position(arq, batch_new)  # not in the snapshot either
    order = await serve(arq, 200)
    assert order.index(new) + 1 == position + (order.index(batch_new) < order.index(new))
    assert order.index(batch_new) + 1 == batch_position

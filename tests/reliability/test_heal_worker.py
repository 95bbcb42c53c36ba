"""A worker process (`python -m worker`, as deployed) survives a Redis outage: Redis killed and
started again, empty, on the same port. arq's own Worker ended its loop at the first failed
poll and exited (issue 11); the healing worker retries with backoff, logs and counts it, and
takes the tasks submitted during and after the outage."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import func
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app import redis_client
from app.analysis import queue
from app.embedded import EmbeddedRedis, free_port
from app.main import create_app
from app.settings import Settings
from tests.analysis.conftest import new_task, wait_for, wait_for_status
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI
from tests.reliability.worker_process import WorkerProcess, worker_env
from worker.healing import HealingWorker, _await_chain
from worker.main import healing_worker, worker_options


async def stop_worker_process(worker: WorkerProcess) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    if worker.returncode is None:
        worker.send(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.process.wait(), 15)
        except TimeoutError:
            await worker.kill()


def metric(port: int, name: str, labels: str) -> float:
    """One sample of the worker's metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
async def api(
    worker_settings: Settings, own_redis: EmbeddedRedis, clean: None
) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(worker_settings.model_copy(update={"redis_url": own_redis.url}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


def kill_redis(server: EmbeddedRedis) -> None:
    """SIGKILL by PID, as an OOM kill or a crash would end it."""
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    server.process = None


async def test_worker_survives_redis_killed_and_restarted_empty(
    api: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    worker_settings: Settings,
    own_redis: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    env = worker_env(
        worker_settings,
        REDIS_URL=own_redis.url,
        WORKER_NAME="healing-worker",
        WORKER_METRICS_PORT=str(metrics_port),
    )
    worker = await WorkerProcess.start(env, tmp_path)  # python -m worker
    try:
        before = await new_task(api, alice)
        assert (await wait_for_status(api, alice, before))["status"] == "success"

        kill_redis(own_redis)

        def polls_failed(count: int) -> Callable[[], Awaitable[bool]]:
            async def condition() -> bool:
                assert worker.returncode is None, f"the worker exited:\n{worker.output()}"
                return worker.output().count("queue poll: redis does not answer") >= count

            return condition

        await wait_for(polls_failed(1), within=20)
        during = await new_task(api, alice)  # 202: the row is the outbox
        await wait_for(polls_failed(5), within=20)  # an outage of several backoff rounds

        own_redis.start()  # the same port, empty: every queued job is gone
        after = await new_task(api, alice)
        for task_id in (during, after):
            final = await wait_for_status(api, alice, task_id, within=30)
            assert final["status"] == "success", (final, worker.output())
            assert final["worker_name"] == "healing-worker"
        assert worker.returncode is None, worker.output()
        assert "queue poll: redis answers again" in worker.output()
        retries = metric(
            metrics_port, "vocalborn_worker_dependency_retries_total", 'dependency="redis"'
        )
        assert retries >= 1
        print(f"\nRedis killed and restarted: {retries:g} polls retried, the worker never exited")
    finally:
        await stop_worker_process(worker)
    assert worker.returncode == 0, worker.output()


async def test_a_pick_that_fails_gives_its_job_slots_back(
    worker_settings: Settings,
) -> None:
    """A worker takes its slots (semaphore and job counter) before the pick's script, and
    must give them back when that script raises (arq kept the slot when its claim's WATCH
    pipeline raised): after max_jobs such failures a worker never took a job
    again. Redis here: a port nobody listens on, as while it is down."""
    down = worker_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    options = worker_options(down) | {"max_jobs": 2, "handle_signals": False}
    options["redis_pool"] = redis_client.connect(down.redis_url)  # no retries: fail at once
    worker = HealingWorker(**options)
    try:
        for _ in range(3):
            with pytest.raises(RedisConnectionError):  # not a wait for a slot never freed
                await asyncio.wait_for(worker.start_jobs([b"some-job"]), 10)
        assert worker.job_counter == 0
        assert not worker.sem.locked()  # both slots free
    finally:
        await worker.pool.aclose(close_connection_pool=True)


async def test_a_claim_refused_gives_its_slot_back_once(
    worker_settings: Settings, redis: Redis
) -> None:
    """A job already running elsewhere is not started, and its slot (semaphore and job
    counter) is given back once: not kept, nor given back twice (job counter below zero, or
    "semaphore released too many times")."""
    job_id = "some-task:1"
    await redis.zadd(queue.QUEUE_NAME, {job_id: 1})
    await redis.set(in_progress_key_prefix + job_id, b"1")  # claimed by another worker
    options = worker_options(worker_settings) | {"max_jobs": 2, "handle_signals": False}
    worker = HealingWorker(**options)
    try:
        for _ in range(3):
            await worker.start_jobs([job_id.encode()])
            assert worker.job_counter == 0
            assert not worker.tasks
        # All of arq's semaphore (max_jobs + 1), and no more: one acquire further would wait.
        for _ in range(options["max_jobs"] + 1):
            await worker.sem.acquire()
        assert worker.sem.locked()
    finally:
        await worker.pool.aclose(close_connection_pool=True)


async def test_worker_started_before_redis_waits_for_it_and_stops_cleanly_while_it_is_down(
    api: httpx.AsyncClient,
    alice: ApiUser,
    fake_ai: FakeAI,
    worker_settings: Settings,
    own_redis: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    kill_redis(own_redis)  # down before the worker starts (arq tried once, then exited)
    env = worker_env(worker_settings, REDIS_URL=own_redis.url, WORKER_NAME="early-worker")
    worker = await WorkerProcess.start(env, tmp_path)
    try:

        async def waiting() -> bool:
            assert worker.returncode is None, f"the worker exited:\n{worker.output()}"
            return "worker start: redis does not answer" in worker.output()

        await wait_for(waiting, within=30)
        own_redis.start()
        task_id = await new_task(api, alice)
        final = await wait_for_status(api, alice, task_id, within=30)
        assert (final["status"], final["worker_name"]) == ("success", "early-worker")

        kill_redis(own_redis)  # and a stop while Redis is down still shuts down in order
        await wait_for(waiting_poll(worker), within=30)
        worker.send(signal.SIGTERM)
        code = await worker.wait(within=20)
    finally:
        await stop_worker_process(worker)
    assert code == 0, worker.output()
    assert "worker stop: health key not deleted" in worker.output()
    assert "Traceback" not in worker.output(), worker.output()


def waiting_poll(worker: WorkerProcess) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        assert worker.returncode is None, f"the worker exited:\n{worker.output()}"
        return "queue poll: redis does not answer" in worker.output()

    return condition


async def test_a_stop_during_start_up_shuts_down_what_the_start_up_made(
    worker_settings: Settings, redis: Redis
) -> None:
    """close() while on_startup runs, whose await loses the stop's cancel (asyncio.wait_for
    before Python 3.12 can, and asyncpg's connect uses it): the start-up runs to its end, and
    on_shutdown must run after it, or what it made (the heartbeat) lives on in a stopped
    worker — seen once as a third live worker in another test's count."""
    entered = asyncio.Event()
    made: list[str] = []
    shut_down: list[list[str]] = []

    async def on_startup(ctx: dict[str, Any]) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # a connect in progress
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()  # the cancel is lost on its way
        made.append("heartbeat")

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        shut_down.append(list(made))

    options = worker_options(worker_settings) | {
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "handle_signals": False,
    }
    worker = HealingWorker(**options)
    running = asyncio.create_task(worker.async_run())
    await asyncio.wait_for(entered.wait(), 10)

    await asyncio.wait_for(worker.close(), 10)

    assert shut_down == [["heartbeat"]]  # once, after the start-up's end
    assert worker.main_task is not None and worker.main_task.done()
    await asyncio.wait({running}, timeout=10)


async def test_an_overdue_stop_reports_where_each_task_waits() -> None:
    """The evidence an overdue stop logs: each task's await chain down to what it awaits."""

    started = asyncio.Event()

    async def innermost_wait(event: asyncio.Event) -> None:
        started.set()
        await event.wait()

    async def outer(event: asyncio.Event) -> None:
        await innermost_wait(event)

    event = asyncio.Event()
    task = asyncio.create_task(outer(event))
    await started.wait()  # the task set it in the step that ends in the event's wait
    chain = _await_chain(task.get_coro())
    event.set()
    await task
    assert [line.rsplit(" ", 1)[1] for line in chain[:3]] == ["outer", "innermost_wait", "wait"]
    assert "Future" in chain[-1]


async def test_a_picked_job_is_held_for_one_lease_until_its_claim(
    worker_settings: Settings, redis: Redis
) -> None:
    """The in-progress key a pick sets lives one lease, not the job's whole timeout: a worker
    killed between its pick and its claim left the job held, and its task pending and never
    enqueued again, for JOB_TIMEOUT_SECONDS plus AI_SLOT_WAIT_SECONDS (C1 met it once)."""
    picked = asyncio.Event()

    async def analyze_recording(ctx: dict[str, Any], task_id: str) -> None:
        picked.set()
        await asyncio.Event().wait()  # the claim has not happened yet

    task_id = str(uuid.uuid4())
    worker = healing_worker(
        worker_settings,
        functions=[func(analyze_recording, name=queue.ANALYZE_FUNCTION)],
        cron_jobs=[],
        on_startup=None,
        on_shutdown=None,
        handle_signals=False,
    )
    try:
        assert await queue.enqueue_analysis(worker.pool, task_id, 1)
        await worker.start_jobs([queue.job_id_for(task_id, 1).encode()])
        await asyncio.wait_for(picked.wait(), 10)
        ttl_ms = await redis.pttl(in_progress_key_prefix + queue.job_id_for(task_id, 1))
        assert 0 < ttl_ms <= worker_settings.lease_seconds * 1000, ttl_ms
        # A cron job has no lease to renew its key: it keeps arq's whole timeout, or another
        # worker would run the same reconcile or cleanup again after one lease.
        cron_ttl_ms = worker._pick_job("cron:cleanup_expired:1764460620123").life_ms
        assert cron_ttl_ms == int(worker.in_progress_timeout_s * 1000) > ttl_ms
    finally:
        for running in worker.tasks.values():
            running.cancel()
        await asyncio.wait(worker.tasks.values(), timeout=10)
        await worker.pool.aclose(close_connection_pool=True)


async def test_a_poll_after_the_stop_ends_main_even_if_its_cancel_was_lost(
    worker_settings: Settings, redis: Redis
) -> None:
    """R3 met it: after SIGTERM's grace arq cancelled main, the cancel was lost on its way,
    and main polled on for ever (the process never exited). The stop is also kept as a flag,
    and the next poll ends main."""
    worker = healing_worker(
        worker_settings, on_startup=None, on_shutdown=None, cron_jobs=[], handle_signals=False
    )
    polls = 0
    polled = asyncio.Event()
    original = worker._reap_then_poll

    async def counting() -> None:
        nonlocal polls
        polls += 1
        polled.set()
        await original()

    worker._reap_then_poll = counting  # type: ignore[method-assign]
    running = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(polled.wait(), 10)
        worker._main_stopped = True  # what the stop sets beside its (here lost) cancel
        done, _ = await asyncio.wait({running}, timeout=10)
        assert done, "main still polling after the stop"
        assert worker.main_task is not None and worker.main_task.cancelled()
    finally:
        await worker.close()
        await asyncio.wait({running}, timeout=10)


async def test_a_job_this_worker_runs_is_not_started_beside_itself(
    worker_settings: Settings, redis: Redis
) -> None:
    """A job whose in-progress key lapsed while its run here waited for its claim (one lease
    from the pick, under load) is still in the queue: the next poll must not start it again in
    this worker (two runs of one job id shared arq's job_tasks entry and the lease
    bookkeeping: a KeyError at the end, the AI called twice)."""
    job_id = "some-task:1"
    await redis.zadd(queue.QUEUE_NAME, {job_id: 1})  # due; no in-progress key any more
    options = worker_options(worker_settings) | {"max_jobs": 2, "handle_signals": False}
    worker = HealingWorker(**options)
    running = asyncio.get_running_loop().create_future()  # the run still going on here
    worker.tasks[job_id] = asyncio.ensure_future(running)
    try:
        await worker.start_jobs([job_id.encode()])
        assert worker.job_counter == 0 and worker.tasks[job_id] is not None
        assert not await redis.exists(in_progress_key_prefix + job_id)  # not picked
        running.set_result(None)
        await worker.tasks.pop(job_id)  # the run ended: the job may be picked again
        await worker.start_jobs([job_id.encode()])
        assert await redis.exists(in_progress_key_prefix + job_id)
    finally:
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await worker.pool.aclose(close_connection_pool=True)

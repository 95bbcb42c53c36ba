"""The worker process heals instead of stopping when Redis or PostgreSQL goes away.

arq's `Worker.main` ends at the first poll whose Redis command fails: the exception leaves its
poll loop, the worker finishes the jobs it holds and exits (and a job slot taken by a claim
whose pipeline failed is never given back). `HealingWorker` is arq's Worker with these
changes, each at one of arq's own methods:

- a poll (`_poll_iteration`: read the queue, start jobs, abort, reap, health key, cron) that
  fails because Redis does not answer is tried again with exponential backoff and full jitter,
  for as long as it takes, each failure logged and counted
  (`vocalborn_worker_dependency_retries{dependency="redis"}`); one recovery line when it
  succeeds again. The jobs it holds run on meanwhile, and each try forgets those that have
  finished, so that a stop during an outage waits only for the running ones.
- `start_jobs` claims all of a poll's jobs in one script (arq: four round trips per job),
  which also moves the fair order's virtual time on (app/analysis/lanes.py), and gives a
  job's slot back exactly once on every path (arq kept the slot of a claim whose pipeline
  failed, and after max_jobs such failures never took a job again).
- each poll first promotes the due wall-clock jobs (deferred retries, cron jobs) into the
  fair order (`queue.promote_due`), so that arq's read, lowest scores first, is the fair
  pick.
- a poll that filled every free job slot (more jobs may be due) is followed by the next one
  as soon as a share of the slots is free again (REFILL_SHARE), not only after the poll
  delay: a backlog is taken at the pace its jobs end (BullMQ's worker fetches its next job as
  it finishes one), and an idle queue is still polled every WORKER_POLL_DELAY_SECONDS.
- with an AI concurrency cap, a poll picks no more attempts than there are AI slots free
  (AI_PICK_WITHIN_CAP), so that what waits for the AI service waits in the fair queue; and a
  picked attempt is held (its in-progress key) for one lease, extended by the lease loop while
  its claim waits (worker/lease.py `claiming`), not for the job's whole timeout, so that a
  worker killed in between gives it back soon.
- `finish_job` sends arq's own commands for a job's end in one script through a group commit
  (app/redis_batch.py): the ends that come while one is in flight share one round trip (arq:
  a MULTI pipeline per job; 7.6% of a dispatch worker's samples).
- a stop waits for main to end before on_shutdown (a lost cancel let a start-up finish after
  it), and a stop overdue by STOP_OVERDUE_SECONDS logs where every task waits.
- at start, Redis is waited for the same way (arq tries once), and a stop runs on_shutdown
  before its best-effort, bounded delete of the health key (arq deleted the key first: with
  Redis down that failure skipped on_shutdown, or its retries outlasted the stop's grace).

PostgreSQL is not on the poll's path: a task's writes are retried by `durable()`, the
reconciler's tick counts and logs its own failure (worker/cron.py), the pg pool connects
lazily. Retrying is tenacity's, as in worker/durable.py.

Run it with `python -m worker` (worker/__main__.py); its liveness is `vocalborn worker-check`
(the heartbeat key, app/liveness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from arq.connections import create_pool
from arq.utils import timestamp_ms, to_ms
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from app.analysis import queue
from app.analysis.lanes import WALL_FLOOR_MS, LaneWeights
from app.causes import causes
from app.db import database_unreachable
from app.metrics import DEPENDENCY_RETRIES
from app.redis_batch import ScriptBatch
from app.settings import Settings, get_settings
from worker.context import WorkerDeps

log = logging.getLogger(__name__)

T = TypeVar("T")

# Backoff between tries while a dependency is down: full jitter, doubling from about this
# much up to BACKOFF_MAX_SECONDS, so that the worker is back within that long of the end of
# an outage of any length.
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
# How long a stop tries to delete arq's health key (it expires by itself).
HEALTH_KEY_DELETE_SECONDS = 1.0
# How long a stop waits for main to end after cancelling it, before cancelling it again.
MAIN_CANCEL_SECONDS = 0.1
# After a poll that filled every free job slot, the next comes once this share of max_jobs is
# free again (or after the poll delay, whichever is first): each poll costs a few round trips
# (promote, read, pick), so the slots are refilled in batches, not one poll per job's end.
REFILL_SHARE = 0.25
# A stop still running this long past its grace is overdue: what every task is waiting on is
# logged (a stop takes well under a second past the grace when nothing hangs).
STOP_OVERDUE_SECONDS = 5.0


def redis_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says Redis did not answer (refused, reset, timed out, loading: redis-py
    raises its own ConnectionError or TimeoutError for each), as opposed to a bug or a
    refused command. Never a BaseException such as CancelledError."""
    if not isinstance(exc, Exception):
        return False
    return any(isinstance(c, RedisConnectionError | RedisTimeoutError) for c in causes(exc))


def unreachable_dependency(exc: BaseException) -> str | None:
    """ "redis" or "postgresql" when `exc` says that dependency did not answer; else None."""
    if redis_unreachable(exc):
        return "redis"
    if database_unreachable(exc):  # not is_transient: a deadlock is no outage
        return "postgresql"
    return None


def redis_retrying(doing: str) -> AsyncRetrying:
    """tenacity's retrying for a try of `doing` that needs Redis: retried without end while
    the error says Redis does not answer (anything else is raised), each failure logged and
    counted in vocalborn_worker_dependency_retries{dependency="redis"}."""

    def before_sleep(state: RetryCallState) -> None:
        DEPENDENCY_RETRIES.labels("redis").inc()
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: redis does not answer (%r, try %d); retrying in %.2f s",
            doing, error, state.attempt_number, state.upcoming_sleep,
        )  # fmt: skip

    return AsyncRetrying(
        retry=retry_if_exception(redis_unreachable),
        wait=wait_random_exponential(multiplier=BACKOFF_FIRST_SECONDS, max=BACKOFF_MAX_SECONDS),
        before_sleep=before_sleep,
        reraise=True,
    )


async def until_redis_answers(doing: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, tried again (see `redis_retrying`) until Redis answers; one line logged when
    it answers after failing."""
    retrying = redis_retrying(doing)
    async for attempt in retrying:
        with attempt:
            result = await call()
    if retrying.statistics.get("attempt_number", 1) > 1:
        log.warning("%s: redis answers again", doing)
    return result


class HealingWorker(Worker):
    """arq's Worker that survives a Redis outage of any length (see the module's doc).

    `pick_lease_seconds`: how long an attempt's in-progress key lives when this worker picks it,
    until the attempt's claim holds a lease that renews it (worker/lease.py). arq gives it
    the job's whole timeout: a worker killed between its pick and its claim then left the
    job held, its task pending and never enqueued again, for that long (JOB_TIMEOUT_SECONDS
    plus AI_SLOT_WAIT_SECONDS). None: arq's."""

    def __init__(self, *args: Any, pick_lease_seconds: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._attempt_pick_ttl_ms = int((pick_lease_seconds or self.in_progress_timeout_s) * 1000)
        # Attempts the current poll may still pick (`_room_for_attempts`); None: no bound.
        self._ai_room: int | None = None
        # Set when a stop has cancelled main: the next poll ends it, should the cancel be lost.
        self._main_stopped = False
        # arq's poll loop runs without a pause of its own: each poll waits first (`_next_poll`)
        # for the poll delay, or for free slots while the last poll left a backlog.
        self._poll_every, self.poll_delay_s = self.poll_delay_s, 0.0
        self._refill_at = max(1, math.ceil(self.max_jobs * REFILL_SHARE))
        self._backlog = False  # the last poll filled every free slot
        self._refill = asyncio.Event()  # set when `_refill_due` turns true (bound at first use)
        self._polled_at: float | None = None  # when the last poll began (the loop's time)
        self._finisher: ScriptBatch | None = None  # finish_job's group commit (bound at first use)

    def _pick_job(self, job_id: str) -> queue.PickedJob:
        """The job as a pick offers it, its id parsed once: its in-progress key's life is one
        lease for an attempt at a task (its claim then renews it), arq's whole job timeout for
        a cron job (nothing renews that: a shorter one let another worker run the same cron
        job again)."""
        if queue.is_attempt_job(job_id):
            return queue.PickedJob(job_id, self._attempt_pick_ttl_ms, attempt=True)
        return queue.PickedJob(job_id, int(self.in_progress_timeout_s * 1000), attempt=False)

    async def main(self) -> None:
        """arq's main once Redis answers: its pool is created here unless given (arq tries
        once), and a given pool is PINGed until it answers (arq's first command at start,
        its server INFO, is not retried)."""
        if self._pool is None:
            self._pool = await until_redis_answers(
                "worker start",
                lambda: create_pool(
                    self.redis_settings,
                    job_deserializer=self.job_deserializer,
                    job_serializer=self.job_serializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                ),
            )
        pool = self._pool
        await until_redis_answers("worker start", pool.ping)
        await super().main()

    async def _poll_iteration(self) -> None:
        """arq's poll, tried again while Redis does not answer. Each try first forgets the
        jobs that have finished (arq does it only after its first Redis command), so that a
        stop during an outage waits only for the jobs still running. A poll after the stop
        has cancelled main ends main: that cancel can be lost on its way (seen in R3: main
        polled on for ever after it, and the process never exited)."""
        await self._next_poll()
        if self._main_stopped:
            raise asyncio.CancelledError("the worker is stopping")
        self._polled_at = asyncio.get_running_loop().time()
        await until_redis_answers("queue poll", self._reap_then_poll)

    async def _next_poll(self) -> None:
        """Wait for the next poll: WORKER_POLL_DELAY_SECONDS after the last one began, or
        sooner once REFILL_SHARE of the job slots are free while the last poll had filled
        them all (jobs may be waiting). The first poll waits for nothing."""
        if self._polled_at is None:
            return
        self._refill.clear()
        if self._refill_due():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._polled_at + self._poll_every):
                await self._refill.wait()

    def _refill_due(self) -> bool:
        """Whether the next poll is due before the poll delay: the last poll filled every
        free slot, REFILL_SHARE of them are free again, and jobs may be picked (not during a
        graceful stop: its polls pick nothing, so they would follow each other at once)."""
        return (
            self.allow_pick_jobs
            and self._backlog
            and self.max_jobs - self.job_counter >= self._refill_at
        )

    async def heart_beat(self) -> None:
        """arq's heart beat (the health key, then the cron jobs due within two poll delays,
        at least a second), its cron window from the poll delay as configured: arq reads it
        from poll_delay_s, which is 0 here (`_next_poll` waits instead)."""
        now = datetime.now(tz=self.timezone)
        await self.record_health()
        await self.run_cron(now, max(self._poll_every, 0.5))

    def _release_sem_dec_counter_on_complete(self) -> None:
        """arq's end of a job (its slot given back), which wakes the next poll when it is due
        (`_next_poll`)."""
        super()._release_sem_dec_counter_on_complete()
        if self._refill_due():
            self._refill.set()

    async def _reap_then_poll(self) -> None:
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # as arq: an error of run_job itself is raised
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            # Due retries and cron jobs take their place in the fair order before the read.
            await queue.promote_due(self.pool, self._lane_weights())
            self._ai_room = await self._room_for_attempts()
        await super()._poll_iteration()

    async def _room_for_attempts(self) -> int | None:
        """How many attempts this poll may pick: the AI slots free now, less this worker's
        attempts that hold none yet (they will take those first); None for no bound (no cap,
        AI_PICK_WITHIN_CAP false, or before start-up). An attempt picked with no slot free
        would wait in this worker, outside the fair order: the queue, not the workers, must
        hold what waits for the AI service, or a user's single task would wait behind every
        job the workers picked."""
        deps: WorkerDeps | None = self.ctx.get("deps")
        if deps is None or not deps.settings.ai_pick_within_cap:
            return None
        room = await deps.providers.room()
        if room is None:
            return None
        attempts = sum(
            not task.done() and queue.is_attempt_job(job_id) for job_id, task in self.tasks.items()
        )
        return max(room - max(attempts - deps.providers.slots.held, 0), 0)

    def _lane_weights(self) -> LaneWeights:
        """The lanes' weights, from the settings the worker's startup reads (the ctx's in
        tests)."""
        settings: Settings = self.ctx.get("settings") or get_settings()
        return LaneWeights.of(settings)

    async def close(self) -> None:
        """arq's close with on_shutdown before the health key's delete, and that delete
        best-effort (HEALTH_KEY_DELETE_SECONDS at most; the key expires by itself): arq deleted
        it first, and with Redis down its failure skipped on_shutdown (the leases, the pools),
        or its retries outlasted the stop's grace."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        await self._main_ended()
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values())
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        try:
            async with asyncio.timeout(HEALTH_KEY_DELETE_SECONDS):
                await self.pool.delete(self.health_check_key)
        except Exception as exc:
            log.warning("worker stop: health key not deleted (%r); it expires", exc)
        with contextlib.suppress(Exception):
            await self.pool.aclose(close_connection_pool=True)
        self._pool = self._finisher = None

    async def _wait_for_tasks_to_complete(self, signum: signal.Signals) -> None:
        """arq's end of a graceful stop (the grace, then a cancel of the jobs and of main),
        main's stop then also kept as a flag its next poll obeys."""
        await super()._wait_for_tasks_to_complete(signum)
        self._main_stopped = True

    def handle_sig(self, signum: signal.Signals) -> None:
        """arq's immediate stop, main's stop also kept as a flag its next poll obeys."""
        super().handle_sig(signum)
        self._main_stopped = True

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        """arq's graceful stop (no new jobs, the running ones get the grace, then a cancel),
        with a report of what every task waits on if the stop is overdue."""
        super().handle_sig_wait_for_completion(signum)
        overdue = self._job_completion_wait + STOP_OVERDUE_SECONDS
        self.loop.call_later(overdue, _report_overdue_stop, overdue)

    async def _main_ended(self) -> None:
        """Wait until main has ended, cancelling it again while it runs. A stop cancels main
        once, and a cancel can be lost on its way (asyncio.wait_for before Python 3.12, which
        asyncpg's connect uses; redis-py's issues 2028 and 2551): a start-up that loses it
        runs to its end and main goes on polling. on_shutdown must run after that, or it
        misses what the start-up made (its heartbeat then beats on in a stopped worker). Only
        `async_run` users (the tests) get here with main running: `run` closes after main."""
        main = self.main_task
        if main is None or main is asyncio.current_task():
            return
        while not main.done():
            main.cancel()
            await asyncio.wait({main}, timeout=MAIN_CANCEL_SECONDS)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs with the claim of every job of the poll in one script
        (`queue.pick`, which also moves the fair order's clock on) where arq sends WATCH,
        EXISTS, ZSCORE and a MULTI per job; each job's slot (arq's semaphore and job counter)
        is given back exactly once on every path: arq kept the slot of a claim whose pipeline
        raised, and after max_jobs such failures never took a job again."""
        room = self.max_jobs - self.job_counter
        # A job this worker still runs is never started beside itself. Its in-progress key is
        # extended while its claim waits (`Leases.claiming`); before that, a claim that waited
        # longer than a lease under load (500 jobs at once, the database pool busy) let the
        # next poll pick it again here, and the two runs shared arq's job_tasks entry and the
        # lease bookkeeping of one job id (KeyError at the end, a lease left unrenewed, the AI
        # called twice). Kept for a key that lapses anyway (its extension failed).
        offered = [job_id for job_id in map(bytes.decode, job_ids) if not self._runs_here(job_id)]
        self._backlog = bool(offered) and room <= 0
        if not offered or room <= 0:
            return
        # The room's slots are taken before the pick (never waited for: the semaphore holds
        # max_jobs + 1, this poll one, each running job one) and those not started given back.
        held = 0
        try:
            for _ in range(room):
                await self.sem.acquire()
                self.job_counter = self.job_counter + 1
                held += 1
            jobs = [self._pick_job(job_id) for job_id in offered]
            # Attempts no more than the AI slots free (`_ai_room`); what waits for the AI
            # service waits in the queue, in its fair place, not in this worker.
            started = await queue.pick(self.pool, jobs, timestamp_ms(), room, self._ai_room)
        except BaseException:
            self._give_back(held)
            raise
        self._give_back(held - len(started))  # held elsewhere, finished, or deferred
        self._backlog = len(started) >= room
        for job_id, score in started.items():
            # arq's run_job takes the score for the job's due time (its log's "delayed=" and
            # ctx["score"]): a fair tag (app/analysis/lanes.py) is no time, and the job was due
            # when it was enqueued.
            due = int(score) if score >= WALL_FLOOR_MS else timestamp_ms()
            task = self.loop.create_task(self.run_job(job_id, due))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's finish_job, the same commands in one script (`queue.FINISH_JOB`) sent through
        a group commit: the jobs that end while another's finish is in flight share one round
        trip (arq: a MULTI pipeline each). Raises what Redis raised for this finish, or, when
        Redis could not be reached, for the finish it queued behind (app/redis_batch.py; arq
        would try each on its own): the job then stays held until its in-progress key expires,
        and runs again, as after arq's own failed finish. A script error (none with this
        service's values: a result is kept 3600 s or not at all) stops the script where it
        was, where arq's MULTI would have run the other commands."""
        if self._finisher is None:
            self._finisher = ScriptBatch(self.pool, queue.FINISH_JOB)
        keys, args = queue.finish_job_call(
            self.queue_name,
            job_id,
            finish=finish,
            result=result_data,
            result_life_ms=None if keep_result_forever else to_ms(result_timeout_s),
            increment=incr_score,
            keep_in_progress_ms=to_ms(keep_in_progress),
        )
        await self._finisher(keys, args)

    def _runs_here(self, job_id: str) -> bool:
        """Whether this worker is running `job_id` now (arq's run_job task, not yet done)."""
        task = self.tasks.get(job_id)
        return task is not None and not task.done()

    def _give_back(self, count: int) -> None:
        """`count` job slots (semaphore and job counter) back, as a job's end gives its own."""
        for _ in range(count):
            self._release_sem_dec_counter_on_complete()


def _report_overdue_stop(after: float) -> None:
    """Log, as one warning, where each task of the stopping worker waits (its await chain,
    innermost last): the evidence for a stop that hangs."""
    chains = [
        f"{task.get_name()}: " + " -> ".join(_await_chain(task.get_coro()))
        for task in asyncio.all_tasks()
    ]
    log.warning("stop still running %.0f s after the signal; tasks:\n%s", after, "\n".join(chains))


def _await_chain(awaitable: object) -> list[str]:
    """file:line function of each coroutine in the chain `awaitable` is suspended in, then
    what the innermost one awaits."""
    chain: list[str] = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        if frame is None:
            chain.append(repr(awaitable)[:120])
            break
        chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
    return chain

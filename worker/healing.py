"""The worker process heals instead of stopping when Redis or PostgreSQL goes away.

arq's `Worker.main` ends at the first poll whose Redis command fails: the exception leaves its
poll loop, the worker finishes the jobs it holds and exits (and a job slot taken by a claim
whose pipeline failed is never given back). `HealingWorker` is arq's Worker with these
changes, each at one of arq's own methods:

- a poll (`_poll_iteration`: read the queue, start jobs, abort, reap, health key, cron) that
  fails because Redis does not answer is tried again with exponential backoff and full jitter,
  for as long as it takes, each failure logged and counted
  (`vocalborn_worker_dependency_retries{dependency="redis"}`); one recovery line when it
  succeeds again. The jobs it holds run on meanwhile.
- `start_jobs` gives back the slot of a job whose claim pipeline failed.
- the connection to Redis at start is waited for the same way (arq tries it once here), and a
  stop while Redis is down still runs on_shutdown (arq's close gave up at its first Redis
  command, before it).

PostgreSQL is not on the poll's path: a task's writes are retried by `durable()`, the
reconciler's tick counts and logs its own failure (worker/cron.py), the pg pool connects
lazily. Retrying is tenacity's, as in worker/durable.py.

Run it with `python -m worker` (worker/__main__.py); `arq --check worker.main.WorkerSettings`
still reads its health key.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from arq.connections import create_pool
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from app.metrics import DEPENDENCY_RETRIES
from worker.durable import is_transient
from worker.retry import causes

log = logging.getLogger(__name__)

T = TypeVar("T")

# Backoff between tries while a dependency is down: full jitter, doubling from about this
# much up to BACKOFF_MAX_SECONDS, so that the worker is back within that long of the end of
# an outage of any length.
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0


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
    if is_transient(exc):
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
    """arq's Worker that survives a Redis outage of any length (see the module's doc)."""

    async def main(self) -> None:
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
        await super().main()

    async def _poll_iteration(self) -> None:
        await until_redis_answers("queue poll", super()._poll_iteration)

    async def close(self) -> None:
        original = self.on_shutdown
        shut_down = False

        async def on_shutdown(ctx: dict[str, Any]) -> None:
            nonlocal shut_down
            shut_down = True
            if original is not None:
                await original(ctx)

        self.on_shutdown = on_shutdown
        try:
            await super().close()
        except Exception as exc:
            # arq's close waits for the jobs, deletes its health key, runs on_shutdown, closes
            # its pool: with Redis down the first failure skipped the rest.
            if shut_down or self._pool is None or not redis_unreachable(exc):
                raise
            log.warning("worker stop: redis does not answer (%r); its health key expires", exc)
            await on_shutdown(self.ctx)
            with contextlib.suppress(Exception):
                await self._pool.aclose()
            self._pool = None
        finally:
            self.on_shutdown = original

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # arq takes a slot (its semaphore and job counter) before the claim's pipeline and
        # gives it back on every path but an exception from that pipeline: one at a time, so
        # that an exception means exactly one slot to give back.
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except Exception:
                self._release_sem_dec_counter_on_complete()
                raise

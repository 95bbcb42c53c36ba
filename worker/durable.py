"""The two kinds of I/O around an attempt's outcome (architecture §4):

- `durable`: a write that decides the outcome (claim, success, retry, failure, cancel, hand-back)
  goes to PostgreSQL, the source of truth. A transient database error (a dropped or refused
  connection, a server shutting down or out of connections, a serialization failure) is retried
  with exponential backoff and full jitter until a deadline the caller sets (worker/outcome.py:
  one lease past the attempt's lease); anything else is raised at once.
- `after_commit`: what follows a committed outcome and touches Redis (breaker bookkeeping,
  publishing, re-enqueueing) is best effort: retried for a short while, then logged and counted.
  It can never change the committed outcome.

Retrying is tenacity's (a maintained library), not a loop of ours.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from app.causes import causes
from app.db import is_dead_connection
from app.metrics import AFTER_COMMIT_FAILURES, DB_WRITE_RETRIES

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATE classes that say "try again": connection exceptions, insufficient resources, operator
# intervention (admin shutdown, cannot connect now), serialization failure, deadlock.
TRANSIENT_SQLSTATES = ("08", "53", "57P", "40001", "40P01")
# The longest first wait of `durable` (tenacity's first wait_random_exponential(0.05) bound).
FIRST_WAIT_SECONDS = 0.05


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may succeed if the same statement is sent again. Never a
    BaseException such as CancelledError, whatever it was raised during: a cancel must not be
    retried away."""
    if not isinstance(exc, Exception):
        return False
    for cause in causes(exc):
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, OperationalError | InterfaceError | OSError):
            return True  # OSError: refused, reset, timed out (TimeoutError is one)
        if is_dead_connection(cause):
            return True  # asyncpg itself: its connection closed, or left in a broken state
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(TRANSIENT_SQLSTATES):
            return True
    return False


def _until(deadline: float) -> Callable[[RetryCallState], bool]:
    """Stop when the next try would start after `deadline` (time.monotonic())."""

    def stop(state: RetryCallState) -> bool:
        return time.monotonic() + (state.upcoming_sleep or 0.0) >= deadline

    return stop


async def durable(
    write: Callable[[], Awaitable[T]], name: str, deadline: float, max_wait: float
) -> T:
    """Run the outcome write `write` (named `name` in logs and metrics), retrying transient
    database errors until it succeeds or the next try would start after `deadline`
    (time.monotonic()). Waits between tries are full-jitter
    exponential, at most `max_wait` seconds (a fraction of the lease, so that the write is
    tried again soon after an outage ends). Raises the last error then, or any non-transient
    error at once. The first try runs without the retry machinery (tenacity's objects per
    write were about 5 % of a worker's CPU in bench dispatch); its failure enters it."""
    try:
        return await write()
    except Exception as exc:
        # The first wait as tenacity's first would be (full jitter), so that the writes of
        # every job in flight do not all come back at once.
        first_wait = random.uniform(0.0, min(FIRST_WAIT_SECONDS, max_wait))
        if not is_transient(exc) or time.monotonic() + first_wait >= deadline:
            raise
        _retrying(name, exc, first_wait)
    await asyncio.sleep(first_wait)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        _retrying(name, error, state.upcoming_sleep)

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.05, max=max_wait),
        stop=_until(deadline),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            result = await write()
    return result


def _retrying(name: str, error: BaseException | None, sleep: float) -> None:
    DB_WRITE_RETRIES.labels(name).inc()
    log.warning("%s write failed (%r); retrying in %.2f s", name, error, sleep)


async def after_commit(effect: str, call: Callable[[], Awaitable[object]], within: float) -> bool:
    """Run `call`, an effect that follows a committed outcome, retrying any error for up to
    `within` seconds. Never raises: a failure for good is logged and counted
    (`vocalborn_after_commit_failures{effect}`); returns whether it happened. The first try
    runs without the retry machinery, as in `durable`."""
    started = time.monotonic()
    try:
        await call()
        return True
    except Exception as exc:
        left = within - (time.monotonic() - started)  # the budget counts the first try
        if left <= 0:
            return _failed_for_good(effect, exc)
    retrying = AsyncRetrying(
        wait=wait_random_exponential(multiplier=0.1, max=1.0),
        stop=stop_after_delay(left),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await call()
    except Exception as exc:
        return _failed_for_good(effect, exc)
    return True


def _failed_for_good(effect: str, exc: BaseException) -> bool:
    AFTER_COMMIT_FAILURES.labels(effect).inc()
    log.warning("%s after the commit failed for good: %r", effect, exc)
    return False

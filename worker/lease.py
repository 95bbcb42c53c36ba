"""Keeps an attempt's lease alive while its AI call runs, whatever the AI service is doing.

Every quarter of the lease it extends `lease_expires_at` in the row (and arq's in-progress key,
best effort) to one lease and a quarter from then (`lease_span`): at every moment at least one
whole lease remains, so a PostgreSQL or Redis outage shorter than the lease never costs the
lease, and a killed worker's task is picked up again after at most a lease and a quarter. If the row
says the attempt lost the task, or that a cancel was requested, it resolves `stopped`, which
the attempt waits on beside its AI call.

It cancels nothing and is never stopped by cancelling a command in flight: `close()` sets an
event that the loop checks between renewals and waits a bounded time for it to end. A renewal
stuck in a command (redis-py can swallow a cancellation inside its timeout block, its issues
2028 and 2551) is left to end by itself; it can never hold the attempt open.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from typing import Any

from app.analysis import lifecycle, queue
from app.analysis.lifecycle import Claim
from worker.context import WorkerDeps

log = logging.getLogger(__name__)

# Renewals come every this share of the lease; each takes the lease plus one such period.
RENEW_SHARE = 0.25
# After a failed renewal, the next one comes after this share of the lease.
RETRY_SHARE = 0.1
# How long `close()` waits for a renewal in flight before leaving it to end by itself.
CLOSE_WAIT_SECONDS = 2.0


def lease_span(lease: float) -> float:
    """What a claim or a renewal takes, in seconds, for a lease of `lease` seconds: one lease
    and one renewal period, so that one whole lease is left when the next renewal is due."""
    return lease * (1 + RENEW_SHARE)


class StopReason(enum.StrEnum):
    """Why the keeper stopped an attempt's AI call."""

    CANCEL_REQUESTED = "cancel_requested"
    LEASE_LOST = "lease_lost"


class LeaseKeeper:
    """One attempt's lease, renewed until `close()`; `stopped` resolves when the row says the
    attempt must stop."""

    def __init__(self, deps: WorkerDeps, claimed: Claim, job_id: str, deadline: float) -> None:
        """`deadline`: when the lease taken by the claim ends (time.monotonic())."""
        self._deps = deps
        self._claimed = claimed
        self._job_id = job_id
        self._closing = asyncio.Event()
        self._renewals: asyncio.Task[None] | None = None
        self._hold: asyncio.Task[None] | None = None
        self.stopped: asyncio.Future[StopReason] = asyncio.get_running_loop().create_future()
        self.deadline = deadline

    @property
    def lease(self) -> float:
        return self._deps.settings.lease_seconds

    def start(self) -> None:
        """Start renewing; the first step cuts arq's in-progress marker to a `lease_span`."""
        self._renewals = asyncio.create_task(self._renew_until_closed())

    async def close(self, hold_for: float = 0.0) -> None:
        """Stop renewing: returns within CLOSE_WAIT_SECONDS, whatever a renewal is doing.
        With `hold_for` (seconds), arq's in-progress key is then made to last that long: what
        the attempt still has to do once the keeper stops (commit its outcome, then its
        effects), so that arq does not start the job a second time meanwhile. That extension
        is tried again, soon, until it succeeds or the hold is over (Redis may be down just
        now), by a task that `release()` ends."""
        self._closing.set()
        if self._renewals is not None:
            await self._bounded(self._renewals, "lease renewal")
        if hold_for > 0:
            # Beside the commit, not before it: a Redis outage must not delay the outcome.
            self._hold = asyncio.create_task(self._hold_in_progress(time.monotonic() + hold_for))

    def release(self) -> None:
        """The attempt is over: stop holding arq's in-progress key (arq removes it now)."""
        if self._hold is not None and not self._hold.done():
            self._hold.cancel()  # not awaited: a command in flight may never acknowledge

    async def _hold_in_progress(self, until: float) -> None:
        while (left := until - time.monotonic()) > 0:
            if await self._extend_in_progress(left):
                return
            await asyncio.sleep(min(self.lease * RETRY_SHARE, left))  # a period between tries

    async def _bounded(self, task: asyncio.Task[Any], what: str) -> None:
        done, _ = await asyncio.wait([task], timeout=CLOSE_WAIT_SECONDS)
        if not done:
            log.warning("%s of %s still in flight; left to end", what, self._job_id)
            task.cancel()  # not awaited: it may never acknowledge

    def observe(self, cancel_requested: bool | None) -> None:
        """What a fenced write of this attempt said: None, it lost the task; True, a cancel
        was requested. Either resolves `stopped`, unless the keeper is closing."""
        if cancel_requested is None:
            self._stop(StopReason.LEASE_LOST)
        elif cancel_requested:
            self._stop(StopReason.CANCEL_REQUESTED)

    def _stop(self, reason: StopReason) -> None:
        if not self.stopped.done() and not self._closing.is_set():
            self.stopped.set_result(reason)

    async def _renew_until_closed(self) -> None:
        renewed = await self._extend_in_progress()
        while not await self._closed_within(
            self.lease * RENEW_SHARE if renewed else self.lease * RETRY_SHARE
        ):
            # After a failure, soon again: an outage shorter than the lease costs nothing.
            renewed = await self._renew() and await self._extend_in_progress()

    async def _renew(self) -> bool:
        """Extend the lease in the row; False when that failed (to be tried again soon)."""
        started = time.monotonic()
        try:
            cancel_requested = await lifecycle.renew_lease(
                self._deps.engine, self._claimed, lease_span(self.lease)
            )
        except Exception as exc:
            log.warning("lease renewal of %s failed (%r); retrying", self._job_id, exc)
            return False
        if cancel_requested is not None:
            self.deadline = started + lease_span(self.lease)
        self.observe(cancel_requested)
        return True

    async def _closed_within(self, seconds: float) -> bool:
        """Wait up to `seconds` for `close()`: True if it came."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        return self._closing.is_set()

    async def _extend_in_progress(self, seconds: float | None = None) -> bool:
        """arq's in-progress key follows the lease (or lasts `seconds`), so that arq starts a
        dead worker's job again after about a lease and a quarter (the row still decides who
        runs it). False on failure: tried again soon, or arq would start the job a second time
        beside this attempt."""
        ttl_ms = int((seconds or lease_span(self.lease)) * 1000)
        try:
            await queue.extend_in_progress(self._deps.arq, self._job_id, ttl_ms)
        except Exception as exc:
            log.warning("extending arq's in-progress key of %s failed: %r", self._job_id, exc)
            return False
        return True

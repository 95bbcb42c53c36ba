"""Relays an attempt's progress to its row and its live-progress clients, off the AI service's
read loop: `report` never waits, so a slow PostgreSQL or Redis can never stretch the AI call
(nor turn into its timeout). One task writes the newest state (states that come faster than a
write are coalesced into the newest) and publishes it, until the outcome is known: a state
not yet written then is dropped, since the outcome's write follows (an AI service that
answers at once sends its progress lines with its result, and they cost no write). What the
fenced write says (the task was lost, a cancel was requested) goes to the attempt's lease. It
stops on an event with a bounded wait, never by cancelling a command in flight. The writes
of a worker's relays that come while one is in flight go out together (`progress_writes`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from app.analysis import lifecycle
from app.analysis.lifecycle import Claim, Reported
from app.analysis.status import Row
from app.group_commit import GroupCommit
from worker.context import ProgressWrites, WorkerDeps
from worker.lease import CLOSE_WAIT_SECONDS, Lease

log = logging.getLogger(__name__)

# A progress statement not answered by then is cancelled: a row held locked by some other
# transaction must not hold up the writes grouped with it (nor those queued behind them) for
# longer than a relay's close would wait.
WRITE_TIMEOUT_SECONDS = CLOSE_WAIT_SECONDS


def progress_writes(pg: asyncpg.Pool) -> ProgressWrites:
    """A worker's progress writes as one group commit (app/group_commit.py): a write that finds
    none in flight is its own statement (`lifecycle.report_progress`); those that come
    meanwhile go out in one statement (`lifecycle.report_progress_many`). Each answers its
    task's status columns, None when its attempt lost the task. A failed statement fails the
    writes it carried, and a refused or reset connection the writes queued behind it too (best
    effort: the relays log it and go on); a statement is cancelled after
    WRITE_TIMEOUT_SECONDS (TimeoutError)."""

    async def one(report: Reported) -> Row | None:
        claimed, progress, step = report.claimed, report.progress, report.step
        return await lifecycle.report_progress(pg, claimed, progress, step, WRITE_TIMEOUT_SECONDS)

    async def many(reports: Sequence[Reported]) -> list[Row | None]:
        return await lifecycle.report_progress_many(pg, reports, WRITE_TIMEOUT_SECONDS)

    return GroupCommit(one, many, fails_queued=(ConnectionError,))


class ProgressRelay:
    def __init__(self, deps: WorkerDeps, claimed: Claim, lease: Lease) -> None:
        self._deps = deps
        self._claimed = claimed
        self._lease = lease
        self._newest: tuple[int, str] | None = None  # (percent 0..100, step code)
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._relay())

    def report(self, progress: int, step: str) -> None:
        """The attempt's newest progress (percent, step code); returns at once."""
        self._newest = (progress, step)
        self._wake.set()

    def outcome_known(self) -> None:
        """The attempt's outcome is known (the AI service's result has come): no state is
        written from now on; returns at once (`close` still waits for a write in flight)."""
        self._closing = True
        self._wake.set()

    async def close(self) -> None:
        """Stop relaying (a state not yet written is dropped: the outcome write follows);
        returns within CLOSE_WAIT_SECONDS, whatever a write is doing."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait([self._task], timeout=CLOSE_WAIT_SECONDS)
        if not done:
            log.warning("progress relay of %s still in flight; left to end", self._claimed.task_id)
            self._task.cancel()  # not awaited: it may never acknowledge

    async def _relay(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            if self._newest is None:
                continue
            progress, step = self._newest
            try:
                row = await self._deps.progress(Reported(self._claimed, progress, step))
            except Exception as exc:  # best effort: the next state or the outcome follows
                log.warning("progress of %s not written: %r", self._claimed.task_id, exc)
                continue
            if self._closing:
                return
            await self._deps.publisher.publish_row(row)
            self._lease.observe(None if row is None else row["cancel_requested_at"] is not None)

"""Relays an attempt's progress to its row and its live-progress clients, off the AI service's
read loop: `report` never waits, so a slow PostgreSQL or Redis can never stretch the AI call
(nor turn into its timeout). One task writes the newest state (states that come faster than a
write are coalesced into the newest) and publishes it, until the outcome is known: a state
not yet written then is dropped, since the outcome's write follows (an AI service that
answers at once sends its progress lines with its result, and they cost no write). What the
fenced write says (the task was lost, a cancel was requested) goes to the attempt's lease. It
stops on an event with a bounded wait, never by cancelling a command in flight."""

from __future__ import annotations

import asyncio
import logging

from app.analysis import lifecycle
from app.analysis.lifecycle import Claim
from worker.context import WorkerDeps
from worker.lease import CLOSE_WAIT_SECONDS, Lease

log = logging.getLogger(__name__)


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
                row = await lifecycle.report_progress(self._deps.pg, self._claimed, progress, step)
            except Exception as exc:  # best effort: the next state or the outcome follows
                log.warning("progress of %s not written: %r", self._claimed.task_id, exc)
                continue
            if self._closing:
                return
            await self._deps.publisher.publish_row(row)
            self._lease.observe(None if row is None else row["cancel_requested_at"] is not None)

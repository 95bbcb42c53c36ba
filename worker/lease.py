"""Keeps an attempt's lease alive while it runs, whatever the AI service is doing.

Every third of the lease it extends `lease_expires_at` in the row and arq's in-progress key,
so a killed worker's task is picked up again in about one lease time. If the row says the
attempt lost the task, or that a cancel was requested, the attempt is cancelled.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from types import TracebackType

from app.analysis import lifecycle, queue
from app.analysis.lifecycle import Claim
from worker.context import WorkerDeps

log = logging.getLogger(__name__)


class StopReason(enum.StrEnum):
    CANCEL_REQUESTED = "cancel_requested"
    LEASE_LOST = "lease_lost"


class LeaseKeeper:
    def __init__(self, deps: WorkerDeps, claimed: Claim, job_id: str) -> None:
        self._deps = deps
        self._claimed = claimed
        self._job_id = job_id
        self._attempt_task: asyncio.Task[object] | None = None
        self._renewals: asyncio.Task[None] | None = None
        self.stop_reason: StopReason | None = None

    @property
    def lease(self) -> float:
        return self._deps.settings.lease_seconds

    async def __aenter__(self) -> LeaseKeeper:
        self._attempt_task = asyncio.current_task()
        await queue.extend_in_progress(self._deps.arq, self._job_id, int(self.lease * 1000))
        self._renewals = asyncio.create_task(self._renew_forever())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renewals is not None:
            self._renewals.cancel()
            # wait() rather than await: a cancellation of this task must not be swallowed.
            await asyncio.wait([self._renewals])

    def observe(self, cancel_requested: bool | None) -> None:
        """What a fenced write of this attempt said: None, it lost the task; True, a cancel
        was requested. Either stops the attempt."""
        if cancel_requested is None:
            self.stop(StopReason.LEASE_LOST)
        elif cancel_requested:
            self.stop(StopReason.CANCEL_REQUESTED)

    def stop(self, reason: StopReason) -> None:
        """Cancel the attempt (from the renewal loop or a progress write)."""
        if self.stop_reason is None and self._attempt_task is not None:
            self.stop_reason = reason
            self._attempt_task.cancel()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)  # a period, not a wait for a condition
            try:
                cancel_requested = await lifecycle.renew_lease(
                    self._deps.engine, self._claimed, self.lease
                )
                await queue.extend_in_progress(self._deps.arq, self._job_id, int(self.lease * 1000))
            except Exception:
                log.warning("lease renewal of %s failed; retrying", self._job_id, exc_info=True)
                continue
            self.observe(cancel_requested)

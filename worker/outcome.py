"""Phases 2 and 3 of an attempt: its outcome committed to PostgreSQL, then its Redis effects.

Every outcome (success, retry, deferral, failure, cancel, hand-back) is one statement fenced by
the attempt number, written through `durable`: retried through transient database errors for
up to one lease past the end of the attempt's lease. Retrying past it is safe (the fence makes
a write of an attempt that lost the task match nothing) and is what makes an outage shorter
than the lease cost nothing whenever it starts. Only after the commit come the effects that
touch Redis (breaker bookkeeping, publishing, re-enqueueing), best effort through
`after_commit`: none of them can change the committed outcome.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.ai_client.errors import AnalysisError, ErrorClass, NetworkError, ServiceBusy
from app.ai_client.wire import AIResult
from app.analysis import lifecycle, queue
from app.analysis.lanes import LaneWeights
from app.analysis.lifecycle import Claim, Provenance
from app.analysis.status import Row
from app.metrics import TASK_ERRORS, TASK_PROCESSING, TASK_RETRIES, TASKS_FINISHED
from worker.breaker import CircuitBreaker, Decision
from worker.context import WorkerDeps
from worker.durable import after_commit, durable
from worker.retry import RETRY_BUDGETS, SERVICE_FAILURES

log = logging.getLogger(__name__)

# The longest wait between two tries of an outcome write, as a share of the lease.
RETRY_WAIT_SHARE = 0.1
# The time all of an attempt's after-commit effects share for retrying (seconds).
AFTER_COMMIT_SECONDS = 5.0

Write = Callable[[], Awaitable[Row | None]]


class NotRecorded(Exception):
    """An outcome could not be written in time: the task runs again after its lease."""


@dataclass(frozen=True, slots=True)
class CircuitOpen:
    """The breaker kept the AI call from being made; retry in this many seconds."""

    retry_in: float


@dataclass(frozen=True, slots=True)
class SlotWaitOver:
    """No AI slot came free within AI_SLOT_WAIT_SECONDS: the task goes back to the queue."""

    waited: float  # seconds


@dataclass(frozen=True, slots=True)
class Success:
    """The AI call's result and who produced it."""

    result: AIResult
    provenance: Provenance


class Recorder:
    """Commits one attempt's outcome, then its effects. `lease_deadline` (time.monotonic()):
    when the attempt's lease ends, as far as this worker knows."""

    def __init__(self, deps: WorkerDeps, claimed: Claim, lease_deadline: float) -> None:
        self.deps = deps
        self.claimed = claimed
        self.lease_deadline = lease_deadline
        self._effects_deadline: float | None = None
        # The breaker of the provider called last, and how it let the call through (both set
        # by the attempt before the call): its success resets the breaker's count only if
        # nothing was counted since.
        self.breaker: CircuitBreaker = deps.providers.first.breaker
        self.admitted = Decision(True)

    @property
    def write_deadline(self) -> float:
        """Outcome writes are tried until one lease after the lease's end."""
        return self.lease_deadline + self.deps.settings.lease_seconds

    # -- outcomes -------------------------------------------------------------------------
    async def succeed(self, success: Success) -> str:
        row = await self._commit(
            "success",
            lambda: lifecycle.succeed(
                self.deps.pg, self.claimed, success.result, success.provenance
            ),
        )
        if row is None or row["status"] != "success":
            await self._publish(row)
            return "stale: result discarded"
        TASKS_FINISHED.labels("success").inc()
        TASK_PROCESSING.observe((row["completed_at"] - row["started_at"]).total_seconds())
        breaker, admitted = self.breaker, self.admitted
        await self._after_commit("breaker", lambda: breaker.record_success(admitted))
        await self._publish(row)
        return "success"

    async def cancelled(self) -> str:
        """A cancel was requested while the AI call ran."""
        row = await self._commit("cancel", self._mark_cancelled, then_cancel=False)
        await self._publish(row)
        return self._count_final(row, "cancelled", "stale: lease lost")

    async def circuit_open(self, circuit: CircuitOpen) -> str:
        """No call was made: deferred without budget, or failed once deferred too often."""
        if self._may_defer("circuit_open"):
            return await self.retry_later(circuit.retry_in, "circuit_open", budget=None)
        return await self.settle(NetworkError("The AI service circuit stayed open"))

    async def slot_wait_over(self, over: SlotWaitOver) -> str:
        """No AI slot came free in time: queued again, due now, spending no budget and no
        deferral (a long queue for the AI service is no failure of the task)."""
        message = f"Waited {over.waited:.0f} s for the AI service; queued again"
        return await self.retry_later(0.0, "ai_slot_wait", budget=None, message=message)

    async def settle(self, error: AnalysisError, *, ai_called: bool = False) -> str:
        """A failed attempt: deferred, retried or failed by its error class. `ai_called`: the
        AI service's own call failed; only that counts for the circuit breaker."""
        error_class = error.error_class
        TASK_ERRORS.labels(error_class.value).inc()
        if isinstance(error, ServiceBusy) and self._may_defer("ai_busy"):
            # Backpressure, not ill health: wait as told, up to MAX_DEFERRALS times.
            delay = (error.retry_after or 1.0) * random.uniform(1.0, 1.5)
            return await self.retry_later(delay, "ai_busy", budget=None)
        # A busy service (still busy past MAX_DEFERRALS) spends the network budget, but it is
        # healthy: it never counts for the circuit breaker.
        busy = isinstance(error, ServiceBusy)
        unhealthy = ai_called and error_class in SERVICE_FAILURES and not busy
        so_far = self.claimed.retry_counts.get(error_class.value, 0)
        policy = self.deps.policy
        if policy.should_retry(error_class, so_far):
            delay = policy.delay(error_class, so_far, error.retry_after)
            budget = RETRY_BUDGETS[error_class]
            return await self.retry_later(
                delay, error_class.value, message=error.message, budget=budget, unhealthy=unhealthy
            )
        return await self.give_up(error_class, error.message, unhealthy=unhealthy)

    async def give_up(
        self, error_class: ErrorClass, message: str, *, unhealthy: bool = False
    ) -> str:
        """Fail the task for good (or cancel it, if a cancel was requested meanwhile)."""
        row = await self._commit(
            "failure",
            lambda: lifecycle.fail(self.deps.pg, self.claimed, error_class.value, message),
        )
        if unhealthy:
            await self._after_commit("breaker", self.breaker.record_failure)
        await self._publish(row)
        return self._count_final(row, "failure", "stale: lease lost", f"failure: {error_class}")

    async def retry_later(
        self,
        delay: float,
        code: str,
        *,
        budget: int | None,
        message: str = "",
        unhealthy: bool = False,
    ) -> str:
        """A retry in `delay` seconds within `budget`, or with None a deferral, which spends
        no budget; re-enqueued after the commit (else the reconciler enqueues it)."""
        message = message or "The AI service is unavailable; the analysis will be retried"
        row = await self._commit(
            f"retry ({code})",
            lambda: lifecycle.schedule_retry(
                self.deps.pg,
                self.claimed,
                delay,
                code,
                message,
                budget=budget or 0,
                counted=budget is not None,
            ),
        )
        if unhealthy:
            await self._after_commit("breaker", self.breaker.record_failure)
        await self._publish(row)
        if row is None or row["status"] != "retry":
            return self._count_final(row, "retry", "stale: lease lost")
        TASK_RETRIES.labels(code).inc()
        await self._after_commit(
            "enqueue",
            lambda: queue.enqueue_analysis(
                self.deps.arq,
                self.claimed.task_id,
                self.claimed.attempt,
                defer_until=row["next_attempt_at"],
                flow=LaneWeights.of(self.deps.settings).flow(row["lane"], row["user_id"]),
            ),
        )
        # The error's own words in the worker's log line (for a deferral, the code says it).
        said = f"retry: {code} ({message})" if budget is not None else f"deferred: {code}"
        return said

    async def hand_back(self) -> str:
        """The job was cancelled by arq (an abort, the worker's shutdown, its timeout): the
        task is cancelled if that was requested, else handed back, due now, for the next
        worker, without counting a retry or a crash."""
        row = await self._commit(
            "hand-back", lambda: lifecycle.interrupt(self.deps.pg, self.claimed)
        )
        await self._publish(row)
        return self._count_final(row, "retry", "stale: lease lost", "handed back")

    # -- phase 2: the commit --------------------------------------------------------------
    async def _commit(self, name: str, write: Write, *, then_cancel: bool = True) -> Row | None:
        """Commit an outcome. Returns the row as it now stands for this attempt: moved as
        asked; cancelled, when a cancel requested meanwhile stopped `write` (`then_cancel`);
        as an earlier try of `write` left it, when that try's answer was lost; None when
        another attempt owns the task. Raises NotRecorded when no write got through in time."""
        row = await self._write(name, write)
        if row is None and then_cancel:
            row = await self._write("cancel", self._mark_cancelled)
        if row is None:
            row = await self._write("read", lambda: lifecycle.own_row(self.deps.pg, self.claimed))
        return row

    def _mark_cancelled(self) -> Awaitable[Row | None]:
        return lifecycle.mark_cancelled(self.deps.pg, self.claimed)

    async def _write(self, name: str, write: Write) -> Row | None:
        lease = self.deps.settings.lease_seconds
        try:
            return await durable(write, name, self.write_deadline, lease * RETRY_WAIT_SHARE)
        except Exception as exc:
            raise NotRecorded(f"the {name} write failed: {exc!r}") from exc

    def _may_defer(self, reason: str) -> bool:
        return self.claimed.retry_counts.get(reason, 0) < self.deps.settings.max_deferrals

    @staticmethod
    def _count_final(row: Row | None, intended: str, stale: str, said: str | None = None) -> str:
        """The outcome in words (`said`, or `intended`) when the row moved as intended, else
        its status (a cancel won); a final status is counted."""
        if row is None:
            return stale
        status = str(row["status"])
        if status in ("success", "failure", "cancelled"):
            TASKS_FINISHED.labels(status).inc()
        return (said or intended) if status == intended else status

    # -- phase 3: after the commit, best effort -------------------------------------------
    async def _after_commit(self, effect: str, call: Callable[[], Awaitable[object]]) -> None:
        now = time.monotonic()
        if self._effects_deadline is None:
            self._effects_deadline = now + AFTER_COMMIT_SECONDS
        await after_commit(effect, call, max(self._effects_deadline - now, 0.0))

    async def _publish(self, row: Row | None) -> None:
        """The status document of what was committed, to live-progress clients."""
        if row is not None:
            await self._after_commit("publish", lambda: self.deps.publisher.send_row(row))

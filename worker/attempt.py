"""One attempt at one analysis task, in three phases (DESIGN §4):

1. The AI call: the recording is streamed to the AI service while the lease keeper renews the
   lease beside it; progress is relayed best effort.
2. The outcome (success, retry, deferral, failure, cancel) is committed to PostgreSQL, the
   source of truth, fenced by the attempt number, and retried through transient database errors
   while the lease is still ours (`durable`). The lease keeper has stopped by then: nothing can
   cancel an attempt while it records its outcome.
3. After the commit, what touches Redis (breaker bookkeeping, publishing, re-enqueueing) is
   best effort (`after_commit`): it can never change the committed outcome.

Nothing that touches Redis before the AI call can turn into a retry of work that has not
failed: the breaker lets the call through when it cannot be read, arq's in-progress key and
the progress publishes are best effort.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import RowMapping

from app.ai_client.errors import (
    AIServiceError,
    AnalysisError,
    AnalysisTimeout,
    ErrorClass,
    NetworkError,
    ServiceBusy,
)
from app.ai_client.wire import AIResult, ProgressLine
from app.analysis import lifecycle, queue, steps
from app.analysis.lifecycle import Claim
from app.metrics import (
    AI_REQUESTS,
    TASK_ERRORS,
    TASK_PROCESSING,
    TASK_RETRIES,
    TASKS_FINISHED,
)
from worker.context import WorkerDeps
from worker.durable import after_commit, durable
from worker.lease import LeaseKeeper, StopReason
from worker.retry import RETRY_BUDGETS, SERVICE_FAILURES, classify

log = logging.getLogger(__name__)

# An AI call still running this long after its own deadline is abandoned: a task past its
# deadline plus this grace always leaves `processing`, whatever the call is stuck in.
DEADLINE_GRACE_SECONDS = 2.0
# How long an abandoned AI call is given to acknowledge its cancellation.
ABANDON_WAIT_SECONDS = 2.0
# The longest wait between two tries of an outcome write, as a share of the lease.
RETRY_WAIT_SHARE = 0.1
# The time all of an attempt's after-commit effects share for retrying.
AFTER_COMMIT_SECONDS = 5.0

Write = Callable[[], Awaitable[RowMapping | None]]


class NotRecorded(Exception):
    """An outcome could not be written before the lease ran out: the task runs again."""


class Attempt:
    def __init__(self, deps: WorkerDeps, claimed: Claim, job_id: str, lease_deadline: float):
        """`lease_deadline`: when the claim's lease ends (time.monotonic())."""
        self.deps = deps
        self.claimed = claimed
        self.job_id = job_id
        self._lease_deadline = lease_deadline
        self._last_progress: tuple[int, str] = (0, steps.UPLOADING.code)
        self._keeper: LeaseKeeper | None = None
        self._effects_deadline: float | None = None

    async def run(self) -> str:
        """Run the attempt to a committed outcome; returns it in words (for arq's log).
        Raises CancelledError (after handing the task back) when arq aborts the job or the
        worker shuts down."""
        return await _recorded(self.claimed, self._run())

    async def fail_now(self, error_class: ErrorClass, message: str) -> str:
        """Fail the task without calling the AI service (a crash loop)."""
        return await _recorded(self.claimed, self.give_up(error_class, message))

    async def _run(self) -> str:
        decision = await self.deps.breaker.before_call()
        if not decision.allowed:
            if self._may_defer("circuit_open"):
                return await self._retry_later(decision.retry_in, "circuit_open", budget=None)
            return await self._settle(NetworkError("The AI service circuit stayed open"))
        outcome = await self._analyse()
        if isinstance(outcome, StopReason):
            return await self._stopped(outcome)
        if isinstance(outcome, AnalysisError):
            return await self._settle(outcome, ai_called=True)
        return await self._succeed(outcome)

    # -- phase 1: the AI call ------------------------------------------------------------
    async def _analyse(self) -> AIResult | AnalysisError | StopReason:
        """The AI call beside the lease keeper: its result or error, or why the keeper stopped
        it. Both are done when this returns (the keeper within its bounded close)."""
        keeper = LeaseKeeper(self.deps, self.claimed, self.job_id, self._lease_deadline)
        self._keeper = keeper
        keeper.start()
        call = asyncio.create_task(self._call_ai())
        limit = self.deps.settings.ai_deadline_seconds + DEADLINE_GRACE_SECONDS
        either: list[asyncio.Future[Any]] = [call, keeper.stopped]
        try:
            await asyncio.wait(either, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # arq's abort, or the worker's shutdown
            await _abandon(call)
            await self._close_keeper(keeper)
            await self._hand_back()
            raise
        await self._close_keeper(keeper)
        if call.done():
            try:
                return call.result()
            except asyncio.CancelledError:  # not by us: something inside gave up the call
                return AIServiceError("The AI call was cancelled")
            except Exception as exc:
                return classify(exc)
        await _abandon(call)
        if keeper.stopped.done():
            return keeper.stopped.result()
        return AnalysisTimeout(f"No answer from the AI service within {limit:.0f} s")

    async def _close_keeper(self, keeper: LeaseKeeper) -> None:
        await keeper.close()
        self._lease_deadline = keeper.deadline

    async def _call_ai(self) -> AIResult:
        record = self.claimed
        started = time.monotonic()
        outcome = "error"
        try:
            async with asyncio.timeout(self.deps.settings.ai_deadline_seconds):
                result = await self.deps.ai.analyze(
                    self.deps.storage.read(record.audio_storage_key),
                    record.audio_content_type,
                    record.task_params,
                    f"{record.task_id}:{record.attempt}",
                    self._on_progress,
                )
            outcome = "ok"
            return result
        finally:
            AI_REQUESTS.labels(outcome).observe(time.monotonic() - started)

    async def _on_progress(self, line: ProgressLine) -> None:
        """Relay a progress line: written and published best effort (the lease keeper, not
        the progress writes, keeps the attempt alive)."""
        step = steps.ai_step(line.step, fallback=steps.step_for(self._last_progress[1]))
        progress = max(steps.overall_progress(line.progress), self._last_progress[0])
        if (progress, step.code) == self._last_progress:
            return
        self._last_progress = (progress, step.code)
        try:
            row = await lifecycle.report_progress(
                self.deps.engine, self.claimed, progress, step.code
            )
        except Exception as exc:
            log.warning("progress of %s not written: %r", self.claimed.task_id, exc)
            return
        await self.deps.publisher.publish_row(row)
        if self._keeper is not None:
            self._keeper.observe(None if row is None else row["cancel_requested_at"] is not None)

    async def _hand_back(self) -> None:
        """The job was cancelled by arq: cancelled (if requested) or handed back, due now,
        for the next worker, without counting a retry or a crash."""
        try:
            write = asyncio.shield(
                self._durable(
                    "hand-back", lambda: lifecycle.interrupt(self.deps.engine, self.claimed)
                )
            )
            row = await write
        except Exception as exc:  # NotRecorded: the lease runs out and the task runs again
            log.warning("hand-back of %s not recorded: %r", self.claimed.task_id, exc)
            return
        if row is not None and row["status"] == "cancelled":
            TASKS_FINISHED.labels("cancelled").inc()
        await asyncio.shield(self.deps.publisher.publish_row(row))

    # -- phase 2: the outcome, committed --------------------------------------------------
    async def _succeed(self, result: AIResult) -> str:
        row = await self._commit(
            "success", lambda: lifecycle.succeed(self.deps.engine, self.claimed, result)
        )
        if row is None or row["status"] != "success":
            await self._publish(row)
            return "stale: result discarded"
        TASKS_FINISHED.labels("success").inc()
        TASK_PROCESSING.observe((row["completed_at"] - row["started_at"]).total_seconds())
        await self._after_commit("breaker", self.deps.breaker.record_success)
        await self._publish(row)
        return "success"

    async def _stopped(self, reason: StopReason) -> str:
        if reason is StopReason.LEASE_LOST:
            return "stale: lease lost"
        return await self._cancelled()

    async def _cancelled(self) -> str:
        row = await self._commit("cancel", self._mark_cancelled, then_cancel=False)
        await self._publish(row)
        if row is None or row["status"] != "cancelled":
            return "stale: lease lost"
        TASKS_FINISHED.labels("cancelled").inc()
        return "cancelled"

    async def _settle(self, error: AnalysisError, *, ai_called: bool = False) -> str:
        """A failed attempt: deferred, retried or failed by its error class. `ai_called`: the
        AI service's own call failed; only that counts for the circuit breaker."""
        error_class = error.error_class
        TASK_ERRORS.labels(error_class.value).inc()
        if isinstance(error, ServiceBusy) and self._may_defer("ai_busy"):
            # Backpressure, not ill health: wait as told, up to MAX_DEFERRALS times.
            delay = (error.retry_after or 1.0) * random.uniform(1.0, 1.5)
            return await self._retry_later(delay, "ai_busy", budget=None)
        unhealthy = ai_called and error_class in SERVICE_FAILURES
        so_far = self.claimed.retry_counts.get(error_class.value, 0)
        policy = self.deps.policy
        if policy.should_retry(error_class, so_far):
            delay = policy.delay(error_class, so_far, error.retry_after)
            budget = RETRY_BUDGETS[error_class]
            return await self._retry_later(
                delay, error_class.value, message=error.message, budget=budget, unhealthy=unhealthy
            )
        return await self.give_up(error_class, error.message, unhealthy=unhealthy)

    def _may_defer(self, reason: str) -> bool:
        return self.claimed.retry_counts.get(reason, 0) < self.deps.settings.max_deferrals

    async def give_up(
        self, error_class: ErrorClass, message: str, *, unhealthy: bool = False
    ) -> str:
        """Fail the task for good (or cancel it, if a cancel was requested meanwhile)."""
        row = await self._commit(
            "failure",
            lambda: lifecycle.fail(self.deps.engine, self.claimed, error_class.value, message),
        )
        if unhealthy:
            await self._after_commit("breaker", self.deps.breaker.record_failure)
        await self._publish(row)
        return self._count_final(row, "failure", f"failure: {error_class}")

    async def _retry_later(
        self,
        delay: float,
        code: str,
        *,
        budget: int | None,
        message: str = "",
        unhealthy: bool = False,
    ) -> str:
        """A retry within `budget`, or with None a deferral, which spends no budget."""
        message = message or "The AI service is unavailable; the analysis will be retried"
        TASK_RETRIES.labels(code).inc()
        row = await self._commit(
            f"retry ({code})",
            lambda: lifecycle.schedule_retry(
                self.deps.engine,
                self.claimed,
                delay,
                code,
                message,
                budget=budget or 0,
                counted=budget is not None,
            ),
        )
        if unhealthy:
            await self._after_commit("breaker", self.deps.breaker.record_failure)
        await self._publish(row)
        if row is None or row["status"] != "retry":
            return self._count_final(row, "retry", "stale: lease lost")
        # A failed re-enqueue is the reconciler's: it enqueues due retry rows.
        await self._after_commit(
            "enqueue",
            lambda: queue.enqueue_analysis(
                self.deps.arq,
                self.claimed.task_id,
                self.claimed.attempt,
                defer_until=row["next_attempt_at"],
            ),
        )
        return f"retry: {code}" if budget is not None else f"deferred: {code}"

    def _count_final(self, row: RowMapping | None, intended: str, stale: str) -> str:
        """The outcome in words, counted when it is final: what was intended, or the cancel
        that a request made meanwhile turned it into."""
        if row is None:
            return stale
        status = str(row["status"])
        if status in ("success", "failure", "cancelled"):
            TASKS_FINISHED.labels(status).inc()
        return intended if status == intended else status

    async def _commit(
        self, name: str, write: Write, *, then_cancel: bool = True
    ) -> RowMapping | None:
        """Commit an outcome. Returns the row as it now stands for this attempt: moved as
        asked; cancelled, when a cancel requested meanwhile stopped `write` (`then_cancel`);
        as an earlier try of `write` left it, when its answer was lost; None when another
        attempt owns the task. Raises NotRecorded when the lease ran out first."""
        row = await self._durable(name, write)
        if row is None and then_cancel:
            row = await self._durable("cancel", self._mark_cancelled)
        if row is None:
            row = await self._durable(
                "read", lambda: lifecycle.own_row(self.deps.engine, self.claimed)
            )
            if row is not None and row["status"] == "processing":
                return None  # cannot be: a write fenced on this attempt would have matched
        return row

    def _mark_cancelled(self) -> Awaitable[RowMapping | None]:
        return lifecycle.mark_cancelled(self.deps.engine, self.claimed)

    async def _durable(self, name: str, write: Write) -> RowMapping | None:
        try:
            lease = self.deps.settings.lease_seconds
            return await durable(write, name, self._lease_deadline, lease * RETRY_WAIT_SHARE)
        except Exception as exc:
            raise NotRecorded(f"the {name} write failed until the lease ran out: {exc!r}") from exc

    # -- phase 3: after the commit, best effort -------------------------------------------
    async def _after_commit(self, effect: str, call: Callable[[], Awaitable[object]]) -> None:
        now = time.monotonic()
        if self._effects_deadline is None:
            self._effects_deadline = now + AFTER_COMMIT_SECONDS
        await after_commit(effect, call, max(self._effects_deadline - now, 0.0))

    async def _publish(self, row: RowMapping | None) -> None:
        """The status document of what was committed, to live-progress clients."""
        if row is not None:
            await self._after_commit("publish", lambda: self.deps.publisher.send_row(row))


async def _recorded(claimed: Claim, outcome: Awaitable[str]) -> str:
    """`outcome`, or what to say when it could not be written before the lease ran out."""
    try:
        return await outcome
    except NotRecorded as exc:
        log.error("task %s: %s", claimed.task_id, exc)
        return f"not recorded: {exc}"


async def _abandon(call: asyncio.Task[AIResult]) -> None:
    """Cancel the AI call and give it a bounded time to end; never wait on it longer."""
    call.cancel()
    await asyncio.wait([call], timeout=ABANDON_WAIT_SECONDS)
    call.add_done_callback(lambda task: task.cancelled() or task.exception())

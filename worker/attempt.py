"""One attempt at one analysis task: stream the recording to the AI service, relay progress,
store the result or classify the failure. Every write is fenced by the attempt number."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from sqlalchemy import RowMapping

from app.ai_client.errors import AnalysisError, ErrorClass, NetworkError, ServiceBusy
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
from worker.lease import LeaseKeeper, StopReason
from worker.retry import RETRY_BUDGETS, SERVICE_FAILURES, classify

log = logging.getLogger(__name__)


class Attempt:
    def __init__(self, deps: WorkerDeps, claimed: Claim, job_id: str) -> None:
        self.deps = deps
        self.claimed = claimed
        self.job_id = job_id
        self._last_progress: tuple[int, str] = (0, steps.UPLOADING.code)
        self._keeper: LeaseKeeper | None = None

    async def run(self) -> str:
        try:
            return await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # outside the AI call: the database, Redis, storage
            log.warning("task %s: %r", self.claimed.task_id, exc)
            return await self._failed(classify(exc))

    async def _run(self) -> str:
        decision = await self.deps.breaker.before_call()
        if not decision.allowed:
            if self._may_defer("circuit_open"):
                await self._retry_later(decision.retry_in, "circuit_open", budget=None)
                return "deferred: circuit open"
            return await self._failed(NetworkError("The AI service circuit stayed open"))
        async with LeaseKeeper(self.deps, self.claimed, self.job_id) as keeper:
            self._keeper = keeper
            try:
                result = await self._call_ai()
            except asyncio.CancelledError:
                outcome = await self._interrupted(keeper)
                if outcome is None:
                    raise  # arq's abort or the worker's shutdown: arq must see it
                return outcome
            except Exception as exc:
                return await self._failed(classify(exc), ai_called=True)
        await self.deps.breaker.record_success()
        stored = await lifecycle.succeed(self.deps.engine, self.claimed, result)
        await self.deps.publisher.publish_row(stored)
        if stored is None:
            return "stale: result discarded"
        TASKS_FINISHED.labels("success").inc()
        TASK_PROCESSING.observe((stored["completed_at"] - stored["started_at"]).total_seconds())
        return "success"

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
        step = steps.ai_step(line.step, fallback=steps.step_for(self._last_progress[1]))
        progress = max(steps.overall_progress(line.progress), self._last_progress[0])
        if (progress, step.code) == self._last_progress:
            return
        self._last_progress = (progress, step.code)
        row = await lifecycle.report_progress(self.deps.engine, self.claimed, progress, step.code)
        await self.deps.publisher.publish_row(row)
        if self._keeper is not None:
            self._keeper.observe(None if row is None else row["cancel_requested_at"] is not None)

    async def _interrupted(self, keeper: LeaseKeeper) -> str | None:
        """The attempt was cancelled. By us (lease lost, cancel seen): return an outcome. By
        arq (abort of a cancelled task, or shutdown): record it, then None to re-raise."""
        row = None
        if keeper.stop_reason is not StopReason.LEASE_LOST:
            # Cancelled (if requested) or handed back, due now, for the next worker.
            row = await asyncio.shield(lifecycle.interrupt(self.deps.engine, self.claimed))
            await asyncio.shield(self.deps.publisher.publish_row(row))
        if keeper.stop_reason is None:
            return None
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if keeper.stop_reason is StopReason.LEASE_LOST:
            return "stale: lease lost"
        TASKS_FINISHED.labels("cancelled").inc()
        return "cancelled"

    async def _failed(self, error: AnalysisError, *, ai_called: bool = False) -> str:
        """`ai_called`: the AI service's own call failed. Only that counts for the circuit
        breaker; a database or Redis error, or the circuit itself staying open, does not."""
        error_class = error.error_class
        TASK_ERRORS.labels(error_class.value).inc()
        if isinstance(error, ServiceBusy) and self._may_defer("ai_busy"):
            # Backpressure, not ill health: wait as told, up to MAX_DEFERRALS times.
            delay = (error.retry_after or 1.0) * random.uniform(1.0, 1.5)
            await self._retry_later(delay, "ai_busy", budget=None)
            return "deferred: AI service busy"
        if ai_called and error_class in SERVICE_FAILURES:
            await self.deps.breaker.record_failure()
        so_far = self.claimed.retry_counts.get(error_class.value, 0)
        policy = self.deps.policy
        if policy.should_retry(error_class, so_far):
            delay = policy.delay(error_class, so_far, error.retry_after)
            budget = RETRY_BUDGETS[error_class]
            await self._retry_later(delay, error_class.value, message=error.message, budget=budget)
            return f"retry: {error_class}"
        return await self.give_up(error_class, error.message)

    def _may_defer(self, reason: str) -> bool:
        return self.claimed.retry_counts.get(reason, 0) < self.deps.settings.max_deferrals

    async def give_up(self, error_class: ErrorClass, message: str) -> str:
        row = await lifecycle.fail(self.deps.engine, self.claimed, error_class.value, message)
        if await self._published_or_cancelled(row):
            TASKS_FINISHED.labels("failure").inc()
        return f"failure: {error_class}"

    async def _retry_later(
        self, delay: float, code: str, *, budget: int | None, message: str = ""
    ) -> None:
        """A retry within `budget`, or with None a deferral, which spends no budget."""
        message = message or "The AI service is unavailable; the analysis will be retried"
        TASK_RETRIES.labels(code).inc()
        row = await lifecycle.schedule_retry(
            self.deps.engine,
            self.claimed,
            delay,
            code,
            message,
            budget=budget or 0,
            counted=budget is not None,
        )
        if not await self._published_or_cancelled(row) or row is None:
            return
        try:
            await queue.enqueue_analysis(
                self.deps.arq,
                self.claimed.task_id,
                self.claimed.attempt,
                defer_until=row["next_attempt_at"],
            )
        except Exception:  # the reconciler enqueues due retry rows
            log.warning("re-enqueue of %s failed; left to the reconciler", self.claimed.task_id)

    async def _published_or_cancelled(self, row: RowMapping | None) -> bool:
        """Publish a transition; if it did not happen because a cancel was requested
        meanwhile, cancel the task instead. False when the task did not move as asked."""
        if row is None:
            row = await lifecycle.mark_cancelled(self.deps.engine, self.claimed)
            await self.deps.publisher.publish_row(row)
            if row is not None:
                TASKS_FINISHED.labels("cancelled").inc()
            return False
        await self.deps.publisher.publish_row(row)
        return True

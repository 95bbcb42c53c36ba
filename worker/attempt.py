"""One attempt at one analysis task: stream the recording to the AI service, relay progress,
store the result or classify the failure. Every write is fenced by the attempt number."""

from __future__ import annotations

import asyncio
import logging

from app.ai_client.errors import AnalysisError, ErrorClass
from app.ai_client.wire import AIResult, ProgressLine
from app.analysis import lifecycle, queue, steps
from app.analysis.lifecycle import Claim
from worker.context import WorkerDeps
from worker.lease import LeaseKeeper, StopReason
from worker.retry import SERVICE_FAILURES, classify

log = logging.getLogger(__name__)


class Attempt:
    def __init__(self, deps: WorkerDeps, claimed: Claim, job_id: str) -> None:
        self.deps = deps
        self.claimed = claimed
        self.job_id = job_id
        self._last_progress: tuple[int, str] = (0, steps.UPLOADING.code)
        self._keeper: LeaseKeeper | None = None

    async def run(self) -> str:
        decision = await self.deps.breaker.before_call()
        if not decision.allowed:
            await self._retry_later(decision.retry_in, "circuit_open", counted=False)
            return "deferred: circuit open"
        async with LeaseKeeper(self.deps, self.claimed, self.job_id) as keeper:
            self._keeper = keeper
            try:
                result = await self._call_ai()
            except asyncio.CancelledError:
                if not await self._stopped_on_purpose(keeper):
                    raise
                return await self._after_stop(keeper)
            except Exception as exc:
                return await self._failed(classify(exc))
        await self.deps.breaker.record_success()
        stored = await lifecycle.succeed(self.deps.engine, self.claimed, result)
        await self.deps.publisher.publish_row(stored)
        return "success" if stored else "stale: result discarded"

    async def _call_ai(self) -> AIResult:
        record = self.claimed
        async with asyncio.timeout(self.deps.settings.ai_deadline_seconds):
            return await self.deps.ai.analyze(
                self.deps.storage.read(record.audio_storage_key),
                record.audio_content_type,
                record.task_params,
                f"{record.task_id}:{record.attempt}",
                self._on_progress,
            )

    async def _on_progress(self, line: ProgressLine) -> None:
        step = steps.ai_step(line.step, fallback=steps.step_for(self._last_progress[1]))
        progress = max(steps.overall_progress(line.progress), self._last_progress[0])
        if (progress, step.code) == self._last_progress:
            return
        self._last_progress = (progress, step.code)
        row = await lifecycle.report_progress(self.deps.engine, self.claimed, progress, step.code)
        await self.deps.publisher.publish_row(row)
        if self._keeper is None:
            return
        if row is None:
            self._keeper.stop(StopReason.LEASE_LOST)
        elif row["cancel_requested_at"] is not None:
            self._keeper.stop(StopReason.CANCEL_REQUESTED)

    async def _stopped_on_purpose(self, keeper: LeaseKeeper) -> bool:
        """A cancel we asked for (lease lost, cancel seen) or arq's abort of a cancelled task;
        anything else (worker shutdown) propagates and the lease brings the task back."""
        if keeper.stop_reason is not None:
            return True
        cancel_requested = await asyncio.shield(
            lifecycle.renew_lease(self.deps.engine, self.claimed, self.deps.settings.lease_seconds)
        )
        if cancel_requested:
            keeper.stop_reason = StopReason.CANCEL_REQUESTED
        return bool(cancel_requested)

    async def _after_stop(self, keeper: LeaseKeeper) -> str:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if keeper.stop_reason is StopReason.CANCEL_REQUESTED:
            row = await lifecycle.mark_cancelled(self.deps.engine, self.claimed)
            await self.deps.publisher.publish_row(row)
            return "cancelled"
        return "stale: lease lost"

    async def _failed(self, error: AnalysisError) -> str:
        error_class = error.error_class
        if error_class in SERVICE_FAILURES:
            await self.deps.breaker.record_failure()
        policy = self.deps.policy
        if policy.should_retry(error_class, self.claimed.retry_count):
            delay = policy.delay(error_class, self.claimed.retry_count, error.retry_after)
            await self._retry_later(delay, error_class.value, message=error.message)
            return f"retry: {error_class}"
        row = await lifecycle.fail(self.deps.engine, self.claimed, error_class.value, error.message)
        await self.deps.publisher.publish_row(row)
        return f"failure: {error_class}"

    async def _retry_later(
        self, delay: float, code: str, *, message: str = "", counted: bool = True
    ) -> None:
        message = message or "The AI service is unavailable; the analysis will be retried"
        row = await lifecycle.schedule_retry(
            self.deps.engine, self.claimed, delay, code, message, counted=counted
        )
        if row is None:
            return
        await self.deps.publisher.publish_row(row)
        when = row["next_attempt_at"]
        try:
            await queue.enqueue_analysis(
                self.deps.arq, self.claimed.task_id, self.claimed.attempt, defer_until=when
            )
        except Exception:  # the reconciler enqueues due retry rows
            log.warning("re-enqueue of %s failed; left to the reconciler", self.claimed.task_id)


__all__ = ["Attempt", "ErrorClass"]

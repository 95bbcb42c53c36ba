"""One attempt at one analysis task, in three phases (see also worker/outcome.py):

1. The AI call: the recording is streamed to the AI service while the worker renews the
   lease (worker/lease.py, from the claim on); progress is relayed best effort, off the AI
   read loop.
2. The outcome (success, retry, deferral, failure, cancel) is committed to PostgreSQL, the
   source of truth, fenced by the attempt number, retried through transient database errors.
   The lease is closed by then: nothing can cancel an attempt while it records its
   outcome.
3. After the commit, what touches Redis (breaker bookkeeping, publishing, re-enqueueing) is
   best effort: it can never change the committed outcome.

Nothing that touches Redis before the AI call can turn into a retry of work that has not
failed: the breaker lets the call through when it cannot be read, arq's in-progress key and
the progress publishes are best effort. When arq cancels the job (an abort, the worker's
shutdown, its timeout), phase 1 hands the task back; phases 2 and 3 run to their end first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from app.ai_client.errors import AIServiceError, AnalysisError, AnalysisTimeout, ErrorClass
from app.ai_client.wire import AIResult, ProgressLine
from app.analysis import steps
from app.analysis.lifecycle import Claim
from app.metrics import AI_REQUESTS
from worker.context import WorkerDeps
from worker.deadline import ai_deadline
from worker.lease import Lease, StopReason
from worker.outcome import AFTER_COMMIT_SECONDS, CircuitOpen, NotRecorded, Recorder
from worker.relay import ProgressRelay
from worker.retry import classify

log = logging.getLogger(__name__)

# An AI call still running this long after its own deadline is abandoned: a task past its
# deadline plus this grace always leaves `processing`, whatever the call is stuck in.
DEADLINE_GRACE_SECONDS = 2.0
# How long an abandoned AI call is given to acknowledge its cancellation.
ABANDON_WAIT_SECONDS = 2.0

Outcome = AIResult | AnalysisError | StopReason | CircuitOpen


class Attempt:
    """One claimed attempt, run from its claim to its committed outcome."""

    def __init__(
        self, deps: WorkerDeps, claimed: Claim, job_id: str, lease_deadline: float
    ) -> None:
        """`lease_deadline`: when the claim's lease ends (time.monotonic())."""
        self.deps = deps
        self.claimed = claimed
        self.job_id = job_id
        self.recorder = Recorder(deps, claimed, lease_deadline)
        # The AI call's own deadline (seconds), grown with the recording's length.
        self.ai_deadline = ai_deadline(deps.settings, claimed.audio_duration_seconds)
        self._last_progress: tuple[int, str] = (0, steps.UPLOADING.code)
        self._relay: ProgressRelay | None = None
        self._lease: Lease | None = None

    async def run(self) -> str:
        """Run the attempt to a committed outcome; returns it in words (for arq's log).
        Raises CancelledError when arq cancels the job: after handing the task back during
        phase 1, after the outcome is recorded during phases 2 and 3."""
        # Renewed from the claim on, not from the AI call: on a saturated event loop the
        # claim's publish and the breaker's read can take seconds of the lease.
        lease = self._lease = self.deps.leases.hold(
            self.claimed, self.job_id, self.recorder.lease_deadline
        )
        try:
            try:
                outcome = await self._phase_one()
            except asyncio.CancelledError:
                self._close_lease()
                await _to_the_end(self.claimed, self.recorder.hand_back())
                raise
            self._close_lease()
            return await _to_the_end(self.claimed, self._record(outcome))
        finally:
            self._close_lease()  # whatever happened before (once)
            lease.release()

    def _close_lease(self) -> None:
        """Stop renewing the lease (once). arq's in-progress key is then held for what the
        attempt still has to do: its outcome, written until one lease past the lease, then
        its effects."""
        lease = self._lease
        if lease is None or lease.closing:
            return
        lease_seconds = self.deps.settings.lease_seconds
        hold = lease.deadline + lease_seconds - time.monotonic() + AFTER_COMMIT_SECONDS
        lease.close(hold_for=hold)
        self.recorder.lease_deadline = lease.deadline

    async def fail_now(self, error_class: ErrorClass, message: str) -> str:
        """Fail the task without calling the AI service (a crash loop)."""
        return await _to_the_end(self.claimed, self.recorder.give_up(error_class, message))

    def _record(self, outcome: Outcome) -> Awaitable[str]:
        recorder = self.recorder
        if isinstance(outcome, CircuitOpen):
            return recorder.circuit_open(outcome)
        if isinstance(outcome, StopReason):
            if outcome is StopReason.CANCEL_REQUESTED:
                return recorder.cancelled()
            return _said("stale: lease lost")
        if isinstance(outcome, AnalysisError):
            return recorder.settle(outcome, ai_called=True)
        return recorder.succeed(outcome)

    # -- phase 1: the AI call ------------------------------------------------------------
    async def _phase_one(self) -> Outcome:
        await self.deps.publisher.publish_row(self.claimed.row)  # best effort
        decision = await self.deps.breaker.before_call()  # never raises
        if not decision.allowed:
            return CircuitOpen(decision.retry_in)
        self.recorder.admitted = decision
        return await self._analyse()

    async def _analyse(self) -> AIResult | AnalysisError | StopReason:
        """The AI call while the worker renews its lease: its result or error, or why the
        lease stopped it. The lease is closed and the progress relay has stopped (within its
        bounded close) when this returns or raises."""
        lease = self._lease
        assert lease is not None, "held since the claim (run)"
        relay = self._relay = ProgressRelay(self.deps, self.claimed, lease)
        relay.start()
        call = asyncio.create_task(self._call_ai())
        limit = self.ai_deadline + DEADLINE_GRACE_SECONDS
        either: list[asyncio.Future[Any]] = [call, lease.stopped]
        try:
            await asyncio.wait(either, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            answered = call.done()
        finally:
            try:
                if not call.done():
                    await _abandon(call)
                await relay.close()
            finally:  # even if a second cancel comes meanwhile: the lease is not renewed on
                self._close_lease()
        if answered:
            if call.cancelled():  # not by us: something inside gave the call up
                return AIServiceError("The AI call was cancelled")
            error = call.exception()
            return call.result() if error is None else classify(error)
        if lease.stopped.done():
            return lease.stopped.result()
        return AnalysisTimeout(f"No answer from the AI service within {limit:.0f} s")

    async def _call_ai(self) -> AIResult:
        record = self.claimed
        started = time.monotonic()
        outcome = "error"
        try:
            async with asyncio.timeout(self.ai_deadline) as deadline:
                result = await self.deps.ai.analyze(
                    self.deps.storage.read(record.audio_storage_key),
                    record.audio_content_type,
                    record.task_params,
                    f"{record.task_id}:{record.attempt}",
                    self._on_progress,
                    deadline=deadline.when(),
                )
            outcome = "ok"
            return result
        finally:
            AI_REQUESTS.labels(outcome).observe(time.monotonic() - started)

    async def _on_progress(self, line: ProgressLine) -> None:
        """A progress line from the AI service, handed to the relay (never waits)."""
        step = steps.ai_step(line.step, fallback=steps.step_for(self._last_progress[1]))
        progress = max(steps.overall_progress(line.progress), self._last_progress[0])
        if (progress, step.code) == self._last_progress:
            return
        self._last_progress = (progress, step.code)
        if self._relay is not None:
            self._relay.report(progress, step.code)


async def _to_the_end(claimed: Claim, work: Awaitable[str]) -> str:
    """Run `work` (phases 2 and 3) to its end even when the job is cancelled meanwhile: a
    cancel is raised once the outcome is recorded (the work is bounded: its writes by their
    deadline, its effects by AFTER_COMMIT_SECONDS). An outcome that could not be written in
    time is said, not raised: the task runs again after its lease."""
    task = asyncio.ensure_future(_said_unless_unrecorded(claimed, work))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


async def _said_unless_unrecorded(claimed: Claim, work: Awaitable[str]) -> str:
    try:
        return await work
    except NotRecorded as exc:
        log.error("task %s: %s", claimed.task_id, exc)
        return f"not recorded: {exc}"


async def _said(words: str) -> str:
    return words


async def _abandon(call: asyncio.Task[AIResult]) -> None:
    """Cancel the AI call and give it a bounded time to end; never wait on it longer."""
    call.cancel()
    done, _ = await asyncio.wait([call], timeout=ABANDON_WAIT_SECONDS)
    if not done:
        log.warning("AI call %s still running after its cancel; left to end", call.get_name())
    call.add_done_callback(lambda task: task.cancelled() or task.exception())

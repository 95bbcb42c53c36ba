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

from app.ai_client.errors import (
    AIServiceError,
    AnalysisError,
    AnalysisTimeout,
    ErrorClass,
    ServiceBusy,
)
from app.ai_client.wire import AIResult, ProgressLine
from app.analysis import steps
from app.analysis.cache import provider_key
from app.analysis.lifecycle import Claim, Provenance
from app.metrics import AI_FAILOVERS, AI_REQUESTS
from app.settings import Settings
from worker.context import WorkerDeps
from worker.deadline import ai_deadline
from worker.durable import after_commit
from worker.lease import Lease, StopReason
from worker.outcome import (
    AFTER_COMMIT_SECONDS,
    CircuitOpen,
    NotRecorded,
    Recorder,
    SlotWaitOver,
    Success,
)
from worker.providers import AllOpen, Grant, Provider
from worker.relay import ProgressRelay
from worker.retry import FAILOVER_CLASSES, classify

log = logging.getLogger(__name__)

# An AI call still running this long after its own deadline is abandoned: a task past its
# deadline plus this grace always leaves `processing`, whatever the call is stuck in.
DEADLINE_GRACE_SECONDS = 2.0
# How long an abandoned AI call is given to acknowledge its cancellation.
ABANDON_WAIT_SECONDS = 2.0

# A job always has this long to look for a slot once, whatever is left of its wait.
ONE_LOOK_SECONDS = 1.0
# How long the breaker of a provider left for the next one is given to count the failure.
BREAKER_SECONDS = 1.0

Outcome = Success | AnalysisError | StopReason | CircuitOpen | SlotWaitOver


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
        self._shown_waiting = False  # the task says it waits for an AI slot
        # The error the attempt ends with was counted on its provider's breaker already (as
        # it failed over): its outcome must not count it again.
        self._failure_counted = False

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
        if isinstance(outcome, SlotWaitOver):
            return recorder.slot_wait_over(outcome)
        if isinstance(outcome, StopReason):
            if outcome is StopReason.CANCEL_REQUESTED:
                return recorder.cancelled()
            return _said("stale: lease lost")
        if isinstance(outcome, AnalysisError):
            return recorder.settle(outcome, ai_called=not self._failure_counted)
        return recorder.succeed(outcome)

    # -- phase 1: the AI call ------------------------------------------------------------
    async def _phase_one(self) -> Outcome:
        await self.deps.publisher.publish_row(self.claimed.row)  # best effort
        return await self._analyse()

    async def _analyse(self) -> Outcome:
        """The AI call, through the providers, while the worker renews the lease: a result,
        an error, why the lease stopped it, or why no call was made. The lease is closed and
        the progress relay has stopped (within its bounded close) when this returns or
        raises."""
        lease = self._lease
        assert lease is not None, "held since the claim (run)"
        relay = self._relay = ProgressRelay(self.deps, self.claimed, lease)
        relay.start()
        try:
            return await self._through_providers()
        finally:
            try:
                await relay.close()
            finally:  # even if a second cancel comes meanwhile: the lease is not renewed on
                self._close_lease()

    async def _through_providers(self) -> Outcome:
        """Take the first provider with a closed circuit and a free slot (waiting for one
        while all are full), call it, and on a failure of the service itself move on to the
        next (`fails_over`); the recording's own faults never move on."""
        settings = self.deps.settings
        providers = self.deps.providers
        started = time.monotonic()
        # arq's timeout of the job is JOB_TIMEOUT_SECONDS plus AI_SLOT_WAIT_SECONDS.
        job_ends = started + settings.job_timeout_seconds + settings.ai_slot_wait_seconds
        wait_ends = started + settings.ai_slot_wait_seconds
        left: list[str] = []  # providers this attempt called and left (and, after a busy
        # answer, the degraded ones: they stand in for providers that are down, not busy)
        reasons: list[str] = []  # why the better providers were passed, in words
        error: AnalysisError | None = None
        while True:
            deadline = self.ai_deadline
            call_needs = deadline + DEADLINE_GRACE_SECONDS + ABANDON_WAIT_SECONDS
            wait_limit = min(wait_ends, job_ends - call_needs) - time.monotonic()
            got = await self._provider(left, max(wait_limit, ONE_LOOK_SECONDS))
            if isinstance(got, StopReason):
                return got
            if not isinstance(got, Grant):  # every circuit open, or the wait was too long
                if error is not None:
                    return error  # the last provider called says why
                return CircuitOpen(got.retry_in) if isinstance(got, AllOpen) else got
            provider = got.provider
            reasons.extend(got.passed)
            self.recorder.breaker, self.recorder.admitted = provider.breaker, got.decision
            answer = await self._call(got, deadline)
            self._failure_counted = False  # this call's failure is not counted yet
            if isinstance(answer, AIResult):
                asked = self.claimed.task_params.get("model_version")
                provenance = _provenance(provider, reasons, self.deps.settings, asked)
                return Success(answer, provenance)
            if isinstance(answer, StopReason):
                return answer
            error = answer
            remaining = job_ends - time.monotonic() - call_needs
            busy = isinstance(error, ServiceBusy)
            others = [
                p
                for p in providers.all
                if p.name not in left and p is not provider and not (busy and p.config.degraded)
            ]
            if not (fails_over(error) and others and remaining > 0):
                return error
            left.append(provider.name)
            if busy:
                left.extend(p.name for p in providers.all if p.config.degraded)
            reasons.append(f"{provider.name}: {error.message}")
            AI_FAILOVERS.labels(provider.name, _failover_reason(error)).inc()
            log.info(
                "task %s: %s failed (%s); trying the next provider",
                self.claimed.task_id,
                provider.name,
                error.message,
            )
            if not isinstance(error, ServiceBusy):  # a busy service is healthy
                await after_commit("breaker", provider.breaker.record_failure, BREAKER_SECONDS)
                self._failure_counted = True

    async def _provider(
        self, left: list[str], wait_limit: float
    ) -> Grant | AllOpen | SlotWaitOver | StopReason:
        """A provider and its slot for the next call (Providers.acquire), unless the lease
        stops the wait or no slot comes free within `wait_limit` seconds. A slot taken just as
        the wait ended (or as the job was cancelled) is given back, never left renewed."""
        acquiring = asyncio.create_task(
            self.deps.providers.acquire(holder_of(self.deps, self.job_id), left, self._waiting)
        )
        started = time.monotonic()
        handed = False
        try:
            if await self._settled(acquiring, wait_limit):
                handed = True
                grant = acquiring.result()
                if self._shown_waiting:
                    self._shown_waiting = False
                    self._report(0, steps.UPLOADING)  # the wait is over
                return grant
        finally:
            if not handed and acquiring.done() and not acquiring.cancelled():
                taken = acquiring.result() if acquiring.exception() is None else None
                if isinstance(taken, Grant):
                    await self.deps.providers.release(taken)
        lease = self._lease
        assert lease is not None
        if lease.stopped.done():
            return lease.stopped.result()
        return SlotWaitOver(time.monotonic() - started)

    async def _call(self, grant: Grant, deadline: float) -> AIResult | AnalysisError | StopReason:
        """The AI call to the grant's provider, its slot given back as soon as it ends: its
        result or error, or why the lease stopped it. `deadline`: seconds, from now."""
        lease = self._lease
        assert lease is not None
        try:
            call = asyncio.create_task(self._call_ai(grant.provider, deadline))
            answered = await self._settled(call, deadline + DEADLINE_GRACE_SECONDS)
        finally:
            await self.deps.providers.release(grant)
        if answered:
            if call.cancelled():  # not by us: something inside gave the call up
                return AIServiceError("The AI call was cancelled")
            error = call.exception()
            return call.result() if error is None else classify(error)
        if lease.stopped.done():
            return lease.stopped.result()
        limit = deadline + DEADLINE_GRACE_SECONDS
        return AnalysisTimeout(f"No answer from the AI service within {limit:.0f} s")

    async def _settled(self, task: asyncio.Task[Any], limit: float) -> bool:
        """Wait for `task`, the lease's stop or `limit` seconds, whichever comes first;
        whether `task` ended. A task that has not is abandoned (a bounded wait) before this
        returns or raises."""
        lease = self._lease
        assert lease is not None
        either: list[asyncio.Future[Any]] = [task, lease.stopped]
        try:
            await asyncio.wait(either, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            return task.done()
        finally:
            if not task.done():
                await _abandon(task)

    def _waiting(self) -> None:
        """Every provider is full: the task says it waits for the AI service."""
        self._shown_waiting = True
        self._report(0, steps.WAITING_AI)

    def _report(self, progress: int, step: steps.Step) -> None:
        self._last_progress = (progress, step.code)
        if self._relay is not None:
            self._relay.report(progress, step.code)

    async def _call_ai(self, provider: Provider, deadline: float) -> AIResult:
        record = self.claimed
        params = dict(record.task_params)
        if provider.config.model and not params.get("model_version"):
            params["model_version"] = provider.config.model
        started = time.monotonic()
        outcome = "error"
        try:
            async with asyncio.timeout(deadline) as timeout:
                result = await provider.ai.analyze(
                    self.deps.storage.read(record.audio_storage_key),
                    record.audio_content_type,
                    params,
                    f"{record.task_id}:{record.attempt}",
                    self._on_progress,
                    deadline=timeout.when(),
                    on_result=self._on_result,
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

    def _on_result(self) -> None:
        """The AI service's result has come (the rest of its answer is still read): progress
        not yet written is dropped, the outcome's write follows."""
        if self._relay is not None:
            self._relay.outcome_known()


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


def holder_of(deps: WorkerDeps, job_id: str) -> str:
    """Who holds an attempt's AI slot: `<worker name>/<job id>` (a random suffix is added per
    slot), so that a slot names the worker that holds it."""
    return f"{deps.worker_name}/{job_id}"


def fails_over(error: AnalysisError) -> bool:
    """Whether an AI call that failed with `error` moves on to the next provider: the service
    failed (unreachable, 5xx, busy, a malformed answer), not the recording (a validation
    error: no provider would do better) and not the deadline (it is spent)."""
    return error.error_class in FAILOVER_CLASSES


def _failover_reason(error: AnalysisError) -> str:
    return "busy" if isinstance(error, ServiceBusy) else error.error_class.value


def _provenance(
    provider: Provider, reasons: list[str], settings: Settings, asked: object = None
) -> Provenance:
    """Who produced a result; a degraded provider's says why the others were passed (and is
    never reused by the result cache)."""
    config = provider.config
    why = None
    if config.degraded:
        why = (
            f"primary providers unavailable: {'; '.join(reasons)}"
            if reasons
            else f"served by {config.name}, a degraded provider"
        )
    cache_model = None if config.degraded else provider_key(config, settings)
    # The model asked of it: the task's own model_version, else the provider's (as _call_ai).
    model = str(asked) if asked else config.model
    return Provenance(config.name, model, why, cache_model)

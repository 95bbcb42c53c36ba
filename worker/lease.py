"""The leases a worker holds, renewed together, whatever the AI service is doing.

Every quarter of the lease one statement extends `lease_expires_at` of every attempt the worker
runs to one lease and a quarter from then (`lease_span`), and one pipeline extends their arq
in-progress keys (best effort): renewing costs a worker two round trips per period, however
many tasks it holds (BullMQ's worker extends all of its locks in one call the same way). At
every moment at least one whole lease remains, so a PostgreSQL or Redis outage shorter than the
lease never costs it, and a killed worker's tasks are picked up again after at most a lease and
a quarter. If the row says an attempt lost its task, or that a cancel was requested, that
attempt's `Lease.stopped` resolves; the attempt waits on it beside its AI call. A row another
transaction holds locked is skipped for that round, never waited on.

The same round renews the AI concurrency slots the worker holds (worker/slots.py), in one more
round trip, whether or not the row renewal went through.

A job picked here whose claim has not answered yet (`claiming`) has its in-progress key
extended in the same rounds, beside the rows' renewal (which may wait half a lease for a
connection): the pick holds it for one lease, and a claim that waited longer (the database
pool busy under load) let it lapse, so that another worker could pick the job.
A new attempt's in-progress key follows its lease from the next round on, and a closing
attempt's key is held for what the attempt still has to do (commit its outcome, then its
effects) so that arq does not start the job again meanwhile, from the next round too: both
extensions go at the round's start, beside the rows' renewal (not after its answer, which may
wait half a lease), while the key still lives (the pick made it live one lease, an extension a
lease and a quarter; rounds start about three quarters of a lease apart at most). An attempt that
ends before the next round costs no extension: arq deletes its key. Extensions that fail are
tried again soon, all of them in one pipeline.

Nothing here is stopped by cancelling a command in flight: the loop checks an event between
rounds and `Leases.stop()` waits a bounded time for it (redis-py can swallow a cancellation
inside its timeout block, its issues 2028 and 2551); `Lease.close()` never waits at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Iterator

import asyncpg
from arq.connections import ArqRedis

from app.analysis import lifecycle, queue
from app.analysis.lifecycle import Claim
from worker.slots import Slots

log = logging.getLogger(__name__)

# Renewals come every this share of the lease; each takes the lease plus one such period.
RENEW_SHARE = 0.25
# After a failed renewal or extension, the next try comes after this share of the lease.
RETRY_SHARE = 0.1
# How long `Leases.stop()` waits for a round in flight before leaving it to end by itself.
CLOSE_WAIT_SECONDS = 2.0


def lease_span(lease: float) -> float:
    """What a claim or a renewal takes, in seconds, for a lease of `lease` seconds: one lease
    and one renewal period, so that one whole lease is left when the next renewal is due."""
    return lease * (1 + RENEW_SHARE)


class StopReason(enum.StrEnum):
    """Why a lease stopped an attempt's AI call."""

    CANCEL_REQUESTED = "cancel_requested"
    LEASE_LOST = "lease_lost"


class Lease:
    """One attempt's lease, renewed by its worker's `Leases` until `close()`; `stopped`
    resolves when the row says the attempt must stop. `deadline` (time.monotonic()): when the
    lease ends, as far as this worker knows."""

    def __init__(self, leases: Leases, claimed: Claim, job_id: str, deadline: float) -> None:
        self._leases = leases
        self.claimed = claimed
        self.job_id = job_id
        self.deadline = deadline
        self.closing = False
        self.stopped: asyncio.Future[StopReason] = asyncio.get_running_loop().create_future()

    def observe(self, cancel_requested: bool | None) -> None:
        """What a fenced write of this attempt said: None, it lost the task; True, a cancel
        was requested. Either resolves `stopped`, unless the lease is closing."""
        if cancel_requested is None:
            self._stop(StopReason.LEASE_LOST)
        elif cancel_requested:
            self._stop(StopReason.CANCEL_REQUESTED)

    def _stop(self, reason: StopReason) -> None:
        if not self.stopped.done() and not self.closing:
            self.stopped.set_result(reason)

    def close(self, hold_for: float = 0.0) -> None:
        """Stop renewing, at once (a round in flight is not waited for: what it says of this
        lease is ignored). With `hold_for` (seconds), arq's in-progress key is made to last
        that long from the next round (unless `release()` comes first), tried again soon
        until it holds or the hold is over (Redis may be down just now)."""
        self.closing = True
        self._leases.drop(self, hold_for)

    def release(self) -> None:
        """The attempt is over: stop holding arq's in-progress key (arq removes it now)."""
        self._leases.forget_key(self.job_id)


class Leases:
    """Every lease of one worker, renewed by one loop (`start()`, `stop()`)."""

    def __init__(
        self, lease: float, pg: asyncpg.Pool, arq: ArqRedis, slots: Slots | None = None
    ) -> None:
        """`lease`: seconds (LEASE_SECONDS); `slots`: the worker's AI slots, renewed in the
        same rounds."""
        self.lease = lease
        self._pg = pg
        self._arq = arq
        self._slots = slots
        self._held: dict[str, Lease] = {}  # by job id: the leases being renewed
        # In-progress keys to extend, by job id: until when (time.monotonic()) for a closing
        # attempt's hold, None for a lease span.
        self._keys: dict[str, float | None] = {}
        # Jobs picked here whose claim has not answered yet: their in-progress keys are
        # extended with the leases, so that a claim waiting longer than a lease (the database
        # pool busy) never lets another worker pick its job meanwhile.
        self._claiming: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None

    @property
    def renewal_timeout(self) -> float:
        """How long a renewal statement may take (seconds), the wait for a connection
        included: half a lease, so that a stuck connection is given up and the next try (a
        tenth of a lease later, on another) still comes with more than a third of the lease
        left. Not shorter: on a saturated event loop a round's wall time includes the wait
        for the loop, and cutting it short only makes the next round later (a 0.75 s bound
        with a 3 s lease lost a lease in a 500-task test)."""
        return self.lease * 0.5

    @property
    def in_flight(self) -> int:
        """Attempts holding a lease here now (the heartbeat's jobs in flight)."""
        return len(self._held)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._renew_until_stopped(), name="leases")

    async def stop(self) -> None:
        """Stop renewing: returns within CLOSE_WAIT_SECONDS, whatever a round is doing."""
        self._stopping = True
        self._wake.set()
        if self._loop is None:
            return
        done, _ = await asyncio.wait([self._loop], timeout=CLOSE_WAIT_SECONDS)
        if not done:
            log.warning("a lease round still in flight at shutdown; left to end")
            self._loop.cancel()  # not awaited: it may never acknowledge

    def hold(self, claimed: Claim, job_id: str, deadline: float) -> Lease:
        """Renew the lease `claimed` took (ending at `deadline`, time.monotonic()) until the
        returned Lease is closed; its in-progress key follows the lease from the next round."""
        lease = self._held[job_id] = Lease(self, claimed, job_id, deadline)
        self._keys[job_id] = None
        return lease

    def drop(self, lease: Lease, hold_for: float) -> None:
        """`lease` is closing (Lease.close)."""
        if self._held.get(lease.job_id) is lease:
            del self._held[lease.job_id]
        if hold_for > 0:  # from the next round: the key lives a lease past it
            self._keys[lease.job_id] = time.monotonic() + hold_for
        else:
            self._keys.pop(lease.job_id, None)

    def forget_key(self, job_id: str) -> None:
        self._keys.pop(job_id, None)

    @contextlib.contextmanager
    def claiming(self, job_id: str) -> Iterator[None]:
        """While the job `job_id`, picked here, waits for its claim, its in-progress key is
        extended at every renewal round; once the claim has answered (or failed), a claimed
        attempt's key follows its lease (`hold`)."""
        self._claiming.add(job_id)
        try:
            yield
        finally:
            self._claiming.discard(job_id)

    # -- the loop -------------------------------------------------------------------------
    async def _renew_until_stopped(self) -> None:
        renewal_due = time.monotonic() + self.lease * RENEW_SHARE
        # Pending extensions go with the next round, or this soon after a failed one.
        keys_due = math.inf
        while not self._stopping:
            now = time.monotonic()
            due = min(renewal_due, keys_due) if self._keys else renewal_due
            if due > now:
                await self._woken_within(due - now)
                continue
            try:
                if now >= renewal_due:
                    # The claiming jobs' keys and the pending extensions (new attempts' keys,
                    # closing holds) beside the rows: their renewal may wait half a lease.
                    _, renewed, extended = await asyncio.gather(
                        self._extend_claiming(), self._renew(), self._extend_keys()
                    )
                    keys_due = now if extended else now + self.lease * RETRY_SHARE
                    await self._renew_slots()  # after the rows: a stuck Redis never delays them
                    share = RENEW_SHARE if renewed else RETRY_SHARE
                    renewal_due = time.monotonic() + self.lease * share
                if self._keys and time.monotonic() >= keys_due:  # the renewed leases' keys
                    extended = await self._extend_keys()
                    keys_due = math.inf if extended else time.monotonic() + self.lease * RETRY_SHARE
            except Exception:  # a bug must not end every lease of the worker: next round
                log.exception("lease round failed; trying again")
                renewal_due = keys_due = time.monotonic() + self.lease * RETRY_SHARE

    async def _woken_within(self, seconds: float) -> None:
        """Wait up to `seconds` for `stop()`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _renew_slots(self) -> None:
        """Renew the worker's AI slots (best effort: one not renewed in time is added back
        at the next round)."""
        if self._slots is None:
            return
        try:  # redis-py's own timeouts bound it (as the in-progress keys' pipeline)
            await self._slots.renew()
        except Exception as exc:
            log.warning("renewing %d AI slot(s) failed: %r", self._slots.held, exc)

    async def _extend_claiming(self) -> None:
        """Extend the in-progress keys of the jobs still waiting for their claim, beside the
        rows' renewal, not after it: that may wait half a lease for a connection
        (`renewal_timeout`), and a pick's key lives one lease only, so that a job picked just
        after a round began lost its key before the next round's extension. Nor before it:
        a stuck Redis never delays the rows. Keys not extended are tried again soon with
        the other pending extensions."""
        claiming = list(self._claiming)
        if not claiming:
            return
        try:  # one pipeline: redis-py's own timeouts bound it
            ttl_ms = int(lease_span(self.lease) * 1000)
            await queue.extend_in_progress(self._arq, dict.fromkeys(claiming, ttl_ms))
        except Exception as exc:
            log.warning("extending %d in-progress key(s) failed: %r", len(claiming), exc)
            for job_id in claiming:
                if job_id in self._claiming:
                    self._keys.setdefault(job_id, None)

    async def _renew(self) -> bool:
        """Extend every held lease in the rows; False when that failed (tried again soon)."""
        leases = list(self._held.values())
        if not leases:
            return True
        started = time.monotonic()
        span = lease_span(self.lease)
        try:
            async with asyncio.timeout(self.renewal_timeout):  # the wait for a connection too
                answers = await lifecycle.renew_leases(
                    self._pg, [lease.claimed for lease in leases], span
                )
        except Exception as exc:
            log.warning("renewing %d lease(s) failed (%r); retrying", len(leases), exc)
            return False
        for lease in leases:
            key = (lease.claimed.task_id, lease.claimed.attempt)
            if lease.closing or key not in answers:
                continue  # closed meanwhile, or its row was locked: renewed next time
            cancel_requested = answers[key]
            if cancel_requested is not None:
                lease.deadline = started + span
                self._keys.setdefault(lease.job_id, None)  # the key follows the lease
            lease.observe(cancel_requested)
        return True

    async def _extend_keys(self) -> bool:
        """One pipeline for every pending extension of an in-progress key; False when it
        failed (tried again soon: otherwise arq starts a job a second time beside its live
        attempt, or only after its timeout if the worker dies)."""
        now = time.monotonic()
        sent = dict(self._keys)
        ttl_ms = {}
        for job_id, until in sent.items():
            if until is not None and until <= now:
                self._keys.pop(job_id, None)  # the hold is over
            else:
                left = until - now if until is not None else lease_span(self.lease)
                ttl_ms[job_id] = int(left * 1000)
        if not ttl_ms:
            return True
        try:  # one pipeline: redis-py's own timeouts bound it
            await queue.extend_in_progress(self._arq, ttl_ms)
        except Exception as exc:
            log.warning("extending %d in-progress key(s) failed: %r", len(ttl_ms), exc)
            return False
        for job_id in ttl_ms:
            if job_id in self._keys and self._keys[job_id] == sent[job_id]:
                del self._keys[job_id]  # unless it changed meanwhile (a lease closing)
        return True

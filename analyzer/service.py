"""Runs analyses off the event loop in a bounded process pool and reports progress.

A pool process that dies (an OOM kill, a crash in a native decoder) breaks the whole
ProcessPoolExecutor: every analysis running in it fails and no later one can start. The
service then heals: the broken pool is replaced by a new one (its processes warmed up again),
each stage that was in the pool beside others runs once more alone (isolation.py), the one
that crashes it alone answers a retryable 503 `worker_crashed`, and `pool_state()` says
"broken" or "rebuilding" until the new pool is ready (GET /readyz). Pool processes die with
the analyzer process (Linux: a parent-death signal), so none goes on computing as an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio

from analyzer import faults, pipeline
from analyzer.errors import AnalyzerError
from analyzer.isolation import InPool, PoolGate
from analyzer.schemas import AnalyzeParams
from analyzer.settings import Settings

T = TypeVar("T")
Event = dict[str, Any]
TICK_SECONDS = 0.5

log = logging.getLogger(__name__)

CRASHED = (
    "an analysis process died during this analysis (out of memory, or a crash in a native "
    "decoder); the analyzer has started a new one: send the recording again"
)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Pool process initializer (Linux): SIGKILL this process when the analyzer process that
    started it dies, however it dies, so that no orphan goes on computing."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the call above: nobody will signal us
        os._exit(1)


async def _until_done(running: asyncio.Future[Any]) -> None:
    """Returns once `running` is done, however often the waiting task is cancelled meanwhile:
    Starlette stops the streamed request of a client that left through an anyio cancel scope,
    which cancels again at every await (a shielded scope holds it off); a plain asyncio
    cancel is taken and the wait goes on. `running` itself is never cancelled."""
    with anyio.CancelScope(shield=True):
        while not running.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({running})


def _is_broken(pool: ProcessPoolExecutor) -> bool:
    # CPython sets `_broken` (a message) once a pool process died: the executor refuses
    # every submit from then on.
    return bool(getattr(pool, "_broken", False))


@dataclass(frozen=True)
class Stage:
    step: str
    start: int
    end: int
    share_start: float  # cumulative share of ANALYZER_MIN_SECONDS when the stage starts
    share_end: float  # ... and when it ends
    message: str


STAGES = {
    stage.step: stage
    for stage in (
        Stage("decoding", 0, 20, 0.0, 0.2, "Decoding audio"),
        Stage("feature_extraction", 20, 55, 0.2, 0.55, "Measuring pitch and voice quality"),
        Stage("syllable_detection", 55, 80, 0.55, 0.8, "Detecting syllables and pauses"),
        Stage("scoring", 80, 92, 0.8, 0.92, "Computing scores"),
        Stage("suggestions", 92, 99, 0.92, 1.0, "Writing suggestions"),
    )
}


class Progress:
    """Emits strictly increasing progress events, padding each stage to its share of min_seconds."""

    def __init__(self, min_seconds: float) -> None:
        self.started = time.monotonic()
        self.min_seconds = min_seconds
        self.last = -1

    def event(self, stage: Stage, percent: int) -> Event | None:
        if percent <= self.last:
            return None
        self.last = percent
        return {
            "event": "progress",
            "progress": percent,
            "step": stage.step,
            "message": stage.message,
        }

    async def pad(self, stage: Stage) -> AsyncIterator[Event]:
        deadline = self.started + self.min_seconds * stage.share_end
        begin = self.started + self.min_seconds * stage.share_start
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(TICK_SECONDS, remaining))
            frac = min(1.0, (time.monotonic() - begin) / max(deadline - begin, 1e-9))
            event = self.event(stage, stage.start + int(frac * (stage.end - stage.start - 1)))
            if event is not None:
                yield event


@dataclass
class Counts:
    """What the analyzer did since it started (GET /healthz `analyses`)."""

    started: int = 0  # analyses that began to run in the pool
    succeeded: int = 0
    failed: int = 0  # ended with an error (undecodable, a crashed process, ...) or abandoned
    refused_busy: int = 0  # answered 503 `busy` by admission
    peak_running: int = 0  # the most analyses that ran at once
    rerun_alone: int = 0  # stages in the pool with others at a crash, run again alone


class AnalyzerService:
    """Owns the process pool and admission: at most `settings.capacity` analyses admitted
    (`try_acquire`), of which at most one per pool process runs, whole, at a time (`run`):
    analyses are never interleaved on the pool's processes, so each takes as long as it
    would alone."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.active = 0  # admitted: running, or waiting for a pool process (queue_size)
        self.running = 0
        self.counts = Counts()
        self.rebuilds = 0  # pools replaced after one of their processes died
        self._slots = asyncio.Semaphore(settings.workers)
        self._pool: ProcessPoolExecutor | None = None
        self._warming: list[Future[str]] = []
        self._gate = PoolGate()

    def start(self) -> None:
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.settings.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        # Start the processes and import Praat ahead of use.
        self._warming = [pool.submit(pipeline.warm_up) for _ in range(self.settings.workers)]
        return pool

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def pool_state(self) -> str:
        """ "ok"; "starting" or "rebuilding" while a new pool's processes warm up; "broken"
        when a process died and the pool is not replaced yet; "stopped"."""
        if self._pool is None:
            return "stopped"
        if _is_broken(self._pool):
            return "broken"
        if not all(future.done() for future in self._warming):
            return "rebuilding" if self.rebuilds else "starting"
        return "ok"

    def heal(self) -> bool:
        """Replace the pool if one of its processes died; whether it did."""
        pool = self._pool
        if pool is None or not _is_broken(pool):
            return False
        self._replace(pool)
        return True

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is not broken:  # replaced already (by another analysis it failed)
            return
        self.rebuilds += 1
        log.warning("an analysis process died; replacing the pool (rebuild %d)", self.rebuilds)
        self._pool = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    def try_acquire(self) -> bool:
        """Admit one analysis if fewer than `settings.capacity` are admitted; False (counted
        as refused) when full. Each admission is ended by one `release()`."""
        if self.active >= self.settings.capacity:
            self.counts.refused_busy += 1
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active = max(0, self.active - 1)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a pool process. When a pool process dies meanwhile, a stage that was
        in the pool with others runs once more alone (isolation.py), and AnalyzerError 503
        `worker_crashed` (retryable) says that this stage crashed the pool alone. A pool
        found broken before is replaced first."""
        async with self._gate.together() as stage:
            try:
                return await self._in_pool(stage, fn, *args)
            except BrokenProcessPool as exc:
                if not stage.company:
                    raise AnalyzerError(503, "worker_crashed", CRASHED) from exc
        # Out of the pool first: running alone waits until the pool is empty.
        self.counts.rerun_alone += 1
        async with self._gate.alone() as stage:
            try:
                result = await self._in_pool(stage, fn, *args)
            except BrokenProcessPool as exc:
                log.warning("a stage crashed the pool again alone: its analysis answers 503")
                raise AnalyzerError(503, "worker_crashed", CRASHED) from exc
        log.info("a stage in the pool at a crash ran again alone and ended: it was innocent")
        return result

    async def _in_pool(self, stage: InPool, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the current pool; BrokenProcessPool when the pool broke meanwhile
        (it is replaced). A stage the broken pool refused never ran: it counts as in company,
        not as the one that crashed it."""
        self.heal()
        pool = self._pool
        if pool is None:
            raise AnalyzerError(503, "busy", "the analyzer is not running")
        try:
            running = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            stage.company = True
            self._replace(pool)
            raise
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            # The request was given up (its client left, or its deadline ran out), but the
            # pool process goes on with this stage: the analysis keeps its run slot, its
            # admission and its place in the pool gate until the stage ends, or the next one
            # admitted would queue for the process inside the executor, its client's deadline
            # running, and a stage run alone would not be alone.
            await _until_done(running)
            raise
        except BrokenProcessPool:
            self._replace(pool)
            raise

    async def _noop(self) -> None:
        return None

    def _jobs(
        self, path: Path, container: str, params: AnalyzeParams
    ) -> list[tuple[str, Callable[[dict[str, Any]], Awaitable[Any]]]]:
        cfg = self.settings
        marker = cfg.test_crash_marker

        async def decode(s: dict[str, Any]) -> Any:
            if marker:  # a test hook (ANALYZER_TEST_CRASH_MARKER), never set in production
                await self._call(faults.crash_if_marked, str(path), marker)
            return await self._call(pipeline.decode_stage, str(path), container, cfg.max_seconds)

        async def score(s: dict[str, Any]) -> dict[str, Any]:
            audio = s["decoding"]
            info = pipeline.info_of(audio)
            voice, timing = s["feature_extraction"], s["syllable_detection"]
            pron = await self._call(
                pipeline.pronunciation_stage, audio.samples, audio.sample_rate, params, timing,
                voice,
            )  # fmt: skip
            return pipeline.build_result(info, voice, timing, params, cfg.model_version, 0, pron)

        return [
            ("decoding", decode),
            ("feature_extraction", lambda s: self._call(
                pipeline.features_stage, s["decoding"].samples, s["decoding"].sample_rate)),
            ("syllable_detection", lambda s: self._call(
                pipeline.syllables_stage, s["decoding"].samples, s["decoding"].sample_rate)),
            ("scoring", score),
            ("suggestions", lambda s: self._noop()),
        ]  # fmt: skip

    async def run(
        self, path: Path, container: str, params: AnalyzeParams
    ) -> AsyncGenerator[Event, None]:
        """Progress events, then one {"event": "result"} event; AnalyzerError on failure.
        Runs once a pool process is free for the whole analysis (at once, with no queue)."""
        async with self._slots:
            self.running += 1
            self.counts.started += 1
            self.counts.peak_running = max(self.counts.peak_running, self.running)
            succeeded = False
            try:
                async for event in self._run(path, container, params):
                    succeeded = event["event"] == "result"
                    yield event
            finally:
                self.running -= 1
                if succeeded:
                    self.counts.succeeded += 1
                else:
                    self.counts.failed += 1

    async def _run(self, path: Path, container: str, params: AnalyzeParams) -> AsyncIterator[Event]:
        progress = Progress(self.settings.min_seconds)
        started = time.perf_counter()
        state: dict[str, Any] = {}
        for name, job in self._jobs(path, container, params):
            stage = STAGES[name]
            event = progress.event(stage, stage.start)
            if event is not None:
                yield event
            state[name] = await job(state)
            async for event in progress.pad(stage):
                yield event
        done = progress.event(Stage("suggestions", 100, 100, 1.0, 1.0, "Analysis complete"), 100)
        if done is not None:
            yield done
        result: dict[str, Any] = state["scoring"]
        result["processing_time_seconds"] = round(time.perf_counter() - started, 3)
        yield {"event": "result", "result": result}

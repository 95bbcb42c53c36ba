"""A pool process that dies fails every stage then in the pool (R7 once failed a healthy task
this way: analysed beside a poison recording at each of its six crashes, it spent its whole
network budget). A stage that was in the pool beside others now runs once more alone: the
innocent one ends, and only the one that crashes the pool alone answers 503 `worker_crashed`.

The analyzer's service on a real spawned process pool; the stages are tests/analyzer/
pool_hooks.py, held and released through a multiprocessing manager."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator, Iterator
from multiprocessing.managers import SyncManager

import anyio
import pytest

from analyzer.errors import AnalyzerError
from analyzer.service import AnalyzerService
from tests.analyzer import pool_hooks
from tests.analyzer.conftest import make_settings

STARTED = 30.0  # seconds to wait for a stage to start (a new pool warms up first)
GIVE = 1.0  # seconds a cancelled request is given to end early (a wrong end, never a sync)


@pytest.fixture
def manager() -> Iterator[SyncManager]:
    with multiprocessing.get_context("spawn").Manager() as running:
        yield running


@pytest.fixture
async def service() -> AsyncIterator[AnalyzerService]:
    running = AnalyzerService(make_settings(workers=2))
    running.start()
    try:
        yield running
    finally:
        running.stop()


async def test_a_stage_beside_the_one_that_crashed_the_pool_runs_again_alone_and_ends(
    service: AnalyzerService, manager: SyncManager
) -> None:
    starts = manager.Queue()
    go = manager.Event()
    innocent = asyncio.create_task(service._call(pool_hooks.held, starts, go))
    await asyncio.to_thread(starts.get, timeout=STARTED)  # in the pool, held

    poison = asyncio.create_task(service._call(pool_hooks.die))
    # Both were in the pool at the crash: each runs again alone, in either order. The held
    # stage starting again is its run alone (the poison's has crashed the pool alone, or
    # waits for it).
    await asyncio.to_thread(starts.get, timeout=STARTED)
    go.set()

    assert await innocent == 42
    with pytest.raises(AnalyzerError) as crashed:
        await poison
    assert (crashed.value.status, crashed.value.code) == (503, "worker_crashed")
    assert service.counts.rerun_alone == 2
    assert service.rebuilds == 2  # the crash beside the held stage, then the poison's alone


async def test_a_stage_that_crashes_the_pool_alone_answers_503_at_once(
    service: AnalyzerService,
) -> None:
    with pytest.raises(AnalyzerError) as crashed:
        await service._call(pool_hooks.die)
    assert (crashed.value.status, crashed.value.code) == (503, "worker_crashed")
    assert service.counts.rerun_alone == 0 and service.rebuilds == 1


async def test_a_stage_given_up_under_an_anyio_cancel_scope_stays_in_the_pool_until_it_ends(
    service: AnalyzerService, manager: SyncManager
) -> None:
    """Starlette's streaming response stops the request of a client that left through an
    anyio cancel scope, which cancels once more at every await: the wait for the given-up
    stage was cut short, and the stage left the pool gate (and its run slot) while its
    process still ran it. A stage run alone next was then not alone (an innocent one beside a
    given-up poison answered 503), and the next analysis queued inside the executor."""
    starts = manager.Queue()
    go = manager.Event()
    request = anyio.CancelScope()

    async def analyse() -> None:
        with request:
            await service._call(pool_hooks.held, starts, go)

    given_up = asyncio.create_task(analyse())
    await asyncio.to_thread(starts.get, timeout=STARTED)  # in the pool, held
    request.cancel()
    # It cannot end before its stage does (held until `go`): one that ends here is wrong.
    ended, _ = await asyncio.wait({given_up}, timeout=GIVE)
    assert not ended, "the given-up request ended while its stage still ran"
    assert len(service._gate.in_pool) == 1

    go.set()
    await asyncio.wait_for(given_up, timeout=STARTED)  # the scope takes its own cancel
    assert not service._gate.in_pool

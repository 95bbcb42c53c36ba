"""A pool process that dies fails every stage then in the pool (R7 once failed a healthy task
this way: analysed beside a poison recording at each of its six crashes, it spent its whole
network budget). A stage that was in the pool beside others now runs once more alone: the
innocent one ends, and only the one that crashes the pool alone answers 503 `worker_crashed`.

The analyzer's service on a real spawned process pool; the stages are tests/analyzer/
pool_hooks.py, held and released through a multiprocessing manager."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator, Callable, Iterator
from multiprocessing.managers import SyncManager

import anyio
import pytest

from analyzer.errors import AnalyzerError
from analyzer.isolation import PoolGate
from analyzer.service import AnalyzerService
from tests.analyzer import pool_hooks
from tests.analyzer.conftest import make_settings
from tests.reliability.system import poll

STARTED = 30.0  # seconds to wait for a stage to start (a new pool warms up first)
GATE = 5.0  # seconds a gate test waits for what must happen at once
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


async def _polled(condition: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return condition()

    await poll(holds, GATE, "the gate's state")


async def test_a_stage_waiting_to_run_alone_holds_back_the_stages_not_yet_in_the_pool() -> None:
    gate = PoolGate()
    entered: list[tuple[str, int, bool]] = []  # who entered, stages waiting / running alone

    async def enter(how: str) -> None:
        async with gate.alone() if how == "alone" else gate.together():
            entered.append((how, gate.alone_waiting, gate.alone_running))

    async with gate.together():  # a stage in the pool
        suspect = asyncio.create_task(enter("alone"))
        await _polled(lambda: gate.alone_waiting == 1)
        late = asyncio.create_task(enter("together"))
    async with asyncio.timeout(GATE):
        await asyncio.gather(suspect, late)
    assert entered == [("alone", 0, True), ("together", 0, False)]


async def test_a_stage_that_gives_up_waiting_to_run_alone_lets_the_others_in() -> None:
    gate = PoolGate()
    async with gate.together():
        suspect = asyncio.create_task(gate.alone().__aenter__())
        await _polled(lambda: gate.alone_waiting == 1)

        async def enter_together() -> None:
            async with gate.together():
                pass

        late = asyncio.create_task(enter_together())  # held back by the suspect
        suspect.cancel()  # its client left
        async with asyncio.timeout(GATE):
            await late
    assert gate.alone_waiting == 0 and not gate.in_pool

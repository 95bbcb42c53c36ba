"""Which analysis killed the pool: stages run in the pool together, or one alone.

A pool process that dies breaks the whole ProcessPoolExecutor, so every stage then in the
pool fails the same way, the one that crashed it and the ones beside it. A stage that ran with
others in the pool is only a suspect: it runs once more alone (`alone()`: no other stage in
the pool meanwhile). A stage that crashes alone did it; a suspect that ran alone and ended
was innocent and its analysis goes on, so a poison recording never spends the retry budget
of the recordings analysed beside it (scenario R7).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass(eq=False)
class InPool:
    """One stage in the pool. `company`: another stage was in the pool at some time while
    this one was."""

    company: bool = False


@dataclass
class PoolGate:
    """Admits stages to the pool together (`together()`) or one alone (`alone()`), on one
    event loop. A stage waiting to run alone holds back every stage not yet in the pool, so it
    runs as soon as the ones in the pool have ended."""

    in_pool: set[InPool] = field(default_factory=set)
    alone_waiting: int = 0
    alone_running: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @asynccontextmanager
    async def together(self) -> AsyncIterator[InPool]:
        """A stage in the pool beside any others; waits while a stage is held to run alone."""
        await self._until(lambda: not self.alone_waiting and not self.alone_running)
        stage = InPool(company=bool(self.in_pool))
        for other in self.in_pool:
            other.company = True
        self.in_pool.add(stage)
        try:
            yield stage
        finally:
            self.in_pool.discard(stage)
            self._changed.set()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[InPool]:
        """A stage alone in the pool: waits until the stages in it have ended and no other
        runs alone; none enters meanwhile."""
        self.alone_waiting += 1
        try:
            await self._until(lambda: not self.in_pool and not self.alone_running)
        finally:
            self.alone_waiting -= 1
            self._changed.set()  # given up waiting (cancelled): the others may go on
        self.alone_running = True
        stage = InPool()
        self.in_pool.add(stage)
        try:
            yield stage
        finally:
            self.in_pool.discard(stage)
            self.alone_running = False
            self._changed.set()

    async def _until(self, ready: Callable[[], bool]) -> None:
        # Every waiter wakes at each change (set() wakes all of them at once) and looks again.
        while not ready():
            self._changed.clear()
            await self._changed.wait()

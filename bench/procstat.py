"""CPU time and resident memory of the processes under test (psutil)."""

from __future__ import annotations

import asyncio
import contextlib

import psutil


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """User + system CPU seconds of `pid` so far; with `tree`, plus its live descendants and
    the children it has reaped (a prefork pool replaces its children)."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    total = float(times.user + times.system)
    if tree:
        total += times.children_user + times.children_system
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    return total


def rss_bytes(pid: int, *, tree: bool = False) -> int:
    process = psutil.Process(pid)
    total = int(process.memory_info().rss)
    if tree:
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += int(child.memory_info().rss)
    return total


class RssSampler:
    """The peak RSS of a process (or tree) while running, sampled every `interval`."""

    def __init__(self, pid: int, interval: float = 0.05, *, tree: bool = False) -> None:
        self.pid = pid
        self.interval = interval
        self.tree = tree
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, rss_bytes(self.pid, tree=self.tree))
        return self.peak

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> RssSampler:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.sample()

"""The processes a benchmark run starts, and how each is stopped: by PID, always.

Every child runs in its own session (a Ctrl-C in the terminal reaches only the orchestrator,
which then stops them in order) and is recorded in `Processes`; `stop_all()` runs in the
orchestrator's `finally`, so an error or a Ctrl-C leaves nothing behind. A process that
forks (Celery's prefork pool) is stopped with its descendants, found before the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STOP_TIMEOUT_SECONDS = 15.0


def raise_fd_limit() -> None:
    """Open files up to the hard limit (inherited by every child): 1,000 AI calls in flight."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def settings_names() -> set[str]:
    from app.settings import Settings

    return {name.upper() for name in Settings.model_fields}


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """The environment of a child: this one without any of the service's settings (a shell
    may export some), the repository on PYTHONPATH, then `overrides`."""
    names = settings_names()
    env = {key: value for key, value in os.environ.items() if key.upper() not in names}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env | overrides


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 4000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-tail:]

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) exited with {self.popen.returncode}:\n"
                + self.output()
            )

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            children: list[psutil.Process] = psutil.Process(self.pid).children(recursive=True)
            return children
        return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Signal it, wait, SIGKILL it if it stays; then SIGKILL any descendant left."""
        family = self.descendants()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        _gone, alive = psutil.wait_procs(family, timeout=min(timeout, 5.0))
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=5.0)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@dataclass
class Processes:
    """Every process a run starts; stopped in reverse order by `stop_all()`."""

    workdir: Path
    children: list[Child] = field(default_factory=list)
    _counter: int = 0

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        cwd: Path | None = None,
        stdout_pipe: bool = False,
    ) -> Child:
        """Start `argv`; its output goes to `<workdir>/logs/<name>.log` (stderr too, and
        stdout unless `stdout_pipe`)."""
        self._counter += 1
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{self._counter:03d}-{name}.log"
        with log.open("wb") as output:
            popen = subprocess.Popen(
                list(argv),
                env=env,
                cwd=cwd or self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else output,
                stderr=output,
                start_new_session=True,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, sig: int = signal.SIGTERM) -> None:
        child.stop(sig)
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                child.stop()
            except Exception as exc:  # go on with the others
                print(f"stopping {child.name} (pid {child.pid}): {exc!r}", file=sys.stderr)
        self.children.clear()


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
    interval: float = 0.05,
    alive: Child | None = None,
) -> None:
    """Poll `condition` until it holds; TimeoutError after `timeout` (or the child's exit)."""
    deadline = time.monotonic() + within
    while True:
        if alive is not None:
            alive.check_alive()
        if await condition():
            return
        if time.monotonic() > deadline:
            detail = f"\n{alive.name}'s output:\n{alive.output()}" if alive else ""
            raise TimeoutError(f"{what}: not within {within:g} s{detail}")
        await asyncio.sleep(interval)


async def wait_http(url: str, child: Child, within: float = 30.0) -> None:
    """Until GET `url` answers 200."""
    import httpx

    async with httpx.AsyncClient(timeout=2.0) as http:

        async def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get(url)).status_code == 200
            return False

        await wait_for(healthy, within, f"{child.name} at {url}", interval=0.1, alive=child)


def uvicorn_argv(target: str, port: int, *, factory: bool = False) -> list[str]:
    """The same uvicorn flags for every HTTP server we measure: one worker, uvloop, httptools,
    access log off."""
    factory_flag = ["--factory"] if factory else []
    return [
        sys.executable, "-m", "uvicorn", target, *factory_flag,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--loop", "uvloop",
        "--http", "httptools",
        "--no-access-log",
        "--log-level", "warning",
        "--backlog", "4096",
    ]  # fmt: skip

"""A real worker process, `python -m worker` (arq's Worker, healing from Redis outages:
worker/healing.py), as deployments run it: for the tests that kill or stop one through the
operating system's signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from app.settings import Settings
from tests.analysis.conftest import FAST

WORKER_ARGV = [sys.executable, "-m", "worker"]


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a worker process: the test's servers and FAST durations, with none
    of the settings the shell running the tests may export."""
    names = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in names}
    return (
        env
        | {key.upper(): str(value) for key, value in FAST.items()}
        | {
            "PYTHONUNBUFFERED": "1",
            "ENVIRONMENT": "test",
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "STORAGE_DIR": str(settings.storage_dir),
            "AI_SERVICE_URL": settings.ai_service_url,
            "LOG_LEVEL": "INFO",
        }
        | overrides
    )


class ChildProcess:
    """One process of the service started by a test; its output goes to a file. Stopped by
    its PID (`kill`), never by name."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    async def spawn(
        cls, argv: list[str], env: dict[str, str], directory: Path, name: str
    ) -> ChildProcess:
        """`argv` started in `directory` (so no stray .env is read), output in `name`.log."""
        log = directory / f"{name}.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=directory, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        return cls(process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def send(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self, within: float) -> int:
        """Its exit code; fails (with its output) if it is still running after `within`."""
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"process {self.pid} still running after {within} s:\n{self.output()}"
            ) from None

    async def kill(self) -> None:
        """SIGKILL it if it still runs (the tests' cleanup)."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class WorkerProcess(ChildProcess):
    """One `python -m worker` process."""

    @classmethod
    async def start(cls, env: dict[str, str], directory: Path) -> WorkerProcess:
        """Started in `directory` (so no stray .env is read), output in WORKER_NAME.log."""
        name = env.get("WORKER_NAME", "worker")
        child = await cls.spawn(WORKER_ARGV, env, directory, name)
        return cls(child.process, child.log)

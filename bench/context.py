"""What a scenario gets: the stack, the run's options, and the processes scenarios share
(the API, the trivial baseline server, the Celery worker), each started on first use."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Child, Processes, uvicorn_argv, wait_http
from bench.stack import SERVER_START_SECONDS, Stack


@dataclass
class Context:
    stack: Stack
    processes: Processes
    workdir: Path
    quick: bool
    rounds_override: int | None = None
    profile: bool = False
    write: bool = False
    _shared: dict[str, Any] = field(default_factory=dict)

    def rounds(self, full: int, quick: int = 1) -> int:
        if self.rounds_override is not None:
            return self.rounds_override
        return quick if self.quick else full

    def log(self, message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    async def api(self) -> tuple[Child, int]:
        """Our API process, `uvicorn app.main:create_app --factory` (one for the run)."""
        if "api" not in self._shared:
            self._shared["api"] = await self.stack.start_api()
        api: tuple[Child, int] = self._shared["api"]
        return api

    async def trivial(self) -> tuple[Child, int]:
        """The baseline server, `uvicorn bench.trivial_app:app`, with the same flags."""
        if "trivial" not in self._shared:
            from app.embedded import free_port

            port = free_port()
            argv = uvicorn_argv("bench.trivial_app:app", port)
            child = self.processes.start("trivial", argv, self.stack.service_env())
            await wait_http(f"http://127.0.0.1:{port}/healthz", child, SERVER_START_SECONDS)
            self._shared["trivial"] = (child, port)
        trivial: tuple[Child, int] = self._shared["trivial"]
        return trivial

    async def close(self) -> None:
        if "celery" in self._shared:
            await self._shared.pop("celery").close()

    async def celery(self) -> Any:
        """The Celery baseline's worker (bench.celery_baseline.control.CeleryWorker)."""
        if "celery" not in self._shared:
            from bench.celery_baseline.control import CeleryWorker

            self._shared["celery"] = await CeleryWorker.start(self.stack)
        return self._shared["celery"]

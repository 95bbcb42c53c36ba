"""A real reference analyzer process (`uvicorn analyzer.main:app`) for the process-level
tests: its pool processes found by PID as its children; stopped by PID, its pool with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

from app.embedded import free_port, stop_group

WAV = {"content-type": "audio/wav"}


class Analyzer:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pool_pids(self) -> list[int]:
        """Its pool processes (not multiprocessing's resource tracker)."""
        children = psutil.Process(self.process.pid).children()
        return [child.pid for child in children if "spawn_main" in " ".join(child.cmdline())]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=10)

    def analyze(self, audio: bytes) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/analyze", content=audio, headers=WAV, timeout=120)

    def wait(self, ready: Any, within: float = 60.0) -> Any:
        deadline = time.monotonic() + within
        while True:
            assert self.process.poll() is None, self.output()
            value = ready()
            if value:
                return value
            assert time.monotonic() < deadline, f"not within {within} s:\n{self.output()}"
            time.sleep(0.1)


def answers(analyzer: Analyzer, path: str, status: int) -> Any:
    def check() -> Any:
        try:
            response = analyzer.get(path)
        except httpx.TransportError:
            return None
        return response if response.status_code == status else None

    return check


@contextmanager
def running_analyzer(directory: Path, workers: int = 2, **env: str) -> Iterator[Analyzer]:
    """The analyzer on a free port with ANALYZER_WORKERS=`workers` and `env` (ANALYZER_*
    names), in its own process group; returns once /healthz answers and its pool processes
    run. Stopped at the end with everything in its group."""
    port = free_port()
    base = {key: value for key, value in os.environ.items() if not key.startswith("ANALYZER_")}
    log = directory / "analyzer.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "analyzer.main:app", "--port", str(port)],
            cwd=directory, env=base | {"ANALYZER_WORKERS": str(workers)} | env,
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Analyzer(process, f"http://127.0.0.1:{port}", log)
    try:
        server.wait(answers(server, "/healthz", 200))
        server.wait(lambda: len(server.pool_pids()) == workers)
        yield server
    finally:
        stop_group(process)

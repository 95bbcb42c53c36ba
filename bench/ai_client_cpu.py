"""CPU of the worker's AI client per call (milliseconds), against the benchmark's fake AI service.

Run: uv run python bench/ai_client_cpu.py [ROUNDS]
The fake AI service (`python -m bench.fake_ai`) runs in a process of its own and answers at
once: five NDJSON progress lines, then the result. Each call streams a 64 kB recording; 50
calls at a time, as a worker with 50 jobs in flight makes them. Two rounds warm up (the
connections, imports), then ROUNDS rounds (default 40) are measured: this process's CPU time
(time.process_time, on uvloop as the worker runs) divided by the calls. Compare two revisions
by running this on each, alternately: the machine's speed moves from run to run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop

from app.ai_client.client import AIClient
from app.ai_client.wire import ProgressLine
from app.embedded import free_port
from app.settings import Settings
from bench.harness import Processes, child_env, wait_http

AT_ONCE = 50
RECORDING = b"\0" * 65536


async def _recording() -> AsyncIterator[bytes]:
    yield RECORDING


async def _ignore(line: ProgressLine) -> None:
    return None


async def _measure(url: str, rounds: int) -> float:
    """CPU milliseconds per call over `rounds` rounds of AT_ONCE calls."""
    settings = Settings(ai_service_url=url, worker_max_jobs=AT_ONCE)
    client = AIClient(settings)

    async def one(n: int) -> None:
        await client.analyze(_recording(), "audio/wav", {"language": "en"}, f"r{n}", _ignore)

    try:
        for _ in range(2):
            await asyncio.gather(*(one(n) for n in range(AT_ONCE)))
        started = time.process_time()
        for _ in range(rounds):
            await asyncio.gather(*(one(n) for n in range(AT_ONCE)))
        return (time.process_time() - started) / (rounds * AT_ONCE) * 1000
    finally:
        await client.aclose()


async def _run(rounds: int, workdir: Path) -> float:
    """The fake AI service started (its own process, under `workdir`), then `_measure`."""
    processes = Processes(workdir)
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "bench.fake_ai", "--port", str(port)]
        service = processes.start("fake-ai", argv, child_env({}))
        await wait_http(f"{url}/healthz", service)
        return await _measure(url, rounds)
    finally:
        processes.stop_all()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    with tempfile.TemporaryDirectory(prefix="ai-client-cpu-") as workdir:
        cpu = uvloop.run(_run(rounds, Path(workdir)))
    print(f"{cpu:.3f} ms of CPU per AI call ({rounds} rounds of {AT_ONCE} at once)")


if __name__ == "__main__":
    main()

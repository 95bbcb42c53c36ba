"""A live system for the clients: the API over HTTP (uvicorn, create_app), an arq worker and
the reference analyzer (a real `uvicorn analyzer.main:app` process, stopped by PID), on the
PostgreSQL and Redis of tests/conftest.py."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.embedded import free_port
from app.main import create_app
from app.settings import Settings
from tests.analysis.conftest import fake_ai, fake_ai_server, stop_worker
from tests.conftest import ApiUser
from tests.fake_ai import FakeAI, ok
from tests.servers import UvicornThread, live_client
from worker.main import healing_worker

__all__ = ["fake_ai", "fake_ai_server"]  # fixtures of the "held" AI service

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample.wav"
VOCALBORN = Path(sys.executable).parent / "vocalborn"
# Every analysis is stretched to at least this long, so a test can see it processing (and
# interrupt it there) and the progress passes through several named steps.
ANALYZER_MIN_SECONDS = 6.0


@pytest.fixture(scope="session")
def analyzer_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "analyzer.main:app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=os.environ | {"ANALYZER_MIN_SECONDS": str(ANALYZER_MIN_SECONDS)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        deadline = time.monotonic() + 60
        while not healthy():  # polled until it answers, as `vocalborn up` waits for it
            assert process.poll() is None and time.monotonic() < deadline, "no analyzer"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


@dataclass
class LiveSystem:
    api: UvicornThread
    settings: Settings
    user: ApiUser

    @property
    def api_url(self) -> str:
        return self.api.url

    async def restart_api(self) -> None:
        """Stop the API (its open streams drop) and start a new one on the same port."""
        await asyncio.to_thread(self.api.stop)
        self.api = await asyncio.to_thread(
            UvicornThread(create_app(self.settings), port=self.api.port).start
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment the CLI reads (no terminal: it never asks on Ctrl-C)."""
        return os.environ | {
            "VOCALBORN_API_URL": self.api_url,
            "VOCALBORN_TOKEN": self.user.token,
            "COLUMNS": "200",
        }

    def http(self) -> httpx.AsyncClient:
        return live_client(self.api_url, headers=self.user.headers, timeout=30)


@pytest.fixture
def api_overrides() -> dict[str, object]:
    """Settings of the API only; a test parametrizes this name to change them."""
    return {}


@pytest.fixture
def ai_url(request: pytest.FixtureRequest) -> str:
    """The AI service of `live`: the reference analyzer. A test parametrizes this name with
    "held" for an analysis that runs until it is cancelled (the fake AI service answering
    after an hour), when what it checks must happen while the task is processing: a real
    analysis of a few seconds can end first on a loaded machine."""
    if getattr(request, "param", "analyzer") == "held":
        fake_ai: FakeAI = request.getfixturevalue("fake_ai")
        fake_ai.reset(default=ok(latency=HELD_SECONDS))
        return fake_ai.url
    return str(request.getfixturevalue("analyzer_url"))


HELD_SECONDS = 3600.0


@pytest.fixture
async def live(
    settings: Settings,
    clean: None,
    alice: ApiUser,
    ai_url: str,
    api_overrides: dict[str, object],
) -> AsyncIterator[LiveSystem]:
    """The API on a loopback port (its own thread and loop) and one in-process worker, both
    configured with the AI service's URL (as one deployment's processes are: the result
    cache keys results by it)."""
    analyzer_url = ai_url
    api_settings = settings.model_copy(update={"ai_service_url": analyzer_url} | api_overrides)
    system = LiveSystem(
        UvicornThread(create_app(api_settings)).start(),
        api_settings,
        alice,
    )
    worker_settings = settings.model_copy(
        update={"ai_service_url": analyzer_url, "worker_poll_delay_seconds": 0.05}
    )
    worker = healing_worker(
        worker_settings,
        handle_signals=False,
        ctx={"settings": worker_settings},
    )
    running = asyncio.create_task(worker.async_run())
    try:
        yield system
    finally:
        await stop_worker(worker, running)
        await asyncio.to_thread(system.api.stop)


def silent_wav(seconds: float = 2.0, rate: int = 16_000) -> bytes:
    """A valid WAV with no speech in it: the analyzer refuses it (a validation error)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()

"""Fixtures for the reference analyzer: in-process clients and a loopback uvicorn server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from analyzer.main import create_app
from analyzer.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
TRUE_SYLLABLES = 27  # hand count, see fixtures/README.md
NDJSON = {"accept": "application/x-ndjson"}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"api_key": None, "workers": 2, "queue_size": 4, "min_seconds": 0}
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def analyzer_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app with the given settings, its lifespan entered, behind an in-process client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://analyzer", timeout=120
        ) as client:
            yield client


@pytest.fixture(scope="session")
async def api() -> AsyncIterator[httpx.AsyncClient]:
    async with analyzer_client(make_settings()) as c:
        yield c


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """The app under a real uvicorn on a loopback port (real streaming and concurrency)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # wait for the startup condition, bounded
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()

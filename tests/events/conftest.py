from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.analysis.conftest import fake_ai, fake_ai_server, start_worker, worker_settings
from tests.servers import UvicornThread, live_client

__all__ = ["fake_ai", "fake_ai_server", "start_worker", "worker_settings"]

LIVE = {
    "sse_heartbeat_seconds": 0.5,
    "sse_max_connection_seconds": 60.0,
    "max_streams_per_user": 500,
}


@pytest.fixture
def live_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=LIVE)


StartApi = Callable[..., UvicornThread]


@pytest.fixture
def start_live_api(live_settings: Settings, clean: None) -> Iterator[StartApi]:
    """The API in a real uvicorn on loopback (streaming clients need a real socket); its
    access log propagates to the root logger, where caplog can read it."""
    servers: list[UvicornThread] = []

    def start(**overrides: Any) -> UvicornThread:
        app = create_app(live_settings.model_copy(update=overrides))
        server = UvicornThread(app, log_config=None, log_level="info").start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_api(start_live_api: StartApi) -> UvicornThread:
    return start_live_api()


@pytest.fixture
async def http(live_api: UvicornThread) -> AsyncIterator[httpx.AsyncClient]:
    async with live_client(live_api.url, connections=500, timeout=30.0) as client:
        yield client


@dataclass
class SseEvent:
    event: str
    id: str
    data: str

    def json(self) -> Any:
        import json

        return json.loads(self.data)


async def read_events(
    lines: AsyncIterator[str], limit: int | None = None, comments: list[str] | None = None
) -> list[SseEvent]:
    """Parse SSE lines (`response.aiter_lines()`) until the server ends the body, or until
    `limit` events; the same iterator can be read on later."""
    events: list[SseEvent] = []
    fields: dict[str, str] = {}
    async for line in lines:
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
            continue
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        if fields:
            events.append(
                SseEvent(fields.get("event", ""), fields.get("id", ""), fields.get("data", ""))
            )
            fields = {}
            if limit is not None and len(events) >= limit:
                break
    return events

"""Real HTTP servers on loopback for tests: uvicorn in a thread with its own event loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import uvicorn

from app.client.api import KEEPALIVE_SECONDS
from app.embedded import free_port


def live_client(base_url: str, connections: int = 100, **options: Any) -> httpx.AsyncClient:
    """An httpx client to a real server on loopback that reuses an idle connection for
    KEEPALIVE_SECONDS at most, as the CLI does: uvicorn closes one after 5 s
    (`timeout_keep_alive`), and httpx's own expiry is 5 s too, so a request sent on a
    connection the server was closing just then failed ("Server disconnected") at random.
    `connections`: how many at once; `options`: httpx.AsyncClient's."""
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=KEEPALIVE_SECONDS,
    )
    return httpx.AsyncClient(base_url=base_url, limits=limits, **options)


class UvicornThread:
    def __init__(self, app: Any, port: int | None = None, **config: Any) -> None:
        self.app = app
        self.port = port or free_port()
        self._config = {"log_level": "warning", "timeout_graceful_shutdown": 1} | config
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> UvicornThread:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, **self._config)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"uvicorn on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
            self._server = None

"""The fake AI service of the benchmark, as its own process:

    python -m bench.fake_ai --port P

The wire format is the tests' fake (tests/fake_ai.py, whose result and step names it
imports): `POST /v1/analyze` reads the whole streamed request body, then answers
`application/x-ndjson`: a progress line per step (0, 20, 40, 60, 80), a fixed share of the
latency after each, then the result line. The latency is read at the start of each call, so
calls already running keep theirs. A raw ASGI app on uvicorn (uvloop, httptools): the fake
costs as little CPU as possible, since it shares the machine with what is measured.

Control (for the orchestrator, not part of the AI service's interface):
    POST /_bench/config {"latency": seconds}
    POST /_bench/reset                      counters to zero (max in flight to those in flight)
    GET  /_bench/stats                      calls, finished, disconnected, in_flight,
                                            max_in_flight, body_bytes
A call whose client goes away (a killed worker) stops at once and counts as disconnected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tests.fake_ai import PROGRESS_LINES, RESULT_LINE

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


NDJSON_HEADERS = [(b"content-type", b"application/x-ndjson")]
JSON_HEADERS = [(b"content-type", b"application/json")]


class FakeAIService:
    def __init__(self) -> None:
        self.latency = 0.0
        self.calls = 0
        self.finished = 0
        self.disconnected = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.body_bytes = 0

    def stats(self) -> dict[str, Any]:
        return {
            "latency": self.latency,
            "calls": self.calls,
            "finished": self.finished,
            "disconnected": self.disconnected,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "body_bytes": self.body_bytes,
        }

    def reset(self) -> None:
        self.calls = self.finished = self.disconnected = self.body_bytes = 0
        self.max_in_flight = self.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/v1/analyze" and method == "POST":
            await self._analyze(receive, send)
        elif path == "/_bench/stats":
            await _json(send, 200, self.stats())
        elif path == "/_bench/config" and method == "POST":
            body = await _body(receive)
            self.latency = float(json.loads(body or b"{}").get("latency", self.latency))
            await _json(send, 200, self.stats())
        elif path == "/_bench/reset" and method == "POST":
            await _body(receive)
            self.reset()
            await _json(send, 200, self.stats())
        elif path == "/healthz":
            await _json(send, 200, {"status": "ok"})
        else:
            await _json(send, 404, {"error": {"code": "not_found", "message": path}})

    async def _analyze(self, receive: Receive, send: Send) -> None:
        latency = self.latency
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            while True:  # the recording, streamed; read to the end, as the real service does
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.disconnected += 1
                    return
                self.body_bytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            # From here on the next receive() only ever answers http.disconnect.
            gone = asyncio.ensure_future(receive())
            try:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": NDJSON_HEADERS}
                )
                for line in PROGRESS_LINES:
                    await send({"type": "http.response.body", "body": line, "more_body": True})
                    if latency > 0:
                        await asyncio.wait([gone], timeout=latency / len(PROGRESS_LINES))
                    if gone.done():
                        self.disconnected += 1
                        return
                await send({"type": "http.response.body", "body": RESULT_LINE})
                self.finished += 1
            finally:
                gone.cancel()
        finally:
            self.in_flight -= 1


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _json(send: Send, status: int, obj: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": json.dumps(obj).encode()})


app = FakeAIService()


class FakeAIControl:
    """The orchestrator's handle on the fake AI process."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        async with httpx.AsyncClient(base_url=self.url, timeout=10.0) as http:
            response = await http.post(path, json=body or {})
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    async def configure(self, latency: float) -> None:
        await self._post("/_bench/config", {"latency": latency})

    async def reset(self) -> None:
        await self._post("/_bench/reset")

    async def stats(self) -> dict[str, Any]:
        import httpx

        async with httpx.AsyncClient(base_url=self.url, timeout=10.0) as http:
            response = await http.get("/_bench/stats")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result


def main() -> None:
    import uvicorn

    from bench.harness import raise_fd_limit

    parser = argparse.ArgumentParser(description="the benchmark's fake AI service")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
        lifespan="on",
    )


if __name__ == "__main__":
    main()

"""A controllable stand-in for the external AI service: a real HTTP server on loopback.

It stands in for the external service only. Modes are queued per call (`then`), with a
default for calls beyond the queue; `stop()` makes the port refuse connections. It counts the
calls it is answering at once and keeps the most it ever saw (`max_in_flight`): from the
request's arrival until its answer's last byte (or the client's disconnect).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.servers import UvicornThread

AI_RESULT: dict[str, Any] = {
    "overall_score": 81.25,
    "pronunciation_accuracy": None,
    "fluency_score": 78.5,
    "rhythm_score": 84.0,
    "detailed_analysis": {"measures": {"speech_rate": 4.1}, "warnings": []},
    "sentence_analyses": [{"start": 0.0, "end": 1.2, "syllables": 5}],
    "suggestions": "建議放慢語速，在句子之間稍作停頓。",
    "improvement_areas": ["語速", "停頓"],
    "analysis_model_version": "fake-1.0",
    "processing_time_seconds": 0.5,
}
AI_STEPS = ("decoding", "feature_extraction", "syllable_detection", "scoring", "suggestions")


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# The answer's NDJSON lines, as the fake services send them: a progress line per step, then the
# result.
PROGRESS_LINES = [
    _line({"event": "progress", "progress": 100 * index / len(AI_STEPS), "step": step})
    for index, step in enumerate(AI_STEPS)
]
RESULT_LINE = _line({"event": "result", "result": AI_RESULT})


@dataclass(frozen=True)
class Mode:
    kind: str  # ok | status | hang | malformed | truncated | a kind of UNSTORABLE
    latency: float = 0.0
    status: int = 200
    retry_after: str | None = None
    message: str = "fake failure"  # a status answer's error message


OK = Mode("ok")


def ok(latency: float = 0.0) -> Mode:
    return Mode("ok", latency=latency)


def status(
    code: int, retry_after: str | None = None, latency: float = 0.0, message: str = "fake failure"
) -> Mode:
    return Mode("status", latency=latency, status=code, retry_after=retry_after, message=message)


HANG = Mode("hang")
MALFORMED = Mode("malformed")
# Results valid for Python's json module that PostgreSQL's jsonb refuses, by mode.
UNSTORABLE: dict[str, dict[str, object]] = {
    "nan": {"jitter": float("nan")},
    "nul": {"note": "a\x00b"},  # sent as the \u0000 escape
    "surrogate": {"note \ud800": 1},  # an unpaired surrogate escape, in a key
}
NAN, NUL, SURROGATE = (Mode(kind) for kind in UNSTORABLE)


@dataclass
class Call:
    mode: Mode
    at: float = field(default_factory=time.monotonic)
    body_bytes: int = 0
    body_sha256: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    answered_at: float | None = None  # when its answer (a status, or the result line) went
    closed_by_client: bool = False
    peer: tuple[str, int] | None = None  # the client's address: one per TCP connection


class FakeAI:
    def __init__(self) -> None:
        app = Starlette(routes=[Route("/v1/analyze", self._analyze, methods=["POST"])])
        self._server = UvicornThread(app)
        self.default = OK
        self._script: deque[Mode] = deque()
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def running(self) -> bool:
        return self._server.running

    @property
    def result(self) -> dict[str, Any]:
        return copy.deepcopy(AI_RESULT)

    def reset(self, default: Mode = OK) -> None:
        with self._lock:
            self.default = default
            self._script.clear()
            self.calls = []
            self.max_in_flight = self.in_flight

    def switch(self, default: Mode) -> None:
        """From the next call on, answer `default` (the call log is kept: an outage that
        starts or ends in the middle of a scenario)."""
        with self._lock:
            self.default = default

    def then(self, *modes: Mode, times: int = 1) -> FakeAI:
        with self._lock:
            for _ in range(times):
                self._script.extend(modes)
        return self

    def call_count(self) -> int:
        with self._lock:
            return len(self.calls)

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _next_mode(self) -> Mode:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    # -- the HTTP side ---------------------------------------------------------------
    async def _analyze(self, request: Request) -> Response:
        self._enter()
        streaming = False
        try:
            response = await self._answer(request)
            streaming = isinstance(response, StreamingResponse)
            return response
        finally:
            if not streaming:  # a stream leaves when it ends (`_stream`)
                self._leave()

    async def _answer(self, request: Request) -> Response:
        mode = self._next_mode()
        call = Call(mode, headers=dict(request.headers), query=dict(request.query_params))
        call.peer = (request.client.host, request.client.port) if request.client else None
        digest = hashlib.sha256()
        async for chunk in request.stream():
            digest.update(chunk)
            call.body_bytes += len(chunk)
        call.body_sha256 = digest.hexdigest()
        with self._lock:
            self.calls.append(call)
        if mode.kind == "status":
            await asyncio.sleep(mode.latency)
            headers = {"Retry-After": mode.retry_after} if mode.retry_after else None
            body = {"error": {"code": f"http_{mode.status}", "message": mode.message}}
            call.answered_at = time.monotonic()
            content = json.dumps(body).encode()  # ASCII: any unpaired surrogate as its escape
            return Response(content, mode.status, headers, media_type="application/json")
        if mode.kind == "malformed":
            return Response(b'{"overall_score": 250', media_type="application/json")
        if mode.kind in UNSTORABLE:  # valid for Python's json module, refused by jsonb
            body = json.dumps(AI_RESULT | {"detailed_analysis": UNSTORABLE[mode.kind]})
            return Response(body.encode(), media_type="application/json")
        return StreamingResponse(self._stream(mode, call), media_type="application/x-ndjson")

    async def _stream(self, mode: Mode, call: Call) -> AsyncIterator[bytes]:
        try:
            for line in PROGRESS_LINES:
                yield line
                while mode.kind == "hang":  # blank keep-alive lines reveal a closed client
                    await asyncio.sleep(0.05)
                    yield b"\n"
                await asyncio.sleep(mode.latency / len(AI_STEPS))
            yield RESULT_LINE
            call.finished = True
            call.answered_at = time.monotonic()
        finally:
            call.closed_by_client = not call.finished
            self._leave()

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> FakeAI:
        self._server.start()
        return self

    def stop(self) -> None:
        """Afterwards the port refuses connections."""
        self._server.stop()

"""The baseline for bench/sse_fanout.py: a bare sse-starlette endpoint fed from memory.

One route, `GET /events/{task}` (task = 0 … tasks-1), answering sse-starlette's
`EventSourceResponse`. Per task, a background task ticks `rate` times a second: it builds a
status document shaped like ours (the same fields, ~the same size), with the publish time in
`updated_at` and a per-task sequence number in `worker_name` (`seq-<n>`), encodes the SSE frame
ONCE and hands the same bytes to every subscriber's bounded queue (a full queue drops its
oldest frame, like our hub's listeners).

Run by the orchestrator as its own process: `python bench/sse_fanout.py serve --kind bare …`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

QUEUE_SIZE = 16  # the same as Settings.sse_client_queue_size's default


def iso_utc(moment: datetime) -> str:
    """Like pydantic's JSON for an aware UTC datetime: `…T12:34:56.123456Z`."""
    text = moment.replace(tzinfo=None).isoformat()
    return text + "Z"


def status_document(task: str, seq: int, published: datetime) -> bytes:
    """A document with the fields and the size of our TaskStatusOut (in the same order)."""
    document = {
        "task_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"task-{task}")),
        "practice_record_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"record-{task}")),
        "practice_session_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"session-{task}")),
        "status": "processing",
        "progress": seq % 100,
        "current_step": {"code": "feature_extraction", "label": "語音特徵提取", "index": 3},
        "total_steps": 5,
        "started_at": iso_utc(published),
        "completed_at": None,
        "estimated_remaining_time": "PT12S",
        "worker_name": f"seq-{seq}",
        "retry_count": 0,
        "queue_position": None,
        "lane": "interactive",
        "error_code": None,
        "error_message": None,
        "cancel_requested": False,
        "updated_at": iso_utc(published),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class Subscriber:
    def __init__(self) -> None:
        self.frames: deque[bytes] = deque(maxlen=QUEUE_SIZE)
        self.ready = asyncio.Event()

    def put(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.ready.set()

    async def get(self) -> bytes:
        while not self.frames:
            self.ready.clear()
            await self.ready.wait()
        return self.frames.popleft()


class Broadcaster:
    def __init__(self, tasks: int, rate: float) -> None:
        self.tasks = [str(i) for i in range(tasks)]
        self.period = 1.0 / rate
        self.subscribers: dict[str, set[Subscriber]] = {task: set() for task in self.tasks}
        self.published = 0
        self._runners: list[asyncio.Task[None]] = []

    def start(self) -> None:
        origin = time.monotonic()
        for index, task in enumerate(self.tasks):
            phase = self.period * index / len(self.tasks)  # spread the ticks evenly
            runner = asyncio.create_task(self._tick(task, origin + phase))
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            runner.cancel()
        for runner in self._runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def _tick(self, task: str, first: float) -> None:
        seq = 0
        while True:
            seq += 1
            await asyncio.sleep(max(0.0, first + seq * self.period - time.monotonic()))
            now = datetime.now(UTC)
            doc = status_document(task, seq, now)
            entry_id = f"{int(now.timestamp() * 1000)}-{seq}".encode()
            frame = b"event: status\r\nid: %s\r\ndata: %s\r\n\r\n" % (entry_id, doc)
            self.published += 1
            for subscriber in self.subscribers[task]:
                subscriber.put(frame)

    async def frames(self, task: str) -> AsyncIterator[bytes]:
        subscriber = Subscriber()
        self.subscribers[task].add(subscriber)
        try:
            while True:
                yield await subscriber.get()
        finally:
            self.subscribers[task].discard(subscriber)


def create_bare_app(tasks: int = 100, rate: float = 5.0) -> Starlette:
    broadcaster = Broadcaster(tasks, rate)

    async def events(request: Request) -> EventSourceResponse | PlainTextResponse:
        task = request.path_params["task"]
        if task not in broadcaster.subscribers:
            return PlainTextResponse("no such task", status_code=404)
        return EventSourceResponse(broadcaster.frames(task), ping=0)

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        broadcaster.start()
        try:
            yield
        finally:
            await broadcaster.stop()

    return Starlette(
        routes=[Route("/events/{task}", events), Route("/healthz", healthz)], lifespan=lifespan
    )

"""Live progress endpoints: SSE (sse-starlette) and the seed's WebSocket, plus stream tokens.

The SSE routes are plain Starlette routes served by `ServeStreamsFirst`, ahead of FastAPI's
per-request layers: a stream lives for minutes, and those layers would stay alive with it
(memory per connection). They are documented in the README rather than the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel
from sqlalchemy import RowMapping, text
from sse_starlette import EventSourceResponse
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.analysis.hub import Event
from app.analysis.live import Item, LiveSource, Marker, StreamRequest
from app.analysis.progress import session_topic, task_topic
from app.analysis.stream_auth import issue_stream_token, stream_principal
from app.auth import Principal
from app.deps import SessionDep, StateDep, UserDep
from app.errors import AppError, NotFound, app_error_response, error_responses
from app.metrics import STREAM_CONNECTIONS
from app.state import AppState

router = APIRouter(
    prefix="/tasks", tags=["progress"], responses=error_responses(401, 404, 422, 503)
)

HEARTBEAT_FRAME = b": heartbeat\r\n\r\n"
RECONNECT_FRAME = b"event: reconnect\r\ndata: {}\r\n\r\n"
RECONNECT_MESSAGE = '{"event": "reconnect"}'
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

OWNS_TASK = text("SELECT 1 FROM ai_analysis_tasks WHERE task_id = :id AND user_id = :user_id")
OWNS_SESSION = text(
    "SELECT 1 FROM practice_sessions WHERE practice_session_id = :id AND user_id = :user_id"
)


class StreamToken(BaseModel):
    stream_token: str
    expires_in: int
    events_url: str


@router.post("/analysis/{task_id}/stream-token", response_model=StreamToken)
async def task_stream_token(
    task_id: uuid.UUID, user: UserDep, session: SessionDep, state: StateDep
) -> StreamToken:
    if not await session.scalar(OWNS_TASK, {"id": task_id, "user_id": user.user_id}):
        raise NotFound("Analysis task")
    return _stream_token(state, user, task_topic(task_id), f"{task_id}/events")


@router.post("/analysis/session/{session_id}/stream-token", response_model=StreamToken)
async def session_stream_token(
    session_id: uuid.UUID, user: UserDep, session: SessionDep, state: StateDep
) -> StreamToken:
    if not await session.scalar(OWNS_SESSION, {"id": session_id, "user_id": user.user_id}):
        raise NotFound("Practice session")
    return _stream_token(state, user, session_topic(session_id), f"session/{session_id}/events")


def _stream_token(state: AppState, user: Principal, topic: str, events_path: str) -> StreamToken:
    token = issue_stream_token(state.settings, user, topic)
    return StreamToken(
        stream_token=token,
        expires_in=state.settings.stream_token_ttl_seconds,
        events_url=f"/api/v1/tasks/analysis/{events_path}?stream_token={token}",
    )


# -- opening a stream (shared by SSE and WebSocket) -------------------------------------
class _StreamSlot:
    """The stream's place in the per-user limit and in the connection gauge: taken when built
    (429 when none is free), given back once, however often `give_back` is called."""

    __slots__ = ("_gauge", "_held", "_limiter", "_user")

    def __init__(self, state: AppState, user: Principal, transport: str) -> None:
        state.limiter.take(user)  # checked and taken in one step
        self._limiter = state.limiter
        self._user = user
        self._gauge = STREAM_CONNECTIONS.labels(transport)
        self._gauge.inc()
        self._held = True

    def give_back(self) -> None:
        """The first call gives the place back; later ones do nothing."""
        if self._held:
            self._held = False
            self._limiter.give_back(self._user)
            self._gauge.dec()


@dataclass(frozen=True, slots=True)
class _Opened:
    """A stream ready to run, holding its place: `slot` must be given back by its owner."""

    live: LiveSource
    request: StreamRequest
    rows: Sequence[RowMapping]
    slot: _StreamSlot


async def _open(
    connection: HTTPConnection, last_event_id: str | None, transport: str
) -> _Opened | None:
    """Authorise, check ownership (404 like an unknown id), take a place in the per-user limit
    (429), all before the response starts. None: a reconnect after the end, the client already
    has every final state (nothing to send, no place taken)."""
    state: AppState = connection.app.state.vocalborn
    live = state.live
    params = connection.path_params
    last = last_event_id if last_event_id and STREAM_ID.match(last_event_id) else None
    if "task_id" in params:
        task_id: uuid.UUID = params["task_id"]
        topic = task_topic(task_id)
        user = stream_principal(connection, state.settings, topic)
        rows = await live.task_rows(user, task_id)
        request = StreamRequest(topic, partial(live.task_rows, user, task_id), last, True)
    else:
        session_id: uuid.UUID = params["session_id"]
        topic = session_topic(session_id)
        user = stream_principal(connection, state.settings, topic)
        rows = await live.session_rows(user, session_id)
        request = StreamRequest(topic, partial(live.session_rows, user, session_id), last, False)
    if await live.ended(request, rows):
        return None
    return _Opened(live, request, rows, _StreamSlot(state, user, transport))  # nothing awaited


def _frame(item: Item) -> bytes:
    if isinstance(item, Event):
        return item.frame
    return HEARTBEAT_FRAME if item is Marker.HEARTBEAT else RECONNECT_FRAME


class _StreamResponse(EventSourceResponse):
    """A stream's response, giving its place back when it is done, whether or not the body ever
    ran: sse-starlette never starts the generator for HEAD, nor when the client is gone first,
    and then the generator's own `finally` never runs."""

    def __init__(self, opened: _Opened) -> None:
        self._slot = opened.slot
        try:
            frames = opened.live.stream(opened.request, opened.rows, _frame, opened.slot)
            super().__init__(frames, ping=0)
        except BaseException:
            self._slot.give_back()
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.give_back()


async def sse_events(request: Request) -> Response:
    """GET …/{task_id}/events and …/session/{session_id}/events. Renders its own errors: it
    is served ahead of the exception middleware (`ServeStreamsFirst`). A reconnect after the
    end answers 204, which tells EventSource to stop reconnecting."""
    try:
        opened = await _open(request, request.headers.get("last-event-id"), "sse")
    except AppError as exc:
        return app_error_response(exc)
    if opened is None:
        return Response(status_code=204)
    return _StreamResponse(opened)  # called at once by the route: nothing awaited in between


SSE_PATHS = (
    "/api/v1/tasks/analysis/{task_id:uuid}/events",
    "/api/v1/tasks/analysis/session/{session_id:uuid}/events",
)


class ServeStreamsFirst:
    """ASGI middleware serving the SSE routes ahead of FastAPI's exception middleware, exit
    stack and router: a stream lives for minutes, and each of those layers would keep its
    frames (and an exit stack) alive with it, about 3 KiB per open stream, and wrap every
    event's `send`. The application registers the same routes as well, so other methods get
    its 405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes = [Route(path, sse_events, methods=["GET"]) for path in SSE_PATHS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/events"):
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# -- the seed's WebSocket ----------------------------------------------------------------
WS_CLOSE_CODES = {401: 4401, 404: 4404, 429: 4429}
CANCEL_WAIT_SECONDS = 2.0


def _message(item: Item) -> str | None:
    if isinstance(item, Event):
        return item.doc.decode()
    return None if item is Marker.HEARTBEAT else RECONNECT_MESSAGE


@router.websocket("/ws/task/{task_id:uuid}")
async def task_websocket(websocket: WebSocket, task_id: uuid.UUID) -> None:
    """The same status documents as SSE, one text message each."""
    await websocket.accept()
    try:
        opened = await _open(websocket, websocket.query_params.get("last_event_id"), "websocket")
    except AppError as exc:
        await websocket.close(WS_CLOSE_CODES.get(exc.status_code, 4400), exc.message[:120])
        return
    if opened is None:  # a resume after the end: nothing to send
        await websocket.close(1000)
        return
    try:
        await _serve(websocket, opened)
    finally:
        opened.slot.give_back()  # whether or not the stream ever ran


async def _serve(websocket: WebSocket, opened: _Opened) -> None:
    messages = opened.live.stream(opened.request, opened.rows, _message, opened.slot)
    sender = asyncio.create_task(_send(websocket, messages))
    receiver = asyncio.create_task(_until_disconnect(websocket))
    done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if pending:  # bounded: a Redis call may swallow its cancellation (redis-py #2028, #2551)
        await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)
    if sender in done:
        failed = sender.exception() is not None
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(1011 if failed else 1000)


async def _send(websocket: WebSocket, messages: AsyncGenerator[str | None]) -> None:
    async with contextlib.aclosing(messages):  # the stream's slot and listener, released now
        async for message in messages:
            if message is not None:
                await websocket.send_text(message)


async def _until_disconnect(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()

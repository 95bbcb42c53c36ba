"""Live progress endpoints: SSE (sse-starlette) and the seed's WebSocket, plus stream tokens."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel
from sqlalchemy import text
from sse_starlette import EventSourceResponse

from app.analysis.hub import Event
from app.analysis.live import Item, Marker
from app.analysis.progress import session_topic, task_topic
from app.analysis.stream_auth import issue_stream_token, stream_principal
from app.auth import Principal
from app.deps import SessionDep, StateDep, UserDep
from app.errors import AppError, NotFound
from app.metrics import STREAM_CONNECTIONS
from app.state import AppState

router = APIRouter(prefix="/tasks", tags=["progress"])

HEARTBEAT_FRAME = b": heartbeat\r\n\r\n"
RECONNECT_FRAME = b"event: reconnect\r\ndata: {}\r\n\r\n"
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)]

OWNS_TASK = text("SELECT 1 FROM ai_analysis_tasks WHERE task_id = :id AND user_id = :user_id")
OWNS_SESSION = text(
    "SELECT 1 FROM practice_sessions WHERE practice_session_id = :id AND user_id = :user_id"
)


class StreamToken(BaseModel):
    stream_token: str
    expires_in: int
    events_url: str


def _last_event_id(value: str | None) -> str | None:
    return value if value and STREAM_ID.match(value) else None


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


async def _sse_frames(
    state: AppState, user: Principal, items: AsyncIterator[Item]
) -> AsyncIterator[bytes]:
    with state.limiter.hold(user), STREAM_CONNECTIONS.labels("sse").track_inprogress():
        async for item in items:
            if isinstance(item, Event):
                yield item.frame
            elif item is Marker.HEARTBEAT:
                yield HEARTBEAT_FRAME
            else:
                yield RECONNECT_FRAME


def _sse(state: AppState, user: Principal, items: AsyncIterator[Item]) -> EventSourceResponse:
    return EventSourceResponse(_sse_frames(state, user, items), ping=0)


@router.get("/analysis/{task_id}/events", response_class=EventSourceResponse)
async def task_events(
    task_id: uuid.UUID, request: Request, state: StateDep, last_event_id: LastEventId = None
) -> EventSourceResponse:
    user = stream_principal(request, state.settings, task_topic(task_id))
    await state.live.task_rows(user, task_id)
    state.limiter.check(user)
    items = state.live.task_events(user, task_id, _last_event_id(last_event_id))
    return _sse(state, user, items)


@router.get("/analysis/session/{session_id}/events", response_class=EventSourceResponse)
async def session_events(
    session_id: uuid.UUID, request: Request, state: StateDep, last_event_id: LastEventId = None
) -> EventSourceResponse:
    user = stream_principal(request, state.settings, session_topic(session_id))
    await state.live.session_rows(user, session_id)
    state.limiter.check(user)
    items = state.live.session_events(user, session_id, _last_event_id(last_event_id))
    return _sse(state, user, items)


WS_CLOSE_CODES = {401: 4401, 404: 4404, 429: 4429}


@router.websocket("/ws/task/{task_id}")
async def task_websocket(websocket: WebSocket, task_id: uuid.UUID) -> None:
    """The seed's WebSocket: the same status documents, one text message each."""
    state: AppState = websocket.app.state.vocalborn
    await websocket.accept()
    try:
        user = stream_principal(websocket, state.settings, task_topic(task_id))
        await state.live.task_rows(user, task_id)
        state.limiter.check(user)
    except AppError as exc:
        await websocket.close(WS_CLOSE_CODES.get(exc.status_code, 4400), exc.message[:120])
        return
    last_event_id = _last_event_id(websocket.query_params.get("last_event_id"))
    items = state.live.task_events(user, task_id, last_event_id)
    sender = asyncio.create_task(_send_documents(websocket, state, user, items))
    receiver = asyncio.create_task(_until_disconnect(websocket))
    done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await task
    if sender in done:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close()


async def _send_documents(
    websocket: WebSocket, state: AppState, user: Principal, items: AsyncIterator[Item]
) -> None:
    with state.limiter.hold(user), STREAM_CONNECTIONS.labels("websocket").track_inprogress():
        async for item in items:
            if isinstance(item, Event):
                await websocket.send_text(item.doc.decode())
            elif item is Marker.RECONNECT:
                await websocket.send_text('{"event": "reconnect"}')


async def _until_disconnect(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()

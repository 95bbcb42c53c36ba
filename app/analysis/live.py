"""What a progress stream sends: replay or current state first, then live events, heartbeats
with a re-check against PostgreSQL (pub/sub is lossy), and an end.

Shared by the SSE and WebSocket endpoints, which only frame the items differently.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.analysis import status
from app.analysis.eta import Estimator
from app.analysis.hub import Event, Hub, Listener, stream_id_key
from app.analysis.progress import DOC_FIELD, session_topic, stream_key, task_topic
from app.auth import Principal
from app.errors import NotFound

START_ID = "0-0"
_RowLoader = Callable[[], Awaitable[Sequence[RowMapping]]]


class Marker(enum.Enum):
    HEARTBEAT = "heartbeat"
    RECONNECT = "reconnect"


Item = Event | Marker


@dataclass(frozen=True, slots=True)
class StreamTiming:
    heartbeat_seconds: float
    max_connection_seconds: float


class _Sent:
    """What this client has been sent: its position in the stream and each task's state."""

    def __init__(self, position: str) -> None:
        self.position = position
        self._order = stream_id_key(position)
        self.states: dict[str, Event] = {}

    def is_new(self, event: Event) -> bool:
        return event.order > self._order and self.is_newer_state(event)

    def is_newer_state(self, event: Event) -> bool:
        known = self.states.get(event.task_id)
        return known is None or event.updated_at > known.updated_at

    def record(self, event: Event) -> None:
        if event.order > self._order:
            self.position, self._order = event.id, event.order
        self.states[event.task_id] = event

    def all_terminal(self) -> bool:
        return bool(self.states) and all(event.terminal for event in self.states.values())


class LiveSource:
    def __init__(
        self,
        hub: Hub,
        redis: Redis,
        sessions: async_sessionmaker[AsyncSession],
        estimator: Estimator,
        timing: StreamTiming,
    ) -> None:
        self._hub = hub
        self._redis = redis
        self._sessions = sessions
        self._estimator = estimator
        self._timing = timing

    # -- snapshots from PostgreSQL --------------------------------------------------
    async def task_rows(self, user: Principal, task_id: uuid.UUID) -> Sequence[RowMapping]:
        params = {"task_id": task_id, "user_id": user.user_id, "admin": False}
        async with self._sessions() as session:
            rows = (await session.execute(status.TASK_STATUS, params)).mappings().all()
        if not rows:
            raise NotFound("Analysis task")
        return rows

    async def session_rows(self, user: Principal, session_id: uuid.UUID) -> Sequence[RowMapping]:
        params = {"session_id": session_id, "user_id": user.user_id}
        async with self._sessions() as session:
            rows = (await session.execute(status.SESSION_STATUS, params)).mappings().all()
        if not rows:
            raise NotFound("Practice session")
        return [row for row in rows if row["task_id"] is not None]

    async def _snapshot(self, rows: Sequence[RowMapping], topic: str, position: str) -> list[Event]:
        documents = await status.describe_all(rows, self._redis, self._estimator)
        return [
            Event.build(topic, position, document.model_dump_json().encode())
            for document in documents
        ]

    # -- the stream -------------------------------------------------------------------
    async def task_events(
        self, user: Principal, task_id: uuid.UUID, last_event_id: str | None
    ) -> AsyncIterator[Item]:
        topic = task_topic(task_id)
        async with self._hub.listen(topic) as listener:
            async for item in self._stream(
                topic, listener, last_event_id, lambda: self.task_rows(user, task_id), True
            ):
                yield item

    async def session_events(
        self, user: Principal, session_id: uuid.UUID, last_event_id: str | None
    ) -> AsyncIterator[Item]:
        topic = session_topic(session_id)
        async with self._hub.listen(topic) as listener:
            async for item in self._stream(
                topic, listener, last_event_id, lambda: self.session_rows(user, session_id), False
            ):
                yield item

    async def _stream(
        self,
        topic: str,
        listener: Listener,
        last_event_id: str | None,
        load_rows: _RowLoader,
        single_task: bool,
    ) -> AsyncIterator[Item]:
        """Subscribed first (by the caller), then the state, then live events."""
        sent = _Sent(last_event_id or START_ID)
        for event in await self._opening(topic, last_event_id, load_rows, single_task):
            sent.record(event)
            yield event
        deadline = time.monotonic() + self._timing.max_connection_seconds
        while not sent.all_terminal():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield Marker.RECONNECT
                return
            incoming = await listener.get(min(self._timing.heartbeat_seconds, remaining))
            if incoming is not None:
                if sent.is_new(incoming):
                    sent.record(incoming)
                    yield incoming
                continue
            if time.monotonic() < deadline:
                yield Marker.HEARTBEAT
                for fresh in await self._snapshot(await load_rows(), topic, sent.position):
                    if sent.is_newer_state(fresh):
                        sent.record(fresh)
                        yield fresh

    async def _opening(
        self, topic: str, last_event_id: str | None, load_rows: _RowLoader, single_task: bool
    ) -> list[Event]:
        """Replay after Last-Event-ID, or the current state; PostgreSQL when the stream is gone."""
        rows = await load_rows()  # also the ownership check
        try:
            if last_event_id:
                entries = await self._redis.xrange(stream_key(topic), f"({last_event_id}", "+")
                if entries or await self._redis.exists(stream_key(topic)):
                    return [_event(topic, entry) for entry in entries]
            elif single_task:
                entries = await self._redis.xrevrange(stream_key(topic), "+", "-", count=1)
                if entries:
                    return [_event(topic, entries[0])]
            position = await self._latest_id(topic)
        except RedisError:
            position = last_event_id or START_ID
        return await self._snapshot(rows, topic, position)

    async def _latest_id(self, topic: str) -> str:
        entries = await self._redis.xrevrange(stream_key(topic), "+", "-", count=1)
        return _text(entries[0][0]) if entries else START_ID


def _event(topic: str, entry: tuple[bytes, dict[bytes, bytes]]) -> Event:
    return Event.build(topic, _text(entry[0]), entry[1][DOC_FIELD])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

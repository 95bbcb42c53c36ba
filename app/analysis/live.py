"""What a progress stream sends: replay or current state first, then live events; after a
quiet heartbeat period a heartbeat and a re-check against PostgreSQL (pub/sub is lossy); an
end after the terminal status, or a `reconnect` at the maximum connection lifetime.

One generator per client, shared by the SSE and WebSocket endpoints, which pass a `render`
function (frame bytes for SSE, the JSON text for WebSocket). Nothing per event is computed per
client but the comparison with what that client was last sent.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.analysis import status
from app.analysis.eta import Estimator
from app.analysis.hub import Event, Hub, stream_id_key
from app.analysis.models import TERMINAL_STATUSES
from app.analysis.progress import DOC_FIELD, stream_key
from app.auth import Principal
from app.errors import NotFound

log = logging.getLogger(__name__)

START_ID = "0-0"
RowLoader = Callable[[], Awaitable[Sequence[RowMapping]]]
T = TypeVar("T")


class Marker(enum.Enum):
    HEARTBEAT = "heartbeat"
    RECONNECT = "reconnect"


Item = Event | Marker


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """The heartbeat period is the hub's tick (`Hub(tick_seconds=…)`)."""

    max_connection_seconds: float


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """One client's stream: its topic, how to reload its rows, where it was (Last-Event-ID)."""

    topic: str
    load_rows: RowLoader
    last_event_id: str | None
    single_task: bool


class Slot(Protocol):
    """The stream's place (the per-user limit, the connection gauge), taken before the stream
    starts; given back once, however often `give_back` is called."""

    def give_back(self) -> None: ...


class _Sent:
    """What this client has been sent: its position in the stream and each task's state."""

    __slots__ = ("_missing", "_open", "_order", "position", "states")

    def __init__(self, position: str) -> None:
        self.position = position
        self._order = stream_id_key(position)
        self.states: dict[str, Event] = {}
        self._open = 0  # tasks not yet in a terminal status
        self._missing: dict[str, datetime] | None = None  # see `overdue`; rarely needed

    def accept(self, event: Event, after_position: bool = True) -> bool:
        """Whether to send `event`, recorded if so: a newer state of its task than the one
        sent and, for a live event, later in the stream than the client's position. A state
        that was sent from PostgreSQL is sent again with its own stream entry, so that the
        client's Last-Event-ID is that entry's id."""
        if after_position and event.order <= self._order:
            return False
        known = self.states.get(event.task_id)
        if known is not None and not _supersedes(event, known):
            return False
        if event.order > self._order:
            self.position, self._order = event.id, event.order
        self.states[event.task_id] = event
        self._open += (not event.terminal) - (known is not None and not known.terminal)
        return True

    def newer(self, event: Event) -> bool:
        """Whether `event` is a newer state of its task than the one sent."""
        known = self.states.get(event.task_id)
        return known is None or event.updated_at > known.updated_at

    def overdue(self, event: Event) -> bool:
        """Whether `event`, a state in PostgreSQL that is newer than the client's and that the
        stream does not show, was already missing at the previous re-check: the stream had a
        whole heartbeat period to show it, so its publish was lost. Otherwise it is noted, and
        its entry is given until the next re-check (the worker publishes after committing)."""
        known = self.states.get(event.task_id)
        missing = self._missing = self._missing or {}
        noted = missing.pop(event.task_id, None)
        if noted is not None and (known is None or known.updated_at < noted):
            return True
        missing[event.task_id] = event.updated_at
        return False

    @property
    def done(self) -> bool:
        return bool(self.states) and not self._open


def _supersedes(event: Event, known: Event) -> bool:
    if event.updated_at != known.updated_at:
        return event.updated_at > known.updated_at
    return known.from_database and not event.from_database


@dataclass(frozen=True, slots=True)
class _Opening:
    """Where a client starts: its position, each task's state it already has (recorded, never
    sent) and what to send first."""

    position: str
    seen: list[Event]
    send: list[Event]

    def start(self) -> tuple[_Sent, list[Event]]:
        """The client's record, and the events of `send` it does not have yet."""
        sent = _Sent(self.position)
        for event in self.seen:
            sent.accept(event, False)
        return sent, [event for event in self.send if sent.accept(event, False)]


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

    # -- rows from PostgreSQL, filtered by owner -----------------------------------------
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
            Event.build(topic, position, document.model_dump_json().encode(), from_database=True)
            for document in documents
        ]

    # -- the stream -------------------------------------------------------------------
    async def ended(self, request: StreamRequest, rows: Sequence[RowMapping]) -> bool:
        """Whether a reconnecting client already has the final state of every task: there is
        nothing to send. EventSource reconnects after every end, with the last id it got."""
        last_event_id = request.last_event_id
        if last_event_id is None or not rows:
            return False
        if any(row["status"] not in TERMINAL_STATUSES for row in rows):
            return False
        try:
            latest = await self._latest(request.topic)
            if latest is None or stream_id_key(last_event_id) > latest.order:
                return False  # no stream, or an id it never gave: the client's state is unknown
            sent, first = (await self._resume(request, last_event_id, rows, latest)).start()
        except Exception:  # Redis unavailable, say: the stream itself will tell
            log.warning("end check of %s failed", request.topic, exc_info=True)
            return False
        return sent.done and not first

    async def stream(
        self,
        request: StreamRequest,
        rows: Sequence[RowMapping],
        render: Callable[[Item], T],
        slot: Slot,
    ) -> AsyncGenerator[T]:
        """Subscribed first, then the state, then live events. `rows` are the ones the
        ownership check loaded, just before; `slot` is already taken, and given back here when
        the stream ends (its owner gives it back too, if the stream never ran)."""
        listener = None
        try:
            listener = await self._hub.join(request.topic)
            sent, first = (await self._opening(request, rows)).start()
            del rows  # not kept for the life of the stream
            event: Event | None = None
            for event in first:
                yield render(event)
            del first
            event = None  # the opening's events are not kept for the life of the stream
            deadline = time.monotonic() + self._timing.max_connection_seconds
            while not sent.done:  # it can only change when a state is sent
                while True:  # live events, until a heartbeat tick
                    incoming = listener.pop()
                    if incoming is None:
                        if listener.take_tick():
                            break
                        await listener.wakeup()
                    elif sent.accept(incoming):
                        yield render(incoming)
                        if incoming.terminal and sent.done:
                            return
                if time.monotonic() >= deadline:
                    yield render(Marker.RECONNECT)
                    return
                # A heartbeat tick. A task stream that got events since the last tick knows
                # its pub/sub works; a session stream re-checks every time (one busy task must
                # not hide another's lost event).
                if listener.quiet or not request.single_task:
                    if listener.quiet:
                        yield render(Marker.HEARTBEAT)
                    for event in await self._recheck(request, sent):
                        yield render(event)
                    event = None
        finally:
            slot.give_back()  # first: nothing below may keep it
            if listener is not None:
                self._hub.leave(request.topic, listener)

    async def _recheck(self, request: StreamRequest, sent: _Sent) -> list[Event]:
        """The heartbeat's re-check, for what pub/sub lost; what to send, recorded in `sent`.
        A state in PostgreSQL newer than the client's is looked for in the stream first: its
        entry, with its own id, is what to send (its notice was lost, or is still on its way).
        The worker publishes after committing, so a state the stream does not show yet may be
        in flight: sent from PostgreSQL, under the client's position, only when the previous
        re-check found it missing too, or when the stream cannot be read. (Sent at once, it
        took an id the client already had, and its entry, arriving next, was not newer.)"""
        topic = request.topic
        try:
            states = await self._snapshot(await request.load_rows(), topic, sent.position)
        except NotFound:
            return []
        except Exception:  # PostgreSQL unavailable: keep the stream, try at the next tick
            log.warning("progress re-check of %s failed", topic, exc_info=True)
            return []
        newer = [state for state in states if sent.newer(state)]
        del states
        if not newer:
            return []
        send: list[Event] = []
        try:
            entries = await self._redis.xrange(stream_key(topic), f"({sent.position}", "+")
        except RedisError:
            log.warning("progress re-check of %s: stream unreadable", topic, exc_info=True)
            entries = None
        for entry in entries or ():
            event = _event(topic, entry)
            if sent.accept(event):
                send.append(event)
        for state in newer:
            if not sent.newer(state) or not (entries is None or sent.overdue(state)):
                continue
            event = Event.build(topic, sent.position, state.doc, from_database=True)
            if sent.accept(event, False):
                send.append(event)
        return send

    async def _opening(self, request: StreamRequest, rows: Sequence[RowMapping]) -> _Opening:
        """After subscribing: where the client is in the stream, what it has, and what to send
        first — what it missed after Last-Event-ID, or the current state (the newer of the
        stream's last entry and PostgreSQL; PostgreSQL when the stream is gone)."""
        last_event_id = request.last_event_id
        try:
            latest = await self._latest(request.topic)
            position = latest.id if latest else START_ID
            if last_event_id and latest and stream_id_key(last_event_id) <= latest.order:
                return await self._resume(request, last_event_id, rows, latest)
            if request.single_task and latest is not None:  # an id from the future: ignored
                if latest.updated_at >= rows[0]["updated_at"]:
                    return _Opening(START_ID, [], [latest])
                return _Opening(START_ID, [], await self._snapshot(rows, request.topic, position))
        except RedisError:
            position = last_event_id or START_ID
        # No stream (a session, or expired): PostgreSQL, read after subscribing.
        rows = await request.load_rows()
        return _Opening(START_ID, [], await self._snapshot(rows, request.topic, position))

    async def _latest(self, topic: str) -> Event | None:
        latest = await self._redis.xrevrange(stream_key(topic), "+", "-", count=1)
        return _event(topic, latest[0]) if latest else None

    async def _resume(
        self, request: StreamRequest, last_event_id: str, rows: Sequence[RowMapping], latest: Event
    ) -> _Opening:
        """A client back within the stream: each task's newest entry up to its Last-Event-ID is
        what it has, the entries after are what it missed. A task the stream does not show (its
        publishing failed, or its entries were trimmed) comes from PostgreSQL, unless it had
        ended before the part of the stream the client has passed."""
        key, topic = stream_key(request.topic), request.topic
        count = 1 if request.single_task else None
        before = await self._redis.xrevrange(key, last_event_id, "-", count=count)
        seen: dict[str, Event] = {}
        for entry in before:  # newest first
            event = _event(topic, entry)
            seen.setdefault(event.task_id, event)
        entries = await self._redis.xrange(key, f"({last_event_id}", "+")
        missed = [_event(topic, entry) for entry in entries]
        shown = seen.keys() | {event.task_id for event in missed}
        unshown = [
            row
            for row in rows
            if str(row["task_id"]) not in shown
            and not (before and row["status"] in TERMINAL_STATUSES)
        ]
        if unshown:
            missed += await self._snapshot(unshown, topic, latest.id)
        return _Opening(last_event_id, list(seen.values()), missed)


def _event(topic: str, entry: tuple[bytes, dict[bytes, bytes]]) -> Event:
    return Event.build(topic, _text(entry[0]), entry[1][DOC_FIELD])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

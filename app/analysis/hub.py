"""The progress hub: ONE Redis pub/sub connection per API process, whatever the number of
clients (architecture §5; after SAQ's multiplexer).

Clients `join(topic)`; the hub subscribes to a topic's channel when its first listener comes
and unsubscribes when the last goes. For each notice (a stream entry id) it reads the status
document once (XRANGE on a second connection of its own), builds the SSE frame once, and hands
the same `Event` to every listener's bounded queue. A full queue drops its oldest event, so a
slow client may miss intermediate states but always has the latest, and never slows the others.
Both connections are `RespConnection`s (app/analysis/resp.py): this path runs for every
notice, and redis-py's layers cost several times its work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from redis.exceptions import RedisError

from app.analysis.models import TERMINAL_STATUSES
from app.analysis.progress import DOC_FIELD, channel, stream_key, topic_of_channel
from app.analysis.resp import Reply, RespConnection

log = logging.getLogger(__name__)

RECONNECT_DELAY_SECONDS = 0.5
SUBSCRIBE_TIMEOUT_SECONDS = 2.0
STOP_WAIT_SECONDS = 2.0


def stream_id_key(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


@dataclass(frozen=True, slots=True)
class Event:
    """One status document, parsed and encoded once for every subscriber: nothing about it is
    computed per client."""

    topic: str
    id: str
    order: tuple[int, int]  # the stream id, comparable
    doc: bytes
    status: str
    task_id: str
    updated_at: datetime
    terminal: bool
    frame: bytes = field(repr=False)
    # Read from PostgreSQL, not from the stream: `id` is then not this document's own entry
    # but the stream's position when it was read (its entry may be on its way, or lost).
    from_database: bool = False

    @classmethod
    def build(cls, topic: str, entry_id: str, doc: bytes, from_database: bool = False) -> Event:
        parsed = json.loads(doc)
        frame = b"event: status\r\nid: %s\r\ndata: %s\r\n\r\n" % (entry_id.encode(), doc)
        return cls(
            topic=topic,
            id=entry_id,
            order=stream_id_key(entry_id),
            doc=doc,
            status=parsed["status"],
            task_id=parsed["task_id"],
            updated_at=datetime.fromisoformat(parsed["updated_at"]),
            terminal=parsed["status"] in TERMINAL_STATUSES,
            frame=frame,
            from_database=from_database,
        )


class Listener:
    """A client's bounded queue; the newest event always survives.

    The stream takes events with `pop()` and, when there are none, awaits `wakeup()`: a bare
    future (no coroutine per wait), resolved by the next `put()` or tick. There is no timer
    per client: the hub ticks every listener once per heartbeat period, and `take_tick()` then
    says a tick came, with `quiet` telling whether no event came since the previous one. Kept
    small (a short list, a future only while waiting): there is one per open stream.
    """

    __slots__ = ("_active", "_events", "_size", "_tick", "_waiter", "dropped", "quiet")

    def __init__(self, size: int) -> None:
        self._events: list[Event] = []
        self._size = size
        self._waiter: asyncio.Future[None] | None = None
        self._tick = False
        self._active = False
        self.quiet = False
        self.dropped = 0

    def put(self, event: Event) -> None:
        if len(self._events) >= self._size:
            self._drop_one()
        self._events.append(event)
        self._active = True
        self._wake()

    def tick(self) -> None:
        self._tick = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _drop_one(self) -> None:
        """Drop the oldest event that a newer one of the same task supersedes (a session
        stream must not lose one task's last state behind another task's progress); failing
        that, the oldest."""
        self.dropped += 1
        last = {event.task_id: index for index, event in enumerate(self._events)}
        for index, event in enumerate(self._events):
            if index < last[event.task_id]:
                del self._events[index]
                return
        del self._events[0]

    def pop(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def take_tick(self) -> bool:
        if not self._tick:
            return False
        self._tick = False
        self.quiet, self._active = not self._active, False
        return True

    def wakeup(self) -> asyncio.Future[None]:
        waiter = self._waiter
        if waiter is None or waiter.done():  # done: cancelled with a stream that awaited it
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def next(self) -> Event | None:
        """The next event, or None for a tick."""
        while True:
            if (event := self.pop()) is not None:
                return event
            if self.take_tick():
                return None
            await self.wakeup()


class Hub:
    def __init__(self, redis_url: str, queue_size: int, tick_seconds: float) -> None:
        self._url = redis_url
        self._name = f"vocalborn-hub-{os.getpid()}"
        self._queue_size = queue_size
        self._tick_seconds = tick_seconds
        self._listeners: dict[str, set[Listener]] = {}
        self._subscriber: RespConnection | None = None  # the ONE pub/sub connection
        self._reader: RespConnection | None = None  # reads the announced stream entries
        self._subscribed: set[str] = set()  # topics whose SUBSCRIBE went out on this connection
        self._confirming: dict[str, deque[asyncio.Future[None]]] = {}  # SUBSCRIBEs unanswered
        self._unanswered_pings = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stop: asyncio.Future[None] | None = None  # resolved by stop()
        self.connected = False

    async def start(self) -> None:
        """Connect (and keep reconnecting) and tick, in two loops, until `stop()`."""
        stop = self._stop = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._keep_connected(stop), name="progress-hub"),
            asyncio.create_task(self._tick_forever(stop), name="progress-hub-ticks"),
        ]

    async def stop(self) -> None:
        """The stop event, which the loops notice between commands, and the connections
        closed, which ends a handshake in flight; then a bounded wait. Cancelling is the last
        resort, never awaited: a Redis call may swallow its cancellation (redis-py #2028,
        #2551), and the API's shutdown must not hang on it."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        self._disconnected()
        running = [task for task in self._tasks if not task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=STOP_WAIT_SECONDS)
            for task in late:
                log.warning("progress hub: %s did not stop; cancelled", task.get_name())
                task.cancel()
        self._disconnected()

    @property
    def listener_count(self) -> int:
        return sum(len(listeners) for listeners in self._listeners.values())

    async def join(self, topic: str) -> Listener:
        """A new listener on `topic`, returned once Redis has confirmed the subscription (or at
        once while Redis is unavailable: the stream then relies on its heartbeat re-checks, and
        the hub subscribes when Redis is back)."""
        listener = Listener(self._queue_size)
        self._listeners.setdefault(topic, set()).add(listener)
        try:
            await self._subscribed_to(topic)
        except BaseException:
            self.leave(topic, listener)
            raise
        return listener

    def leave(self, topic: str, listener: Listener) -> None:
        """Never waits (it runs while a stream is being cancelled)."""
        listeners = self._listeners.get(topic)
        if listeners is None:
            return
        listeners.discard(listener)
        if listeners:
            return
        del self._listeners[topic]
        if topic in self._subscribed:
            self._subscribed.discard(topic)
            self._send_to_subscriber(("UNSUBSCRIBE", channel(topic)))

    async def _subscribed_to(self, topic: str) -> None:
        if topic not in self._subscribed:
            if not self._send_to_subscriber(("SUBSCRIBE", channel(topic))):
                log.warning("progress hub: subscribe to %s deferred, Redis unavailable", topic)
                return
            self._subscribed.add(topic)
            self._expect_confirmation(topic)
        pending = self._confirming.get(topic)
        if pending:
            try:
                await asyncio.wait_for(asyncio.shield(pending[-1]), SUBSCRIBE_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("progress hub: no confirmation of the subscription to %s", topic)

    def _expect_confirmation(self, topic: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(topic, deque()).append(future)

    def _confirmed(self, topic: str) -> None:
        pending = self._confirming.get(topic)
        if not pending:
            return
        future = pending.popleft()
        if not pending:
            del self._confirming[topic]
        if not future.done():
            future.set_result(None)

    def _send_to_subscriber(self, command: tuple[str, ...]) -> bool:
        subscriber = self._subscriber
        if subscriber is None or not subscriber.is_open:
            return False
        subscriber.send([(command, None)])  # answered by a push
        return True

    # -- the connection's life --------------------------------------------------------------
    async def _keep_connected(self, stop: asyncio.Future[None]) -> None:
        """Until `stop`: never by a cancellation (see `stop()`)."""
        try:
            while not stop.done():
                try:
                    subscriber, reader = await self._connect(stop)
                except (OSError, RedisError, TimeoutError) as exc:
                    if not stop.done():
                        log.warning("progress hub: cannot reach Redis (%s); retrying", exc)
                        await _rest(stop, RECONNECT_DELAY_SECONDS)
                    continue
                except Exception:  # never stop trying: the streams depend on it
                    log.exception("progress hub: connecting to Redis failed; retrying")
                    await _rest(stop, RECONNECT_DELAY_SECONDS)
                    continue
                lost = [subscriber.closed, reader.closed]
                await asyncio.wait([*lost, stop], return_when="FIRST_COMPLETED")
                if stop.done():
                    return
                log.warning("progress hub: connection to Redis lost; reconnecting")
                self._disconnected()
                await _rest(stop, RECONNECT_DELAY_SECONDS)  # back-off before reconnecting
        finally:
            self._disconnected()  # a connection made while stopping

    async def _connect(self, stop: asyncio.Future[None]) -> tuple[RespConnection, RespConnection]:
        """Both connections, and a subscription to every topic that has listeners."""
        subscriber = await RespConnection.open(self._url, self._name, self._on_push, stop)
        try:
            reader = await RespConnection.open(self._url, f"{self._name}-reader", None, stop)
        except BaseException:
            subscriber.close()
            raise
        self._subscriber, self._reader = subscriber, reader
        self._unanswered_pings = 0
        if topics := list(self._listeners):
            for topic in topics:
                self._expect_confirmation(topic)
            self._subscribed = set(topics)
            subscriber.send([(("SUBSCRIBE", *(channel(topic) for topic in topics)), None)])
        self.connected = True
        return subscriber, reader

    def _disconnected(self) -> None:
        self.connected = False
        self._subscribed.clear()
        for pending in self._confirming.values():
            for future in pending:
                if not future.done():
                    future.set_result(None)  # a joining stream goes on without pub/sub
        self._confirming.clear()
        for connection in (self._subscriber, self._reader):
            if connection is not None:
                connection.close()
        self._subscriber = self._reader = None

    async def _tick_forever(self, stop: asyncio.Future[None]) -> None:
        while not await _rest(stop, self._tick_seconds):  # the heartbeat period
            try:
                self._check_alive()
            except Exception:  # the ticks below must never stop: every stream relies on them
                log.exception("progress hub: checking the Redis connections failed")
            self.tick_listeners()

    def tick_listeners(self) -> None:
        """A heartbeat tick to every listener (the tick loop's, once per period)."""
        for listeners in list(self._listeners.values()):
            for listener in listeners:
                listener.tick()

    def _check_alive(self) -> None:
        """PING both connections every heartbeat; one that has not answered the previous PING
        is closed (a half-open TCP connection otherwise passes for a quiet one), and so is one
        already lost whose loss the connection keeper has not handled yet."""
        if not self.connected:
            return
        subscriber, reader = self._subscriber, self._reader
        if subscriber is None or reader is None or not (subscriber.is_open and reader.is_open):
            self._disconnected()
            return
        if self._unanswered_pings:
            log.warning("progress hub: Redis did not answer PING; reconnecting")
            self._disconnected()
            return
        self._unanswered_pings = 2
        subscriber.send([(("PING",), None)])  # answered by a push
        reader.send([(("PING",), self._pong)])

    def _pong(self, reply: Reply) -> None:
        if not isinstance(reply, Exception):  # a lost connection answers with its error
            self._unanswered_pings = max(0, self._unanswered_pings - 1)

    # -- notices -----------------------------------------------------------------------------
    def _on_push(self, pushes: list[Reply]) -> None:
        """Every notice received in one read: one XRANGE each, written in one go."""
        wanted: list[tuple[str, str]] = []
        for push in pushes:
            if not isinstance(push, list) or not push:
                if push == b"PONG":  # a PING while subscribed to nothing
                    self._pong(push)
                elif isinstance(push, Exception):  # e.g. an ACL refusing a SUBSCRIBE
                    log.error("progress hub: Redis refused a command: %s", push)
                continue
            kind = push[0]
            if kind == b"message":
                topic = topic_of_channel(push[1].decode())
                if topic in self._listeners:
                    wanted.append((topic, push[2].decode()))
            elif kind == b"subscribe":
                self._confirmed(topic_of_channel(push[1].decode()))
            elif kind == b"pong":
                self._pong(push)
        reader = self._reader
        if not wanted or reader is None or not reader.is_open:
            return  # a lost notice: the streams' heartbeat re-check covers it
        reader.send(
            [
                (("XRANGE", stream_key(topic), entry_id, entry_id), partial(self._deliver, topic))
                for topic, entry_id in wanted
            ]
        )

    def _deliver(self, topic: str, entries: Reply) -> None:
        listeners = self._listeners.get(topic)
        if not listeners or not isinstance(entries, list) or not entries:
            return
        entry_id, fields = entries[0]
        document = dict(zip(fields[::2], fields[1::2], strict=True)).get(DOC_FIELD)
        if document is None:
            return
        event = Event.build(topic, entry_id.decode(), document)
        for listener in listeners:
            listener.put(event)


async def _rest(stop: asyncio.Future[None], seconds: float) -> bool:
    """`seconds`, or less if the hub stops meanwhile: whether it is stopping."""
    await asyncio.wait([stop], timeout=seconds)
    return stop.done()

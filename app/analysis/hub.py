"""The progress hub: ONE Redis pub/sub connection per API process, whatever the number of
clients (architecture §5; after SAQ's multiplexer).

Clients `join(topic)`; the hub subscribes to a topic's channel when its first listener comes
and unsubscribes when the last goes. Each notice carries its stream entry's id and the status
document (app/analysis/progress.py), so the hub builds the SSE frame once from the message
itself and hands the same `Event` to every listener's bounded queue; the stream is read only
for replay and catch-up (app/analysis/live.py). A full queue drops its oldest event, so a slow
client may miss intermediate states but always has the latest, and never slows the others.

The connection is redis-py's PubSub (hiredis parses), made by app/redis_client.py: Sentinel,
TLS, ACL users and RESP3 come from there. The hub keeps it alive itself: a PING every
heartbeat, a reconnect (and resubscription) when it is lost or a PING goes unanswered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from app.analysis.models import TERMINAL_STATUSES
from app.analysis.progress import channel, topic_of_channel
from app.redis_client import RedisTarget, connect

log = logging.getLogger(__name__)

RECONNECT_DELAY_SECONDS = 0.5
SUBSCRIBE_TIMEOUT_SECONDS = 2.0
STOP_WAIT_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 5.0


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """A Redis stream entry id (`"<ms>-<seq>"`) as a sortable pair (ms, seq)."""
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
    def __init__(self, target: RedisTarget | str, queue_size: int, tick_seconds: float) -> None:
        self._name = f"vocalborn-hub-{os.getpid()}"
        # Its own client, whose pool holds the one pub/sub connection. No reply timeout (the
        # reader waits for notices as long as it takes: the PINGs below find a dead peer) and
        # no idle health check (its PING would read the connection under the reader).
        self._redis = connect(
            target, client_name=self._name, socket_timeout=None, health_check_interval=0
        )
        self._queue_size = queue_size
        self._tick_seconds = tick_seconds
        self._listeners: dict[str, set[Listener]] = {}
        self._pubsub: PubSub | None = None  # the ONE pub/sub connection, while connected
        self._subscribed: set[str] = set()  # topics whose SUBSCRIBE went out on this connection
        self._confirming: dict[str, deque[asyncio.Future[None]]] = {}  # SUBSCRIBEs unanswered
        self._unanswered_pings = 0
        self._sending: set[asyncio.Future[Any]] = set()  # commands written in the background
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
        """The stop event, which the loops notice between commands, and the connection
        closed, which ends a handshake or a read in flight; then a bounded wait. Cancelling is
        the last resort, never awaited: a Redis call may swallow its cancellation (redis-py
        #2028, #2551), and the API's shutdown must not hang on it."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)
        self._disconnected()
        await self._close_connections()
        running = [task for task in self._tasks if not task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=STOP_WAIT_SECONDS)
            for task in late:
                log.warning("progress hub: %s did not stop; cancelled", task.get_name())
                task.cancel()
        self._disconnected()
        await self._close_connections()

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
            self._send(lambda pubsub: pubsub.unsubscribe(channel(topic)))

    async def _subscribed_to(self, topic: str) -> None:
        if topic not in self._subscribed:
            if not self._send(lambda pubsub: pubsub.subscribe(channel(topic))):
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

    def _send(self, command: Callable[[PubSub], Awaitable[Any]]) -> bool:
        """Write a command on the pub/sub connection in the background (its answer comes to
        the reader); False, and nothing sent, when that connection is not up. Checked here,
        in the same step as the write: redis-py would otherwise reconnect a lost connection
        to send it, behind the connection keeper's back."""
        pubsub = self._pubsub
        connection = pubsub.connection if pubsub is not None else None
        if pubsub is None or connection is None or not connection.is_connected:
            return False
        sending = asyncio.ensure_future(command(pubsub))
        self._sending.add(sending)
        sending.add_done_callback(self._sent)
        return True

    def _sent(self, sending: asyncio.Future[Any]) -> None:
        self._sending.discard(sending)
        if not sending.cancelled() and (error := sending.exception()) is not None:
            log.info("progress hub: a command was not sent: %r", error)  # the reader reconnects

    # -- the connection's life --------------------------------------------------------------
    async def _keep_connected(self, stop: asyncio.Future[None]) -> None:
        """Until `stop`: never by a cancellation (see `stop()`)."""
        try:
            while not stop.done():
                pubsub = self._redis.pubsub()
                try:
                    await self._connect(pubsub)
                except (OSError, RedisError, TimeoutError) as exc:
                    if not stop.done():
                        log.warning("progress hub: cannot reach Redis (%s); retrying", exc)
                except Exception:  # never stop trying: the streams depend on it
                    log.exception("progress hub: connecting to Redis failed; retrying")
                else:
                    try:
                        await self._read(pubsub, stop)
                    except Exception as exc:  # any failure: reconnect
                        if not stop.done():
                            log.warning(
                                "progress hub: connection to Redis lost (%r); reconnecting", exc
                            )
                self._disconnected()
                await self._close_connections()
                await self._release(pubsub)
                if not stop.done():
                    await _rest(stop, RECONNECT_DELAY_SECONDS)  # back-off before reconnecting
        finally:
            self._disconnected()  # a connection made while stopping

    @staticmethod
    async def _release(pubsub: PubSub) -> None:
        """Give a closed pub/sub connection back to the pool (it is never reused as it is:
        its connection is closed, so the pool reconnects it)."""
        try:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        except Exception:
            log.debug("progress hub: releasing the connection failed", exc_info=True)

    async def _connect(self, pubsub: PubSub) -> None:
        """Connect `pubsub` (named, authenticated: redis-py's handshake, bounded here) and
        subscribe it to every topic that has listeners. `stop()` closes a handshake in
        flight."""
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            await pubsub.connect()  # type: ignore[no-untyped-call]
        self._pubsub = pubsub
        self._unanswered_pings = 0
        if topics := list(self._listeners):
            for topic in topics:
                self._expect_confirmation(topic)
            self._subscribed = set(topics)
            self._send(lambda pubsub: pubsub.subscribe(*(channel(topic) for topic in topics)))
        self.connected = True

    async def _read(self, pubsub: PubSub, stop: asyncio.Future[None]) -> None:
        """Every message, until the connection fails, is judged dead, or the hub stops."""
        while not stop.done() and self._pubsub is pubsub:
            message = await pubsub.get_message(timeout=None)
            if message is not None:
                self._on_message(message)

    def _disconnected(self) -> None:
        """Forget the connection (the keeper closes it): the reader stops at its next
        message, commands are no longer sent on it, joining streams go on without it."""
        self.connected = False
        self._pubsub = None
        self._subscribed.clear()
        for pending in self._confirming.values():
            for future in pending:
                if not future.done():
                    future.set_result(None)  # a joining stream goes on without pub/sub
        self._confirming.clear()

    async def _close_connections(self) -> None:
        """Close the hub's connections at once, in use or not: a read or a handshake in
        flight fails with a ConnectionError (never waits on Redis: the sockets are closed
        locally)."""
        try:
            await self._redis.connection_pool.disconnect()
        except Exception:  # closing what is already broken
            log.debug("progress hub: closing the connection failed", exc_info=True)

    async def _tick_forever(self, stop: asyncio.Future[None]) -> None:
        while not await _rest(stop, self._tick_seconds):  # the heartbeat period
            try:
                await self._check_alive()
            except Exception:  # the ticks below must never stop: every stream relies on them
                log.exception("progress hub: checking the Redis connection failed")
            self.tick_listeners()

    def tick_listeners(self) -> None:
        """A heartbeat tick to every listener (the tick loop's, once per period)."""
        for listeners in list(self._listeners.values()):
            for listener in listeners:
                listener.tick()

    async def _check_alive(self) -> None:
        """PING the connection every heartbeat; one that has not answered the previous PING
        is closed (a half-open TCP connection otherwise passes for a quiet one), and so is one
        already lost whose loss the connection keeper has not handled yet."""
        if not self.connected:
            return
        if self._unanswered_pings:
            log.warning("progress hub: Redis did not answer PING; reconnecting")
        elif self._send(lambda pubsub: pubsub.ping()):  # answered by a pong message
            self._unanswered_pings = 1
            return
        self._disconnected()
        await self._close_connections()  # the reader fails and the keeper reconnects

    # -- notices -----------------------------------------------------------------------------
    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            self._deliver(topic_of_channel(message["channel"].decode()), message["data"])
        elif kind == "pong":
            self._unanswered_pings = 0
        elif kind == "subscribe":
            self._confirmed(topic_of_channel(message["channel"].decode()))

    def _deliver(self, topic: str, notice: bytes) -> None:
        """A notice is `<entry id> <document>` (progress.NOTICE); one without its document
        (an older publisher's) is left to the streams' heartbeat re-check."""
        listeners = self._listeners.get(topic)
        if not listeners:
            return
        entry_id, _, document = notice.partition(b" ")
        if not document:
            return
        event = Event.build(topic, entry_id.decode(), document)
        for listener in listeners:
            listener.put(event)


async def _rest(stop: asyncio.Future[None], seconds: float) -> bool:
    """`seconds`, or less if the hub stops meanwhile: whether it is stopping."""
    await asyncio.wait([stop], timeout=seconds)
    return stop.done()

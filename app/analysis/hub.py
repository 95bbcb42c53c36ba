"""The progress hub: ONE Redis pub/sub connection per API process, whatever the number of
clients (DESIGN §5; after SAQ's multiplexer).

Clients `listen(topic)`; the hub subscribes to a topic's channel when its first listener comes
and unsubscribes when the last goes. For each notice (a stream entry id) it reads the status
document once, builds the SSE frame once, and hands the same `Event` to every listener's
bounded queue. A full queue drops its oldest event, so a slow client may miss intermediate
states but always has the latest, and never slows the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from app.analysis.models import TERMINAL_STATUSES
from app.analysis.progress import DOC_FIELD, channel, stream_key, topic_of_channel

log = logging.getLogger(__name__)

RECONNECT_DELAY_SECONDS = 0.5
DISPATCH_BATCH = 256


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

    @classmethod
    def build(cls, topic: str, entry_id: str, doc: bytes) -> Event:
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
        )


class Listener:
    """A client's bounded queue; the newest event always survives.

    `next()` waits without a timer of its own: the hub ticks every listener once per heartbeat
    period (one timer per process, not one per client and event), and `next()` answers None
    for a tick; `quiet` then says whether no event came since the previous tick. Kept small
    (a short list and a future made only while waiting): there is one per open stream.
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
        if waiter is not None and not waiter.done():
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

    async def next(self) -> Event | None:
        while True:
            if self._events:
                return self._events.pop(0)
            if self._tick:
                self._tick = False
                self.quiet, self._active = not self._active, False
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class Hub:
    def __init__(self, redis_url: str, reader: Redis, queue_size: int, tick_seconds: float) -> None:
        self._client = Redis.from_url(
            redis_url, client_name=f"vocalborn-hub-{os.getpid()}", health_check_interval=15
        )
        self._pubsub: PubSub = self._client.pubsub(ignore_subscribe_messages=True)
        self._reader = reader
        self._queue_size = queue_size
        self._tick_seconds = tick_seconds
        self._listeners: dict[str, set[Listener]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed: set[str] = set()  # topics whose SUBSCRIBE has been sent
        self._background: set[asyncio.Task[None]] = set()
        self._has_topics = asyncio.Event()
        self._lock = asyncio.Lock()  # one (un)subscribe at a time on the shared connection
        self.connected = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="progress-hub"),
            asyncio.create_task(self._tick_forever(), name="progress-hub-ticks"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._client.aclose()

    @property
    def listener_count(self) -> int:
        return sum(len(listeners) for listeners in self._listeners.values())

    async def join(self, topic: str) -> Listener:
        """A new listener on `topic`, returned once the channel's SUBSCRIBE has been sent."""
        listener = Listener(self._queue_size)
        self._listeners.setdefault(topic, set()).add(listener)
        self._has_topics.set()
        try:
            await self._subscribe(topic)
        except BaseException:
            self.leave(topic, listener)
            raise
        return listener

    def leave(self, topic: str, listener: Listener) -> None:
        """Never waits (it runs while a stream is being cancelled): the last listener's
        UNSUBSCRIBE is sent by a task of the hub's own."""
        listeners = self._listeners.get(topic)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[topic]
            task = asyncio.create_task(self._unsubscribe(topic))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _unsubscribe(self, topic: str) -> None:
        with contextlib.suppress(RedisError, OSError):  # else dropped at the next resubscribe
            async with self._lock:
                if topic not in self._listeners and topic in self._subscribed:
                    await self._pubsub.unsubscribe(channel(topic))
                    self._subscribed.discard(topic)

    async def _subscribe(self, topic: str) -> None:
        if topic in self._subscribed:
            return
        try:
            async with self._lock:
                if topic in self._listeners and topic not in self._subscribed:
                    await self._pubsub.subscribe(channel(topic))
                    self._subscribed.add(topic)
        except (RedisError, OSError):  # resubscribed by _run once Redis is back
            log.warning("progress hub: subscribe to %s deferred, Redis unavailable", topic)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick_seconds)  # the heartbeat period
            for listeners in list(self._listeners.values()):
                for listener in listeners:
                    listener.tick()

    async def _run(self) -> None:
        while True:
            try:
                if not self.connected or not self._pubsub.subscribed:
                    await self._resubscribe()
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    await self._dispatch(await self._with_buffered(message))
            except (RedisError, OSError):
                if self.connected:
                    log.warning("progress hub: pub/sub connection lost; reconnecting")
                self.connected = False
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)  # back-off before reconnecting
            except Exception:  # never let one bad message stop the hub
                log.exception("progress hub: dispatch failed")

    async def _resubscribe(self) -> None:
        """(Re)subscribe every topic with listeners, drop the others (an UNSUBSCRIBE lost in an
        outage); idle until there is a listener."""
        while not self._listeners:
            self._has_topics.clear()
            await self._has_topics.wait()
        async with self._lock:
            wanted = set(self._listeners)
            await self._pubsub.subscribe(*(channel(topic) for topic in wanted))
            known = {topic_of_channel(_text(name)) for name in self._pubsub.channels}
            if stale := known - wanted:
                await self._pubsub.unsubscribe(*(channel(topic) for topic in stale))
            self._subscribed = wanted
        self.connected = True

    async def _with_buffered(self, first: dict[str, Any]) -> list[dict[str, Any]]:
        """The first notice and those already received behind it: one batch, one round trip."""
        batch = [first]
        while len(batch) < DISPATCH_BATCH:
            more = await self._pubsub.get_message(timeout=0.0)
            if more is None:
                break
            batch.append(more)
        return batch

    async def _dispatch(self, messages: list[dict[str, Any]]) -> None:
        wanted = []
        for message in messages:
            if message.get("type") != "message":
                continue
            topic = topic_of_channel(_text(message["channel"]))
            if topic in self._listeners:
                wanted.append((topic, _text(message["data"])))
        if not wanted:
            return
        async with self._reader.pipeline(transaction=False) as pipe:
            for topic, entry_id in wanted:
                pipe.xrange(stream_key(topic), entry_id, entry_id)
            results = await pipe.execute()
        for (topic, entry_id), entries in zip(wanted, results, strict=True):
            listeners = self._listeners.get(topic)
            if not entries or not listeners:
                continue
            event = Event.build(topic, entry_id, entries[0][1][DOC_FIELD])
            for listener in listeners:
                listener.put(event)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

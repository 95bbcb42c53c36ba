"""Publishing status documents for live progress (architecture §5).

After each change of a task's row, the full status document (the status endpoint's JSON) is
appended to a Redis Stream per topic (`XADD … MAXLEN ~200`) and a notice is published on the
topic's pub/sub channel: the new entry's id, a space, and the document (so the hub delivers it
without reading the stream, which serves replay and catch-up). Topics: the task, and its
practice session. Streams expire after the task ends. Publishing is best effort: pub/sub is
lossy anyway, and readers re-check PostgreSQL at every heartbeat.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from app.analysis.eta import Estimator
from app.analysis.models import TERMINAL_STATUSES
from app.analysis.schemas import TaskStatusOut
from app.analysis.status import Row, describe
from app.redis_batch import ScriptBatch
from app.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "vocalborn:events:"
DOC_FIELD = b"doc"


def task_topic(task_id: uuid.UUID | str) -> str:
    return f"task:{task_id}"


def session_topic(session_id: uuid.UUID | str) -> str:
    return f"session:{session_id}"


def stream_key(topic: str) -> str:
    return f"{PREFIX}{topic}"


def channel(topic: str) -> str:
    return f"{PREFIX}{topic}"


def topic_of_channel(name: str) -> str:
    return name.removeprefix(PREFIX)


@dataclass(frozen=True, slots=True)
class PublishSettings:
    maxlen: int = 200
    active_ttl_seconds: int = 24 * 3600
    ended_ttl_seconds: int = 3600


def publish_settings(settings: Settings) -> PublishSettings:
    return PublishSettings(
        maxlen=settings.event_stream_maxlen,
        ended_ttl_seconds=settings.event_stream_ttl_seconds,
    )


class Publisher:
    def __init__(
        self, redis: Redis, estimator: Estimator, settings: PublishSettings | None = None
    ) -> None:
        self._redis = redis
        self._estimator = estimator
        self._settings = settings or PublishSettings()
        # Concurrent publishes (a worker's tasks, the API's requests) share round trips.
        self._script = ScriptBatch(redis, _PUBLISH_LUA)

    async def publish_rows(self, rows: Sequence[Row]) -> None:
        for row in rows:
            await self.publish_row(row)

    async def publish_row(self, row: Row | None) -> None:
        """Describe a row just written (None: nothing was written) and publish it. Best
        effort: a failure is logged, never raised to the writer of the row."""
        if row is None:
            return
        try:
            await self.send_row(row)
        except Exception as exc:
            log.warning("publishing the status of %s failed: %r", row["task_id"], exc)

    async def send_row(self, row: Row) -> None:
        """Describe a row just written and publish it; raises what Redis raised (for callers
        that retry, such as the worker after committing an outcome)."""
        await self._append_and_announce(await describe(row, self._redis, self._estimator))

    async def publish(self, document: TaskStatusOut) -> None:
        """Best effort: a failure is logged, never raised to the writer of the row."""
        try:
            await self._append_and_announce(document)
        except Exception:
            log.warning("publishing the status of %s failed", document.task_id, exc_info=True)

    async def _append_and_announce(self, document: TaskStatusOut) -> None:
        payload = document.model_dump_json().encode()
        ttl = (
            self._settings.ended_ttl_seconds
            if document.status in TERMINAL_STATUSES
            else self._settings.active_ttl_seconds
        )
        topics = [task_topic(document.task_id)]
        if document.practice_session_id is not None:
            topics.append(session_topic(document.practice_session_id))
        await self._script(
            [stream_key(topic) for topic in topics],
            [payload, self._settings.maxlen, ttl, *(channel(topic) for topic in topics)],
        )


# One EVAL per publish (concurrent ones share a round trip, app/redis_batch.py): append, set the
# expiry, announce the new entry: its id, a space, the document (the hub's notice,
# app/analysis/hub.py).
_PUBLISH_LUA = """
for i, key in ipairs(KEYS) do
  local id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], '*', 'doc', ARGV[1])
  redis.call('EXPIRE', key, ARGV[3])
  redis.call('PUBLISH', ARGV[3 + i], id .. ' ' .. ARGV[1])
end
return #KEYS
"""

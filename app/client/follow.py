"""Following tasks live: the session's SSE stream, resumed with Last-Event-ID when it drops,
and the status endpoint polled instead when streaming is refused (README "Live progress")."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable

import httpx
from httpx_sse import SSEError, aconnect_sse

from app.client.api import TERMINAL, Api, ApiError, Doc

log = logging.getLogger(__name__)

# The server sends a heartbeat after 15 s of silence: a stream quiet for longer has dropped.
READ_TIMEOUT_SECONDS = 40.0
RECONNECT_GIVE_UP_SECONDS = 60.0
POLL_INTERVAL_SECONDS = 1.0


class Follower:
    """Follows `task_ids` of one practice session until each is in a terminal status, calling
    `on_update` with every new status document of one of them."""

    def __init__(
        self,
        api: Api,
        session_id: str,
        task_ids: Iterable[str],
        on_update: Callable[[Doc], None],
        poll_interval: float = POLL_INTERVAL_SECONDS,
        notice: Callable[[str], None] = log.info,
    ) -> None:
        self.api = api
        self.session_id = session_id
        self.latest: dict[str, Doc | None] = dict.fromkeys(task_ids)
        self.on_update = on_update
        self.notice = notice
        self.poll_interval = poll_interval
        self.last_event_id: str | None = None
        self.reconnects = 0  # streams resumed after a drop
        self.polled = False  # whether it fell back to polling

    @property
    def done(self) -> bool:
        return all(doc is not None and doc["status"] in TERMINAL for doc in self.latest.values())

    def _update(self, doc: Doc) -> None:
        task_id = str(doc.get("task_id"))
        if task_id not in self.latest:
            return  # another task of the session
        previous = self.latest[task_id]
        if previous is not None and previous.get("updated_at", "") > doc.get("updated_at", ""):
            return  # older than what is shown (a poll racing the stream)
        self.latest[task_id] = doc
        self.on_update(doc)

    async def run(self) -> dict[str, Doc]:
        failing_since: float | None = None
        while not self.done:
            try:
                refused = await self._stream()
            except (httpx.TransportError, SSEError) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > RECONNECT_GIVE_UP_SECONDS:
                    raise ApiError(0, "unreachable", f"progress stream lost: {exc!r}") from exc
                self.reconnects += 1
                self.notice(
                    f"progress stream dropped ({type(exc).__name__}); "
                    f"resuming after event {self.last_event_id}"
                )
                await asyncio.sleep(min(5.0, 0.5 * 2 ** min(self.reconnects, 4)))  # backoff
                continue
            failing_since = None
            if refused is not None:
                self.notice(f"streaming refused ({refused}); polling the status instead")
                await self._poll()
        return {task_id: doc for task_id, doc in self.latest.items() if doc is not None}

    async def _stream(self) -> str | None:
        """One connection. None when it ended (or asked to reconnect); otherwise why it was
        refused."""
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        path = f"/api/v1/tasks/analysis/session/{self.session_id}/events"
        timeout = httpx.Timeout(30.0, read=READ_TIMEOUT_SECONDS)
        async with aconnect_sse(
            self.api.http, "GET", path, headers=headers, timeout=timeout
        ) as source:
            response = source.response
            if response.status_code == 204:  # every terminal state already sent
                await self._poll_once()
                return None
            if response.status_code >= 400:
                await response.aread()
                return str(ApiError.from_response(response))
            async for event in source.aiter_sse():
                if event.id:
                    self.last_event_id = event.id
                if event.event == "status":
                    self._update(json.loads(event.data))
                elif event.event == "reconnect":
                    return None
                if self.done:
                    return None
        if not self.done:  # ended by the server without our terminal states: resume
            self.reconnects += 1
            self.notice(f"progress stream ended early; resuming after event {self.last_event_id}")
        return None

    async def _poll_once(self) -> None:
        self.polled = True
        for doc in (await self.api.session_status(self.session_id))["tasks"]:
            self._update(doc)

    async def _poll(self) -> None:
        while True:
            await self._poll_once()
            if self.done:
                return
            await asyncio.sleep(self.poll_interval)  # the polling period itself

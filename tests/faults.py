"""Fault injection at the seams of our I/O: the engine, the Redis client, the AI connector.

A `FaultPlan` is attached where a worker takes its dependencies (its ctx: `engine`,
`pg_connection_class`, `redis_connection_class`, `ai_connector`), never by patching our
functions. It records every call an analysis attempt makes, by kind ("sql:success",
"redis:PEXPIRE", "ai"), and fails the Nth call of one kind the way the real thing fails:

- a database statement: its connection is terminated just before the statement is sent, so the
  driver raises what a dropped connection raises;
- a Redis command: the connection is closed and redis-py's ConnectionError raised, as on a
  reset; while the layer is down, new connections are refused as by a stopped server;
- the AI call: aiohttp's ClientConnectorError, as when the service refuses connections.

With `reply_lost`, a database statement runs (and commits: each outcome is one statement) and
its connection is then reset before the caller sees the answer: the case where only a re-read
can tell what happened.

`down_for` > 0 keeps the whole layer failing for that many seconds from the Nth call: every
statement or command of that layer, attempt or not, as in a real outage. The AI service's
outage is counted in requests instead (`AI_OUTAGE_REQUESTS`): the worker waits a random time
between two requests (full jitter), so an outage in seconds would spend a random number of
retries, and its outcome would be random too.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import asyncpg
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analysis import lifecycle
from app.db import for_asyncpg

# Set for the duration of an analysis job (arq's on_job_start), so that calls of the
# reconciler and the heartbeat are neither counted nor targeted.
IN_ATTEMPT: contextvars.ContextVar[bool] = contextvars.ContextVar("in_attempt", default=False)

STATEMENTS = {
    "claim": lifecycle.CLAIM,
    "adopt": lifecycle.ADOPT,
    "read": lifecycle.OWN,
    "progress": lifecycle.PROGRESS,
    "progress-many": lifecycle.PROGRESS_MANY,  # a worker's progress writes, grouped
    "renew": lifecycle.RENEW,
    "success": lifecycle.SUCCEED,
    "retry": lifecycle.RETRY,
    "failure": lifecycle.FAIL,
    "cancel": lifecycle.CANCELLED,
    "hand-back": lifecycle.INTERRUPT,
}
AI_OUTAGE_REQUESTS = 3
# Calls of the worker's lease loop (worker/lease.py): a task of the worker, not of the job, but
# serving the attempt's lease (these tests run one attempt at a time), so they count as its.
LEASE_CALLS = frozenset({"sql:renew", "redis:PEXPIRE"})
# Commands a connection sends for itself (handshake, health check), not for its caller.
HOUSEKEEPING = frozenset({"CLIENT", "PING", "HELLO", "AUTH", "SELECT"})
_COMMAND_NAME = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")


@dataclass(frozen=True)
class Fault:
    kind: str  # "sql:<statement>", "redis:<COMMAND[+COMMAND…]>" or "ai"
    nth: int  # 1-based among the attempt's calls of that kind
    down_for: float = 0.0  # 0: that call fails; > 0: its whole layer, for that many seconds
    reply_lost: bool = False  # a statement: it runs, then its answer is lost

    @property
    def layer(self) -> str:
        return self.kind.split(":")[0]

    def __str__(self) -> str:
        outage = f"{AI_OUTAGE_REQUESTS} requests" if self.layer == "ai" else f"{self.down_for:g} s"
        mode = (
            "reply lost" if self.reply_lost else f"down {outage}" if self.down_for else "transient"
        )
        return f"{self.kind} #{self.nth} ({mode})"


@dataclass
class FaultPlan:
    fault: Fault | None = None
    calls: list[str] = field(default_factory=list)  # the attempt's calls, in order
    fired: bool = False
    _seen: Counter[str] = field(default_factory=Counter)
    _down_until: dict[str, float] = field(default_factory=dict)
    _refusals: int = 0  # AI requests still to refuse

    def strikes(self, kind: str) -> bool:
        """Called before each call of `kind`: whether it must fail (for a `reply_lost` fault:
        whether its answer must be lost)."""
        layer = kind.split(":")[0]
        if IN_ATTEMPT.get() or kind in LEASE_CALLS:
            self.calls.append(kind)
            self._seen[kind] += 1
            fault = self.fault
            if fault and not self.fired and kind == fault.kind and self._seen[kind] == fault.nth:
                self.fired = True
                if fault.reply_lost:
                    return True
                if fault.down_for and layer == "ai":
                    self._refusals = AI_OUTAGE_REQUESTS - 1
                elif fault.down_for:
                    self._down_until[layer] = time.monotonic() + fault.down_for
                return True
        if layer == "ai" and self._refusals:
            self._refusals -= 1
            return True
        return self.is_down(layer)

    def is_down(self, layer: str) -> bool:
        return time.monotonic() < self._down_until.get(layer, 0.0)

    def points(self, at_most: dict[str, int] | None = None) -> Iterator[tuple[str, int]]:
        """Every (kind, nth) of the recorded calls, in order; for a kind in `at_most`, only
        its first so many (calls made by a timer, whose count varies from run to run)."""
        seen: Counter[str] = Counter()
        for kind in self.calls:
            seen[kind] += 1
            if seen[kind] <= (at_most or {}).get(kind, seen[kind]):
                yield kind, seen[kind]

    # -- the seams ----------------------------------------------------------------------
    def attach(self, engine: AsyncEngine) -> AsyncEngine:
        """Watch every statement `engine` sends (SQLAlchemy's before_cursor_execute event)."""
        names = {id(statement): name for name, statement in STATEMENTS.items()}

        def before_cursor_execute(
            conn: Any, cursor: Any, statement: str, *args: Any, **kwargs: Any
        ) -> None:
            context = args[1] if len(args) > 1 else kwargs.get("context")
            compiled = getattr(context, "compiled", None)
            name = names.get(id(getattr(compiled, "statement", None)))
            if self.strikes(f"sql:{name or statement.split()[0].lower()}"):
                if self.fault is not None and self.fault.reply_lost:
                    context._lose_reply = True  # after it ran: see after_cursor_execute
                else:
                    conn.connection.driver_connection.terminate()  # it meets a dead line

        def after_cursor_execute(
            conn: Any, cursor: Any, statement: str, *args: Any, **kwargs: Any
        ) -> None:
            context = args[1] if len(args) > 1 else kwargs.get("context")
            if getattr(context, "_lose_reply", False):
                conn.connection.driver_connection.terminate()
                raise ConnectionResetError("Connection reset by peer (injected, after commit)")

        event.listen(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
        event.listen(engine.sync_engine, "after_cursor_execute", after_cursor_execute)
        return engine

    def pg_connection_class(self) -> type[asyncpg.Connection]:
        """An asyncpg connection class (the worker's pg pool, which runs the task transitions)
        that consults this plan before each statement, as `attach` does for the engine."""
        plan = self
        names = {for_asyncpg(statement).sql: name for name, statement in STATEMENTS.items()}

        class FaultyPgConnection(asyncpg.Connection):
            async def _faulty(self, run: Any, query: str, *args: Any, **kwargs: Any) -> Any:
                if plan.strikes(f"sql:{names.get(query) or query.split()[0].lower()}"):
                    if plan.fault is not None and plan.fault.reply_lost:
                        await run(query, *args, **kwargs)  # it runs, and commits
                        self.terminate()
                        raise ConnectionResetError("Connection reset by peer (injected)")
                    self.terminate()  # it meets a dead line
                return await run(query, *args, **kwargs)

            async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
                return await self._faulty(super().fetchrow, query, *args, **kwargs)

            async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
                return await self._faulty(super().fetch, query, *args, **kwargs)

        return FaultyPgConnection

    def redis_connection_class(self) -> type[Connection]:
        """A redis-py connection class that consults this plan before each command."""
        plan = self

        class FaultyConnection(Connection):
            async def connect(self) -> None:
                if plan.is_down("redis"):
                    raise RedisConnectionError(f"Error 111 connecting to {self.host}:{self.port}.")
                await super().connect()

            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                names = _command_names(command)
                if set(names.split("+")) <= HOUSEKEEPING:
                    # A new connection's handshake or a health check: made when the pool
                    # needs it, not by the attempt, so neither counted nor targeted.
                    if plan.is_down("redis"):
                        await self.disconnect()
                        raise RedisConnectionError("Connection reset by peer (injected)")
                elif plan.strikes("redis:" + names):
                    await self.disconnect()
                    raise RedisConnectionError("Connection reset by peer (injected)")
                await super().send_packed_command(command, check_health)

        return FaultyConnection

    def ai_connector(self) -> aiohttp.BaseConnector:
        """An aiohttp connector to the real (fake) AI server that consults this plan (the AI
        client's `connector`: called on the running loop)."""
        return _FaultyConnector(self)


class _FaultyConnector(aiohttp.TCPConnector):
    def __init__(self, plan: FaultPlan) -> None:
        super().__init__()
        self._plan = plan

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Any:
        if self._plan.strikes("ai"):
            refused = ConnectionRefusedError(111, "Connection refused (injected)")
            raise aiohttp.ClientConnectorError(req.connection_key, refused)
        return await super().connect(req, traces, timeout)


def _command_names(command: Any) -> str:
    """The command names in a packed command or pipeline: "PEXPIRE", "MULTI+ZADD+EXEC"."""
    chunks = command if isinstance(command, list | tuple) else [command]
    packed = b"".join(bytes(chunk) for chunk in chunks)
    return "+".join(name.decode().upper() for name in _COMMAND_NAME.findall(packed))


class SwallowingConnection(Connection):
    """redis-py as in its issues 2028 and 2551: a cancel that lands while a reply is awaited
    comes out of the timeout block as redis' TimeoutError, the task's cancel consumed."""

    made: ClassVar[list[SwallowingConnection]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        SwallowingConnection.made.append(self)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise RedisTimeoutError("Timeout reading from socket") from None


async def command_held(redis: Redis, command: str) -> bool:
    """Some client's `command` (lower case) is held by CLIENT PAUSE (flag b: blocked): sent
    and not answered."""
    clients = await redis.client_list()
    return any(c["cmd"] == command and "b" in c["flags"] for c in clients)

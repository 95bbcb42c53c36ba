"""A lean Redis connection for the progress hub: RESP2 parsed by hiredis, no per-command locks,
timeouts or retries.

Through redis-py's asyncio client (a timeout per read, a retry wrapper, a pooled pipeline for
the XRANGE that follows) a notice cost the hub about 230 µs of CPU, delivery included; through
this, about 100 µs. The hub handles hundreds of notices a second in every API process, so it
speaks to Redis through this (bench/sse_fanout.py); everything else keeps using redis-py.

Replies are handed, in order, to the callback given with each command. On a subscribed
connection, pushes (subscribe confirmations, messages, pongs) go to `on_push`, in batches of
what one read delivered. A lost connection calls every pending callback with the error once
and resolves `closed`; the owner reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import RedisSSLContext, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0

Reply = Any  # bytes | int | list | ResponseError | ConnectionError, as hiredis parses it
ReplyCallback = Callable[[Reply], None]
Command = Sequence[str | bytes | int]


class RespConnection(asyncio.Protocol):
    def __init__(self, on_push: Callable[[list[Reply]], None] | None = None) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._callbacks: deque[ReplyCallback] = deque()
        self._on_push = on_push
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls,
        url: str,
        client_name: str,
        on_push: Callable[[list[Reply]], None] | None = None,
        abandon: asyncio.Future[None] | None = None,
    ) -> RespConnection:
        """Connect, authenticate, select the database and name the client, as `url` says.
        Once `abandon` resolves, the connection is closed, so a handshake Redis does not answer
        fails at once (ConnectionError) instead of waiting to be cancelled."""
        options = parse_url(url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            if "path" in options:
                _, connection = await loop.create_unix_connection(
                    lambda: cls(on_push), options["path"]
                )
            else:
                _, connection = await loop.create_connection(
                    lambda: cls(on_push),
                    options.get("host", "localhost"),
                    options.get("port", 6379),
                    ssl=_tls(url, options),
                )
            if abandon is not None:
                abandon.add_done_callback(connection._abandoned)
            try:
                if options.get("password"):
                    user = options.get("username")
                    await connection.call("AUTH", *([user] if user else []), options["password"])
                if options.get("db"):
                    await connection.call("SELECT", options["db"])
                await connection.call("CLIENT", "SETNAME", client_name)
            except BaseException:
                connection.close()
                raise
            finally:
                if abandon is not None:
                    abandon.remove_done_callback(connection._abandoned)
        return connection

    def _abandoned(self, _: asyncio.Future[None]) -> None:
        self.close()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pushes: list[Reply] = []
        while (reply := self._reader.gets()) is not False:
            if self._callbacks:
                self._hand_over(self._callbacks.popleft(), reply)
            else:
                pushes.append(reply)
        if pushes and self._on_push is not None:
            self._hand_over(self._on_push, pushes)

    @staticmethod
    def _hand_over(callback: Callable[[Any], None], value: Any) -> None:
        """A failing consumer must not take the connection down with it."""
        try:
            callback(value)
        except Exception:
            log.exception("a Redis reply's consumer failed")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        error = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        callbacks, self._callbacks = self._callbacks, deque()
        for callback in callbacks:
            self._hand_over(callback, error)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- commands ---------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, commands: Sequence[tuple[Command, ReplyCallback | None]]) -> None:
        """Write the commands in one go; each reply goes to its callback (None: a push
        connection's command whose answer arrives as a push)."""
        if self._transport is None:
            raise RedisConnectionError("not connected to Redis")
        packed = (hiredis.pack_command(tuple(cmd)) for cmd, _ in commands)  # type: ignore[arg-type]  # its stub types a 1-tuple
        self._transport.write(b"".join(packed))
        self._callbacks.extend(callback for _, callback in commands if callback is not None)

    async def call(self, *command: str | bytes | int) -> Reply:
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def answer(value: Reply) -> None:
            if not reply.done():
                reply.set_result(value)

        self.send([(command, answer)])
        value = await reply
        if isinstance(value, Exception):
            raise value
        return value

    def close(self) -> None:
        """At once, unsent data dropped: a connection is closed when it is judged dead or no
        longer wanted (a graceful close could wait on a half-open peer until TCP gives up)."""
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows
        elif not self.closed.done():
            self.closed.set_result(None)

    async def aclose(self) -> None:
        self.close()
        await self.closed


def _tls(url: str, options: Mapping[str, Any]) -> ssl.SSLContext | None:
    """For `rediss://`, the TLS settings redis-py would take from the same URL."""
    if not url.startswith("rediss:"):
        return None
    return RedisSSLContext(
        cert_reqs=options.get("ssl_cert_reqs", "required"),
        ca_certs=options.get("ssl_ca_certs"),
        check_hostname=options.get("ssl_check_hostname", False),
    ).get()

"""Calls of one Lua script from many coroutines, sent to Redis together: group commit.

A call that finds nothing in flight is sent at once, on its own (an EVAL: nothing costs more
than the plain call). Calls that come while one call or batch is in flight queue up, and go
out together in one pipeline (one round trip) as soon as it has returned; the calls that
come meanwhile go in the next, and so on. Under load, a hundred concurrent calls cost a few
connection checkouts and round trips instead of a hundred of each (redis-py's per-command
cost: its pool's lock, a peek read at checkout, a timeout around each read).

Each caller gets its own script's answer, or its own error: a script error (a Redis error
reply) goes to its caller only; a connection error or timeout goes to every call of that
pipeline and to the calls queued behind it (Redis is unreachable: they would wait out the
client's retries once more, and their callers decide whether to try again).
Order is kept: calls are sent in the order they were made, so two calls of one coroutine
reach Redis in its order. A queued caller that is cancelled still has its call sent (it may
be in flight already); its answer is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Errors that say Redis cannot be reached now (the client's own retries are spent).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

Call = tuple[Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatch:
    """Batched EVALs of `script` (Lua text: EVAL carries it with each call, so there is never a
    NOSCRIPT round trip; Redis caches the compiled script) on `redis`."""

    def __init__(self, redis: Redis, script: str) -> None:
        self._redis = redis
        self._script = script
        self._busy = False  # a call or a batch is in flight
        self._queued: list[Call] = []
        self._flusher: asyncio.Task[None] | None = None  # held: the loop keeps weak references

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's answer for `keys` and `args`; raises what Redis raised for this call
        (a `redis.exceptions.ResponseError` for a script error; a connection or timeout error
        for the pipeline it went in, or for the call or pipeline it queued behind)."""
        if self._busy:
            answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queued.append((keys, args, answer))
            return await answer
        self._busy = True
        try:
            call = self._redis.eval(self._script, len(keys), *keys, *args)
            return await cast(Awaitable[Any], call)
        except UNREACHABLE as exc:
            self._fail_queued(exc)
            raise
        finally:
            self._next()

    def _fail_queued(self, exc: BaseException) -> None:
        for _, _, answer in self._queued:
            if not answer.done():
                answer.set_exception(exc)
        self._queued = []

    def _next(self) -> None:
        """What was in flight has returned: the calls queued meanwhile go out, in one batch."""
        if self._queued:
            self._flusher = asyncio.create_task(self._flush())
        else:
            self._busy, self._flusher = False, None

    async def _flush(self) -> None:
        batch, self._queued = self._queued, []
        try:
            await self._send(batch)
        except BaseException:  # cancelled (the loop is closing): no caller may wait for ever
            for _, _, answer in batch + self._queued:
                answer.cancel()
            self._queued = []
            raise
        finally:
            self._next()

    async def _send(self, batch: list[Call]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    pipe.eval(self._script, len(keys), *keys, *args)
                answers = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            if isinstance(exc, UNREACHABLE):
                self._fail_queued(exc)
            return
        for (_, _, answer), result in zip(batch, answers, strict=True):
            if answer.done():
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)

"""Calls of one Lua script from many coroutines, sent to Redis together: group commit.

The first call finds no batch in flight and starts one (a task that sends every call queued
so far in one pipeline, as EVALs, one round trip). Calls that come while that pipeline is in
flight queue up and go out together in the next one, as soon as it returns. A lone call
waits for nothing but its own round trip; under load, a hundred concurrent calls cost one
connection checkout and one round trip instead of a hundred of each (redis-py's per-command
cost: its pool's lock, a peek read at checkout, a timeout around each read).

Each caller gets its own script's answer, or its own error: a script error (a Redis error
reply) goes to its caller only; a connection error goes to every call of that pipeline.
Order is kept: calls are sent in the order they were made, so two calls of one coroutine
reach Redis in its order. A cancelled caller's call is still sent (it may be in flight
already); its answer is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

Call = tuple[Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatch:
    """Batched EVALs of `script` (Lua text: EVAL carries it with each call, so there is never a
    NOSCRIPT round trip; Redis caches the compiled script) on `redis`."""

    def __init__(self, redis: Redis, script: str) -> None:
        self._redis = redis
        self._script = script
        self._queued: list[Call] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's answer for `keys` and `args`; raises what Redis raised for this call
        (a `redis.exceptions.ResponseError` for a script error, a connection or timeout error
        for the pipeline it went in)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((keys, args, answer))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await answer

    async def _flush(self) -> None:
        batch: list[Call] = []
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                await self._send(batch)
                batch = []
        except BaseException:  # cancelled (the loop is closing): no caller may wait for ever
            for _, _, answer in batch + self._queued:
                answer.cancel()
            self._queued = []
            raise
        finally:
            self._flusher = None

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
            return
        for (_, _, answer), result in zip(batch, answers, strict=True):
            if answer.done():
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)

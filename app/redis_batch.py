"""Calls of one Lua script from many coroutines, sent to Redis together: a group commit
(app/group_commit.py) of EVALs.

A call that finds nothing in flight is sent at once, as an EVAL; calls that come meanwhile go
out together in one pipeline. Under load, a hundred concurrent calls cost a few connection
checkouts and round trips instead of a hundred of each (redis-py's per-command cost: its
pool's lock, a peek read at checkout, a timeout around each read).

Each caller gets its own script's answer, or its own error: a script error (a Redis error
reply) goes to its caller only; a connection error or timeout goes to every call of that
pipeline and to the calls queued behind it (Redis is unreachable: they would wait out the
client's retries once more, and their callers decide whether to try again). Order is kept; a
queued caller that is cancelled still has its call sent, its answer dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.group_commit import GroupCommit

# Errors that say Redis cannot be reached now (the client's own retries are spent).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

Call = tuple[Sequence[str], Sequence[Any]]  # (keys, args)


class ScriptBatch:
    """Batched EVALs of `script` (Lua text: EVAL carries it with each call, so there is never a
    NOSCRIPT round trip; Redis caches the compiled script) on `redis`."""

    def __init__(self, redis: Redis, script: str) -> None:
        self._redis = redis
        self._script = script
        self._commit: GroupCommit[Call, Any] = GroupCommit(
            self._one, self._many, fails_queued=UNREACHABLE
        )

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's answer for `keys` and `args`; raises what Redis raised for this call
        (a `redis.exceptions.ResponseError` for a script error; a connection or timeout error
        for the pipeline it went in, or for the call or pipeline it queued behind)."""
        return await self._commit((keys, args))

    async def _one(self, call: Call) -> Any:
        keys, args = call
        return await cast(Awaitable[Any], self._redis.eval(self._script, len(keys), *keys, *args))

    async def _many(self, calls: Sequence[Call]) -> list[Any]:
        """One pipeline; a script error takes its call's place in the answers."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.eval(self._script, len(keys), *keys, *args)
            answers: list[Any] = await pipe.execute(raise_on_error=False)
        return answers

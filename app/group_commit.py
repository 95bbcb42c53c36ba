"""Group commit: calls from many coroutines, sent together while one is in flight.

A call that finds nothing in flight is sent at once, on its own (`send_one`: nothing costs
more than the plain call). Calls that come while one call or batch is in flight queue up, and
go out together (`send_many`: one round trip) as soon as it has returned; the calls that come
meanwhile go in the next, and so on. Under load, a hundred concurrent calls cost a few round
trips and a few client-side checkouts instead of a hundred of each; with no concurrency there
is no wait and no extra task.

Each caller gets its own answer, or its own error: `send_many` answers per call, and an
exception in its place goes to that call's caller only. An exception raised by `send_many` (or
`send_one`) goes to every call it carried; one of the `fails_queued` kinds (the server cannot
be reached) goes to the calls queued behind it too, unsent: they would wait out the client's
retries once more, and their callers decide whether to try again.
Order is kept: calls are sent in the order they were made, so two calls of one coroutine
reach the server in its order. A queued caller that is cancelled still has its call sent (it
may be in flight already); its answer is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Calls of `send_one` (one call: its answer) batched into `send_many` (the calls in order:
    an answer or an exception per call, in the same order)."""

    def __init__(
        self,
        send_one: Callable[[T], Awaitable[R]],
        send_many: Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]],
        *,
        fails_queued: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._send_one = send_one
        self._send_many = send_many
        self._fails_queued = fails_queued
        self._busy = False  # a call or a batch is in flight
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None  # held: the loop keeps weak references

    async def __call__(self, call: T) -> R:
        """`call`'s answer; raises its own error, or the error of the batch it went in (or, for
        a `fails_queued` kind, of the call or batch it queued behind)."""
        if self._busy:
            answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._queued.append((call, answer))
            return await answer
        self._busy = True
        try:
            return await self._send_one(call)
        except self._fails_queued as exc:
            self._fail_queued(exc)
            raise
        finally:
            self._next()

    def _fail_queued(self, exc: BaseException) -> None:
        for _, answer in self._queued:
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
            for _, answer in batch + self._queued:
                answer.cancel()
            self._queued = []
            raise
        finally:
            self._next()

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            answers = await self._send_many([call for call, _ in batch])
        except Exception as exc:
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            if isinstance(exc, self._fails_queued):
                self._fail_queued(exc)
            return
        for (_, answer), result in zip(batch, answers, strict=True):
            if answer.done():
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)

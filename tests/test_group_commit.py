"""The group commit itself (app/group_commit.py), with calls of our own: which error reaches
which caller. Its use on Redis is tested in test_redis_batch.py, on PostgreSQL in
tests/reliability/test_progress_writes.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from app.group_commit import GroupCommit


@pytest.mark.parametrize(
    ("error", "queued_get"),
    [
        (ValueError("this call's own"), [20, 30]),  # sent together after it, answered
        (OSError("unreachable"), None),  # failed with it, never sent
    ],
)
async def test_an_error_reaches_the_calls_queued_behind_it_only_if_it_fails_queued(
    error: Exception, queued_get: list[int] | None
) -> None:
    entered, gate = asyncio.Event(), asyncio.Event()
    batches: list[list[int]] = []

    async def one(call: int) -> int:
        entered.set()
        await gate.wait()
        raise error

    async def many(calls: Sequence[int]) -> list[int | Exception]:
        batches.append(list(calls))
        return [call * 10 for call in calls]

    commit: GroupCommit[int, int] = GroupCommit(one, many, fails_queued=(OSError,))
    first = asyncio.ensure_future(commit(1))
    await entered.wait()  # the first call is in flight
    queued = [asyncio.ensure_future(commit(n)) for n in (2, 3)]
    gate.set()  # the queued calls' first steps run before the first call resumes (FIFO)
    answers = await asyncio.gather(first, *queued, return_exceptions=True)
    assert answers[0] is error
    if queued_get is None:
        assert answers[1:] == [error, error] and batches == []
    else:
        assert answers[1:] == queued_get and batches == [[2, 3]]
    # Idle again: the next call goes alone, at once.
    before = list(batches)
    with pytest.raises(type(error)):
        await commit(4)
    assert batches == before

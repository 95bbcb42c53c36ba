"""Which asyncpg errors an outcome write tries again: a dead connection yes, a bad statement
or bad input never (retried until the deadline, it would turn a failure into a crash loop);
and an effect after the commit keeps to its budget."""

from __future__ import annotations

import time

import asyncpg
import pytest

from worker.durable import after_commit, durable, is_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (asyncpg.InterfaceError("connection is closed"), True),
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), True),
        (asyncpg.InternalClientError("cannot switch to state 12"), True),
        (ConnectionResetError("reset by peer"), True),
        (asyncpg.DataError("invalid input for query argument $1"), False),
        (asyncpg.ClientConfigurationError("bad option"), False),
        (asyncpg.UniqueViolationError("duplicate key"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_only_a_dead_connection_is_tried_again(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


async def test_an_effect_after_the_commit_keeps_to_its_budget_first_try_included() -> None:
    """after_commit's budget counts its first try: a first try that used it all is not
    followed by another (a hung Redis doubled the stop's wait for each effect)."""
    tries = 0

    async def effect() -> None:
        nonlocal tries
        tries += 1
        raise ConnectionError("redis does not answer")

    assert await after_commit("publish", effect, within=0.0) is False
    assert tries == 1


@pytest.mark.parametrize(
    ("error", "tries"),
    [
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), 3),
        (asyncpg.DataError("invalid input for query argument $1"), 1),
    ],
    ids=["a dead connection: tried again until written", "bad input: raised at once"],
)
async def test_an_outcome_write_is_tried_again_only_after_a_transient_error(
    error: Exception, tries: int
) -> None:
    calls = 0

    async def write() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise error
        return "written"

    deadline = time.monotonic() + 30
    if is_transient(error):
        assert await durable(write, "claim", deadline, max_wait=0.01) == "written"
    else:
        with pytest.raises(type(error)):
            await durable(write, "claim", deadline, max_wait=0.01)
    assert calls == tries

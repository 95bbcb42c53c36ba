"""Which asyncpg errors an outcome write tries again: a dead connection yes, a bad statement
or bad input never (retried until the deadline, it would turn a failure into a crash loop)."""

from __future__ import annotations

import asyncpg
import pytest

from worker.durable import is_transient


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

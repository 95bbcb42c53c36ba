"""The API's engine has no pre-ping: its hot statements run once more on a stale connection;
so does the read pool's."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import create_engine, create_read_pool, fetch_row, on_fresh_connection
from app.settings import Settings


async def _backend_pid(connection: AsyncConnection) -> int:
    return int(await connection.scalar(text("SELECT pg_backend_pid()")) or 0)


async def test_a_connection_closed_by_the_server_is_replaced_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    api_engine = create_engine(
        settings.model_copy(update={"database_pool_size": 1}), pre_ping=False
    )
    try:
        first = await on_fresh_connection(api_engine, _backend_pid)
        assert await on_fresh_connection(api_engine, _backend_pid) == first  # pooled
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        runs = 0

        async def count(connection: AsyncConnection) -> int:
            nonlocal runs
            runs += 1
            return await _backend_pid(connection)

        second = await on_fresh_connection(api_engine, count)
        assert second != first and runs == 2
    finally:
        await api_engine.dispose()


async def test_any_other_error_is_raised_at_once(settings: Settings) -> None:
    api_engine = create_engine(settings, pre_ping=False)
    runs = 0

    async def fail(connection: AsyncConnection) -> None:
        nonlocal runs
        runs += 1
        await connection.execute(text("SELECT 1 / 0"))

    try:
        with pytest.raises(DBAPIError):
            await on_fresh_connection(api_engine, fail)
        assert runs == 1
    finally:
        await api_engine.dispose()


async def test_each_statement_commits_on_its_own(settings: Settings, engine: AsyncEngine) -> None:
    api_engine = create_engine(settings, pre_ping=False)

    async def in_transaction(connection: AsyncConnection) -> bool:
        # now() is the transaction's start: it differs between statements only outside one
        first = await connection.scalar(text("SELECT now()"))
        second = await connection.scalar(text("SELECT now()"))
        return bool(first == second)

    try:
        assert not await on_fresh_connection(api_engine, in_transaction)
    finally:
        await api_engine.dispose()


async def test_the_read_pool_replaces_a_connection_closed_by_the_server(
    settings: Settings, engine: AsyncEngine
) -> None:
    reads = await create_read_pool(settings.model_copy(update={"database_pool_size": 1}))
    try:
        first = await fetch_row(reads, "SELECT pg_backend_pid() AS pid")
        assert first is not None
        again = await fetch_row(reads, "SELECT pg_backend_pid() AS pid")
        assert again is not None and again["pid"] == first["pid"]  # pooled
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first["pid"]})
        second = await fetch_row(reads, "SELECT pg_backend_pid() AS pid")
        assert second is not None and second["pid"] != first["pid"]
        with pytest.raises(asyncpg.DivisionByZeroError):  # any other error: raised at once
            await fetch_row(reads, "SELECT 1 / 0")
    finally:
        await reads.close()

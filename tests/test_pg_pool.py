"""The API's hottest statements (asyncpg's own pool) run once more on a connection the server
closed."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_pg_pool, fetch_row, for_asyncpg
from app.settings import Settings

BACKEND_PID = for_asyncpg(text("SELECT pg_backend_pid() AS pid"))


async def test_the_pg_pool_replaces_a_connection_closed_by_the_server(
    settings: Settings, engine: AsyncEngine
) -> None:
    pg = await create_pg_pool(settings.model_copy(update={"database_pool_size": 1}))
    try:
        first = await fetch_row(pg, BACKEND_PID, {})
        assert first is not None
        again = await fetch_row(pg, BACKEND_PID, {})
        assert again is not None and again["pid"] == first["pid"]  # pooled
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first["pid"]})
        second = await fetch_row(pg, BACKEND_PID, {})
        assert second is not None and second["pid"] != first["pid"]
        with pytest.raises(asyncpg.DivisionByZeroError):  # any other error: raised at once
            await fetch_row(pg, for_asyncpg(text("SELECT 1 / 0")), {})
    finally:
        await pg.close()

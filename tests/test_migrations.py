from __future__ import annotations

import asyncio

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app import migrate
from app.embedded import ensure_database
from app.models import Base
from app.settings import asyncpg_url

EXPECTED_TABLES = {
    "users",
    "practice_sessions",
    "practice_records",
    "ai_analysis_tasks",
    "ai_analysis_results",
    "audit_events",
}


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows} - {"alembic_version"}


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, Base.metadata))


async def test_upgrade_downgrade_upgrade(postgres_server_url: str) -> None:
    url = asyncpg_url(await ensure_database(postgres_server_url, "vocalborn_migrations"))

    await asyncio.to_thread(migrate.upgrade, url)
    assert await _tables(url) == EXPECTED_TABLES

    await asyncio.to_thread(migrate.downgrade, url, "0001")
    assert await _tables(url) == {"users", "practice_sessions", "practice_records"}

    await asyncio.to_thread(migrate.downgrade, url, "base")
    assert await _tables(url) == set()

    await asyncio.to_thread(migrate.upgrade, url)
    assert await _tables(url) == EXPECTED_TABLES


async def test_migrations_match_the_models(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(_schema_diff)
    finally:
        await engine.dispose()
    assert diff == []

"""Database engine, session factory and the declarative base shared by all models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from sqlalchemy import MetaData, TextClause, make_url
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from app.causes import causes
from app.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(settings: Settings, *, keep_connections: bool = False) -> AsyncEngine:
    """The engine of a process: up to twice `database_pool_size` connections, each tested at
    checkout (pre-ping: with asyncpg a BEGIN, a `;` and a ROLLBACK; the API's hottest
    statements go through `create_pg_pool` instead). `keep_connections`: keep every
    connection opened, up to the same maximum, instead of closing those beyond
    `database_pool_size` as soon as they are returned (under bursts, a connection opened,
    its statements prepared again, and closed, per request)."""
    size = settings.database_pool_size
    return create_async_engine(
        settings.database_url,
        pool_size=2 * size if keep_connections else size,
        max_overflow=0 if keep_connections else size,
        pool_pre_ping=True,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# Errors of a connection that turned out dead under a statement (the server restarted, or
# closed it): the statement never ran. A backend terminated while idle leaves its FATAL notice
# unread, and asyncpg then refuses the next statement with InternalClientError ("cannot switch
# to state …"); a closed connection raises InterfaceError itself, whose subclasses (DataError,
# ClientConfigurationError, …) are the statement's or its input's fault instead.
_DEAD = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.InternalClientError,
    ConnectionError,
)


def is_dead_connection(exc: BaseException) -> bool:
    """Whether asyncpg's `exc` says the connection is gone or broken, not the statement."""
    return isinstance(exc, _DEAD) or type(exc) is asyncpg.InterfaceError


# SQLSTATE classes of a server that cannot serve now: connection exceptions, insufficient
# resources (too many connections), operator intervention (shutting down, starting up, in
# crash recovery).
UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from or during) says PostgreSQL cannot be reached
    or cannot serve now, as opposed to a statement's own error: a dead or refused connection
    (an OSError is counted only when raised inside asyncpg, so that a storage error is not
    taken for the database's), an invalidated one, or a server shutting down, starting up or
    out of connections."""
    for current in causes(exc):
        if is_dead_connection(current) and not isinstance(current, OSError):
            return True
        if isinstance(current, OSError) and _raised_in_asyncpg(current):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(UNAVAILABLE_SQLSTATES):
            return True
    return False


def _raised_in_asyncpg(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        if str(traceback.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg"):
            return True
        traceback = traceback.tb_next
    return False


def asyncpg_dsn(database_url: str) -> str:
    """`database_url` (SQLAlchemy's, `postgresql+asyncpg://…`) as asyncpg itself reads it."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def create_pg_pool(
    settings: Settings, connection_class: type[asyncpg.Connection] | None = None
) -> asyncpg.Pool:
    """A plain asyncpg pool for the hottest statements (the API's status and submit, the
    worker's task transitions), up to `database_pool_size` connections, none opened until
    needed (a process starts while the database is down). A statement through it costs about
    0.1 ms of CPU against about 0.25 ms through the engine (its pool checkout and execution
    context; measured with one `SELECT` on the embedded PostgreSQL). json and jsonb values
    come back decoded, as through the engine; parameters for them are JSON text.
    `connection_class`: a test seam (fault injection)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        asyncpg_dsn(settings.database_url),
        min_size=0,
        max_size=settings.database_pool_size,
        reset=_nothing_to_reset,
        init=_json_codecs,
        connection_class=connection_class or asyncpg.Connection,
    )
    return pool


async def _json_codecs(connection: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
        )


# How long closing a pg pool waits for connections still in use (a statement left to end by
# itself) before it terminates them.
POOL_CLOSE_SECONDS = 5.0


async def close_pg_pool(pool: asyncpg.Pool) -> None:
    """Close `pool` in bounded time: asyncpg's close() waits for every connection in use to be
    released, without limit; after POOL_CLOSE_SECONDS the rest are terminated."""
    try:
        await asyncio.wait_for(pool.close(), POOL_CLOSE_SECONDS)
    except TimeoutError:
        pool.terminate()


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """The pool's reset on release. Its statements are single autocommit statements that
    leave no session state (no SET, LISTEN, cursor or advisory lock); asyncpg's default
    reset (`RESET ALL`, `UNLISTEN *`, …) cost a round trip per statement. An open
    transaction is still rolled back: asyncpg does that before calling this."""


_ASYNCPG = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Positional:
    """A text statement compiled once for asyncpg itself: `sql` with `$n` parameters, and the
    names of the parameters in that order."""

    sql: str
    names: tuple[str, ...]

    def args(self, params: Mapping[str, object]) -> list[object]:
        return [params[name] for name in self.names]


def for_asyncpg(statement: TextClause) -> Positional:
    """`statement` (`:name` parameters) compiled by SQLAlchemy's asyncpg dialect, for
    `fetch_row`: the same SQL the engine would send."""
    compiled = statement.compile(dialect=_ASYNCPG)
    return Positional(compiled.string, tuple(compiled.positiontup or ()))


async def fetch_row(
    pool: asyncpg.Pool, statement: Positional, params: Mapping[str, object]
) -> asyncpg.Record | None:
    """The first row of `statement` with `params`, on a connection of `pool`, autocommit;
    run once more on a new connection when the first turned out dead. Raises what asyncpg
    raises otherwise. `statement` must be safe to run twice: a read, or a statement whose
    second run finds what the first did."""
    args = statement.args(params)
    for retried in (False, True):
        try:
            row: asyncpg.Record | None = await pool.fetchrow(statement.sql, *args)
            return row
        except Exception as exc:
            if retried or not is_dead_connection(exc):
                raise
    raise AssertionError("unreachable")

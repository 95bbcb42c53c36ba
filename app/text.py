"""Values from clients that PostgreSQL would refuse, refused here as a validation error rather
than a database error later: NUL characters in text and jsonb, ids beyond bigint, times that
overflow in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


CleanText = Annotated[str, AfterValidator(_no_nul)]


# PostgreSQL's bigint: a larger id from a client is a validation error, not an overflow later.
MAX_BIGINT = 2**63 - 1


def _storable(value: datetime) -> datetime:
    """A naive time is taken as UTC; any time must stay within years 1..9999 once in UTC
    (asyncpg converts to UTC, and 0001-01-01T00:00+10:00 would overflow there)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        return aware.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("out of range") from exc


TimeFilter = Annotated[datetime, AfterValidator(_storable)]

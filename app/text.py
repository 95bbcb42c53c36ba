"""Values from clients that PostgreSQL would refuse, refused here as a validation error rather
than a database error later: NUL characters and unpaired surrogates in text and jsonb, ids
beyond bigint, times that overflow in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator


def storable_text(value: str) -> str:
    """`value` if PostgreSQL can store it as text or in jsonb; raises ValueError for a NUL
    character, or an unpaired surrogate (JSON's "\\ud800" escape decodes to one; it is not
    Unicode text, so it has no UTF-8 form: asyncpg cannot send it, jsonb refuses it)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must not contain unpaired surrogates (it is not Unicode text)") from exc
    return value


CleanText = Annotated[str, AfterValidator(storable_text)]


def storable_words(value: str) -> str:
    """`value`, words from outside kept for people (an error message of the AI service), as
    text PostgreSQL stores: a NUL character written as the escape `\\x00`, an unpaired
    surrogate as `\\ud800`; anything else unchanged."""
    escaped = value.replace("\x00", "\\x00")
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def storable_json(value: Any) -> Any:
    """`value` (parsed JSON: dicts, lists, strings, numbers) if every string in it, keys
    included, is `storable_text`; raises ValueError naming the first that is not."""
    if isinstance(value, str):
        storable_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            storable_text(key)
            storable_json(item)
    elif isinstance(value, list):
        for item in value:
            storable_json(item)
    return value


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

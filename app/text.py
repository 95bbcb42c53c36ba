"""Free text from clients: PostgreSQL refuses NUL characters in text and jsonb, so they are a
validation error here rather than a database error later."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


CleanText = Annotated[str, AfterValidator(_no_nul)]

"""The chain of an exception: what it was raised from or during."""

from __future__ import annotations


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or during, outermost first (each once)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen

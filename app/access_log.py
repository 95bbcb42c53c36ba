"""Query strings never reach the access log: stream tokens travel in them."""

from __future__ import annotations

import logging


class ScrubQueryStrings(logging.Filter):
    """uvicorn.access records carry (client, method, path with query, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, _, query = args[2].partition("?")
            if query:
                record.args = (*args[:2], f"{path}?[scrubbed]", *args[3:])
        return True


def install() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, ScrubQueryStrings) for f in logger.filters):
        logger.addFilter(ScrubQueryStrings())

"""Query strings never reach the logs: stream tokens travel in them.

uvicorn logs request paths with their query string in two places: the access log
(`uvicorn.access`) and the WebSocket handshake (`uvicorn.error`, "WebSocket /path?… [accepted]").
"""

from __future__ import annotations

import logging
import re

QUERY = re.compile(r"\?[^\s\"']*")
LOGGERS = ("uvicorn.access", "uvicorn.error")


class ScrubQueryStrings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                QUERY.sub("?[scrubbed]", arg) if isinstance(arg, str) and "?" in arg else arg
                for arg in record.args
            )
        if isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = QUERY.sub("?[scrubbed]", record.msg)
        return True


def install() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ScrubQueryStrings) for f in logger.filters):
            logger.addFilter(ScrubQueryStrings())

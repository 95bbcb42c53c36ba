"""Logging for the API and the workers, from LOG_LEVEL and LOG_FORMAT: `json` writes one object
per line (time, level, logger, message and any `extra` fields), `text` a plain line.

One handler of ours on the root logger, replaced (not added again) by a second call. uvicorn's
own loggers keep their handlers; arq's, when the arq command line set one up, stop propagating
so that its lines are not written twice.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from app.settings import Settings

HANDLER_NAME = "vocalborn"
FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger"}


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to sys.stderr as it is when a record comes (test runners swap and close it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(settings: Settings) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(HANDLER_NAME)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(FIELDS, rename_fields=JSON_NAMES))
    else:
        handler.setFormatter(logging.Formatter(FIELDS))
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # httpx logs every request at INFO ("HTTP Request: POST …"): when the AI client called
    # over httpx, a line per call (about 2% of a worker's CPU) that arq's line for the job
    # already says. Kept for any call over httpx; aiohttp, the AI client's now, logs none.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    arq_logger = logging.getLogger("arq")
    if arq_logger.handlers:
        arq_logger.propagate = False

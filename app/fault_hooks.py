"""Fault hooks of the process-level reliability scenarios (tests/reliability): each is off
unless its setting is on, and a setting can only be on with ENVIRONMENT=test (app/settings.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from app.settings import Settings

log = logging.getLogger(__name__)

# The exit code of a process stopped by a fault hook: a test tells it from a crash.
FAULT_EXIT_CODE = 86


def exit_after_commit(settings: Settings) -> Callable[[], None] | None:
    """What the submit path calls after its commit and before its enqueue: with
    FAULT_EXIT_AFTER_COMMIT, ends the process at once (`os._exit`: no shutdown, no flush, as
    a SIGKILL or a lost node would); None otherwise."""
    if not settings.fault_exit_after_commit:
        return None

    def exit_now() -> None:
        log.critical("fault hook: exiting after the commit, before the enqueue")
        os._exit(FAULT_EXIT_CODE)

    return exit_now

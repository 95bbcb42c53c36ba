"""Stages for the analyzer's pool in tests (module-level: a spawned pool process imports them)."""

from __future__ import annotations

import os
import signal
import threading
from queue import Queue

WAIT = 60.0  # seconds a held stage waits for its go before it gives up


def held(starts: Queue[int], go: threading.Event) -> int:
    """Says it started (an item in `starts`, a manager's queue) and returns 42 once `go` (a
    manager's event) is set; TimeoutError after WAIT seconds."""
    starts.put(os.getpid())
    if not go.wait(WAIT):
        raise TimeoutError("no go for the held stage")
    return 42


def die() -> None:
    """Kills the pool process it runs in, as an OOM kill would."""
    os.kill(os.getpid(), signal.SIGKILL)

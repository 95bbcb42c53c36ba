"""A test hook, active only when ANALYZER_TEST_CRASH_MARKER is set: a "poison" recording
that kills the pool process analysing it, as an OOM kill or a crash in a native decoder
would (tests/reliability, scenario R7)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def crash_if_marked(path: str, marker: str) -> None:
    """Runs in a pool process: SIGKILL itself when the recording at `path` contains the
    bytes of `marker`; else nothing."""
    if marker.encode() in Path(path).read_bytes():
        os.kill(os.getpid(), signal.SIGKILL)

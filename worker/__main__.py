"""`python -m worker`: one worker process (`worker.healing.HealingWorker` on
`worker.main.worker_options`, built by `worker.main.healing_worker`) on uvloop's event loop,
as the API runs on uvicorn's, until SIGTERM or SIGINT (it then stops taking jobs and lets
running ones finish within WORKER_SHUTDOWN_GRACE_SECONDS)."""

from __future__ import annotations

import asyncio
import logging

import uvloop

from app.logs import configure_logging
from app.settings import get_settings
from worker.main import healing_worker


def main() -> None:
    settings = get_settings()
    # arq's own lines (a job's start and its end, "← {job id}:analyze_recording ● 'success'",
    # the only line of a success) through our handler, as LOG_FORMAT says: arq's command line
    # config wrote them as plain text among the JSON lines.
    configure_logging(settings)
    # arq's Worker takes its loop from asyncio.get_event_loop(): the policy makes it uvloop's.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    healing_worker(settings).run()
    # The last line of a stop: what follows is the interpreter's exit (its threads joined).
    logging.getLogger("worker").info("stopped")


if __name__ == "__main__":
    main()

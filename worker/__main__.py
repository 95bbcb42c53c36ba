"""`python -m worker`: one worker process (`worker.healing.HealingWorker` on
`worker.main.worker_options`, built by `worker.main.healing_worker`) on uvloop's event loop,
as the API runs on uvicorn's, until SIGTERM or SIGINT (it then stops taking jobs and lets
running ones finish within WORKER_SHUTDOWN_GRACE_SECONDS)."""

from __future__ import annotations

import asyncio
import logging
import logging.config

import uvloop
from arq.logs import default_log_config

from app.settings import get_settings
from worker.main import healing_worker


def main() -> None:
    logging.config.dictConfig(default_log_config(verbose=False))
    # arq's Worker takes its loop from asyncio.get_event_loop(): the policy makes it uvloop's.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    healing_worker(get_settings()).run()
    # The last line of a stop: what follows is the interpreter's exit (its threads joined).
    logging.getLogger("worker").info("stopped")


if __name__ == "__main__":
    main()

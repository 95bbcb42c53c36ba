"""`python -m worker`: one worker process (`worker.healing.HealingWorker` on
`worker.main.worker_options`, built by `worker.main.healing_worker`), until SIGTERM or SIGINT
(it then stops taking jobs and lets running ones finish within
WORKER_SHUTDOWN_GRACE_SECONDS)."""

from __future__ import annotations

import logging
import logging.config

from arq.logs import default_log_config

from app.settings import get_settings
from worker.main import healing_worker


def main() -> None:
    logging.config.dictConfig(default_log_config(verbose=False))
    healing_worker(get_settings()).run()
    # The last line of a stop: what follows is the interpreter's exit (its threads joined).
    logging.getLogger("worker").info("stopped")


if __name__ == "__main__":
    main()

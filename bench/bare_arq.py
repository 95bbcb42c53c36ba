"""Dispatch's baseline: bare arq and a no-op job, run as `arq bench.bare_arq.WorkerSettings`.

arq's defaults (queue `arq:queue`, pickle) but for what ours sets the same way: max_jobs and
poll_delay from WORKER_MAX_JOBS / WORKER_POLL_DELAY_SECONDS, and no result kept (ours keeps
none either).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.worker import func


async def noop(ctx: dict[str, Any]) -> None:
    return None


class WorkerSettings:
    functions: ClassVar = [func(noop, name="noop")]
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    max_jobs = int(os.environ.get("WORKER_MAX_JOBS", "10"))
    poll_delay = float(os.environ.get("WORKER_POLL_DELAY_SECONDS", "0.5"))
    keep_result = 0

"""The arq worker's settings and hooks; `python -m worker` runs them (worker/healing.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import prometheus_client
from arq import cron, func
from sqlalchemy.ext.asyncio import AsyncEngine

from app import redis_client, storage
from app.analysis import queue
from app.analysis.eta import Estimator
from app.analysis.progress import Publisher, publish_settings
from app.db import close_pg_pool, create_engine, create_pg_pool
from app.logs import configure_logging
from app.metrics import DEPENDENCY_RETRIES
from app.redis_client import RedisTarget, failover_retry
from app.settings import Settings, get_settings
from worker.context import WorkerDeps, default_worker_name
from worker.cron import cleanup_expired, heartbeat_forever, reconcile
from worker.healing import HealingWorker
from worker.jobs import analyze_recording
from worker.lease import Leases
from worker.providers import Providers
from worker.relay import progress_writes
from worker.retry import RetryPolicy
from worker.slots import Slots

log = logging.getLogger(__name__)

# How often arq refreshes its health-check key (it lasts one second longer; arq's default is
# an hour). That key is per queue, kept fresh by any live worker, so it is no health check of
# one worker: the health checks and probes run `vocalborn worker-check`, which reads each
# worker's own heartbeat key (worker/cron.py, app/liveness.py).
HEALTH_CHECK_SECONDS = 30

# arq's own retry counter is only a backstop: the retry budget lives in PostgreSQL.
ARQ_MAX_TRIES = 1000

# arq's cron() keeps no result unless told. A cron job's id is unique to its scheduled time,
# and another worker's late enqueue of that id (its poll after the run) is refused only while
# the run's result is kept: otherwise the job runs again once its in-progress marker (kept
# 60 s after the run) expires.
CRON_KEEP_RESULT_SECONDS = 3600


def _every(seconds: int) -> dict[str, Any]:
    """arq cron options for a period that divides a minute or an hour (checked in settings)."""
    if seconds < 60:
        return {"second": set(range(0, 60, seconds))}
    return {"minute": set(range(0, 60, seconds // 60)), "second": 0}


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or get_settings()
    configure_logging(settings)
    # The ctx may bring test seams: a Redis connection class, an engine, an asyncpg
    # connection class, an AI connector (a callable making an aiohttp connector).
    arq = redis_client.connect(
        RedisTarget.of(settings), connection_class=ctx.get("redis_connection_class")
    )
    engine: AsyncEngine = ctx.get("engine") or create_engine(settings)
    pg = await create_pg_pool(settings, connection_class=ctx.get("pg_connection_class"))
    estimator = Estimator(engine, slots=settings.eta_slots)
    slots = Slots(arq, settings.lease_seconds)
    deps = WorkerDeps(
        settings=settings,
        engine=engine,
        pg=pg,
        arq=arq,
        storage=storage.from_settings(settings),
        providers=Providers(settings, arq, slots, connector=ctx.get("ai_connector")),
        policy=RetryPolicy(settings),
        publisher=Publisher(arq, estimator, publish_settings(settings)),
        worker_name=settings.worker_name or default_worker_name(),
        leases=Leases(settings.lease_seconds, pg, arq, slots),
        progress=progress_writes(pg),
    )
    deps.leases.start()
    ctx["deps"] = deps
    ctx["heartbeat_stop"] = stop = asyncio.Event()
    ctx["heartbeat"] = asyncio.create_task(heartbeat_forever(deps, stop))
    for dependency in ("redis", "postgresql"):  # exported at 0 from the start, for rate()
        DEPENDENCY_RETRIES.labels(dependency)
    if settings.worker_metrics_port:
        prometheus_client.start_http_server(settings.worker_metrics_port)


# How long shutdown waits for the heartbeat to end: once before closing the Redis connections
# (a beat in flight may finish), once after (closing them fails a command Redis is holding).
HEARTBEAT_STOP_SECONDS = 2.0


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq's on_shutdown: stop the heartbeat, then close what startup opened, in bounded time.

    The heartbeat is stopped through its event and never cancelled: redis-py can swallow a
    cancel that lands during a command (its issues 2028 and 2551), and awaiting the task would
    then wait for ever. A beat Redis does not answer is failed by closing the connections."""
    deps: WorkerDeps | None = ctx.get("deps")
    stop: asyncio.Event | None = ctx.get("heartbeat_stop")
    heartbeat: asyncio.Task[None] | None = ctx.get("heartbeat")
    if stop is not None:
        stop.set()
    if heartbeat is not None:
        await asyncio.wait({heartbeat}, timeout=HEARTBEAT_STOP_SECONDS)
    if deps is not None:
        await deps.leases.stop()
        await deps.providers.aclose()
        await deps.arq.aclose(close_connection_pool=True)
        await close_pg_pool(deps.pg)
        await deps.engine.dispose()
    if heartbeat is not None and not heartbeat.done():
        await asyncio.wait({heartbeat}, timeout=HEARTBEAT_STOP_SECONDS)
        if not heartbeat.done():
            log.warning("the heartbeat did not stop within %.0f s", 2 * HEARTBEAT_STOP_SECONDS)


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker`; every duration comes from settings."""
    if settings.ai_deadline_seconds >= settings.job_timeout_seconds:  # ours before arq's
        raise ValueError("AI_DEADLINE_SECONDS must be below JOB_TIMEOUT_SECONDS")
    # A job may first wait for an AI slot (worker/slots.py): that wait never counts against
    # the AI call's deadline, nor against arq's timeout of the job.
    job_timeout = settings.job_timeout_seconds + settings.ai_slot_wait_seconds
    return {
        "functions": [
            func(
                analyze_recording,
                name=queue.ANALYZE_FUNCTION,
                timeout=job_timeout,
                max_tries=ARQ_MAX_TRIES,
                # The outcome lives in our row; a kept result would also block re-enqueueing
                # the same job id (arq's dedup) for as long as it is kept.
                keep_result=0,
            )
        ],
        "cron_jobs": [
            cron(
                reconcile,
                run_at_startup=True,
                unique=True,
                timeout=max(settings.reconcile_interval_seconds, 10),
                keep_result=CRON_KEEP_RESULT_SECONDS,
                **_every(settings.reconcile_interval_seconds),
            ),
            cron(
                cleanup_expired,
                hour={3},
                minute={17},
                unique=True,
                timeout=600,
                keep_result=CRON_KEEP_RESULT_SECONDS,
            ),
        ],
        "queue_name": queue.QUEUE_NAME,
        # arq's own pool (polling, job state), from the same factory as every connection; it
        # rides out a failover or a short outage instead of ending the worker on one error.
        "redis_pool": redis_client.connect(
            RedisTarget.of(settings), client_name="vocalborn-worker", retry=failover_retry()
        ),
        "job_serializer": queue.serialize,
        "job_deserializer": queue.deserialize,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay_seconds,
        "job_timeout": job_timeout,
        "max_tries": ARQ_MAX_TRIES,
        "allow_abort_jobs": True,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        # No result is kept, whoever ends a job: arq refuses to enqueue a job id while a result
        # is kept for it, and it keeps one (with this worker-wide setting, whatever the
        # function's) for a job that fails before it starts: undecodable, expired, aborted.
        "keep_result": 0,
        # On SIGTERM stop taking jobs and let running ones finish for this long; those still
        # running are then handed back (status retry, due now) for the next worker.
        "job_completion_wait": settings.worker_shutdown_grace_seconds,
    }


def _settings_class() -> type:
    return type("WorkerSettings", (), worker_options(get_settings()))


WorkerSettings = _settings_class()


def healing_worker(settings: Settings, **overrides: Any) -> HealingWorker:
    """The worker `python -m worker` runs: `worker_options(settings)` with `overrides` (test
    seams: handle_signals, ctx, ...), a job picked held for one lease until its claim."""
    options = worker_options(settings) | overrides
    return HealingWorker(**options, pick_lease_seconds=settings.lease_seconds)
